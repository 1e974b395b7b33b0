"""Training checkpoints: written atomically, verified by SHA-256, loaded without unpickling.

Each checkpoint is two files in ``RUN_DIR/checkpoints``::

    epoch-0007.pt     the payload (torch.save of tensors, numbers, strings, lists and dicts)
    epoch-0007.json   {"sha256": ..., "bytes": ..., "epoch": 7, "global_step": ...}

(a refit on train + valid keeps its own, the same way, in ``RUN_DIR/checkpoints/refit-NNNN``).

The payload is written first and the sidecar second, each through a temporary name and a
rename, so the sidecar's presence is what commits a checkpoint: a kill between the two leaves
a payload without a sidecar, which is ignored. Pruning removes in the opposite order (payload,
then sidecar), so a kill there leaves a sidecar without a payload, which the next pruning
removes; `latest_checkpoint` (what a resume calls) also clears what a killed process left behind:
payloads without a sidecar and the temporaries of an interrupted write. On load the payload's
digest must match the sidecar's; a mismatch (a truncated copy, flipped bytes on disk) is refused
with one line rather than resuming from silently wrong weights. Payloads are read with
``torch.load(weights_only=True)``, so RNG states are stored as tensors and lists, never as
arbitrary Python objects; a payload holding anything else is refused, never unpickled.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path
from typing import Any

import torch

from recsys.data.io import atomic_path, write_json
from recsys.errors import RecsysError

CHECKPOINT_DIR = "checkpoints"
FORMAT_VERSION = 1
_NAME = re.compile(r"^epoch-(\d+)\.json$")
_PAYLOAD = re.compile(r"^epoch-(\d+)\.pt$")
# atomic_path's temporaries beside a checkpoint file: ".epoch-0007.pt.<random>.tmp"
_TEMPORARY = re.compile(r"^\.epoch-\d+\.(pt|json)\..+\.tmp$")
# What to do about a checkpoint that cannot be used (train refuses an existing run without
# --resume unless --overwrite is given, so that is the way to start again).
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_START_OVER = "or pass --overwrite instead of --resume to train from the start"


def refit_checkpoint_dir(run_dir: str | Path, epochs: int) -> Path:
    """Where a refit of ``epochs`` epochs on train + valid keeps its checkpoints: a folder of its
    own under ``RUN_DIR/checkpoints`` (named by its length, so a refit of another length never
    resumes from it), out of sight of the listing of the first fit's checkpoints."""
    return Path(run_dir) / CHECKPOINT_DIR / f"refit-{int(epochs):04d}"


class CheckpointError(RecsysError):
    """A checkpoint that exists but cannot be trusted (digest mismatch, unreadable payload)."""


def checkpoint_paths(directory: str | Path, epoch: int) -> tuple[Path, Path]:
    """(payload, sidecar) paths of the checkpoint taken after ``epoch``."""
    directory = Path(directory)
    stem = f"epoch-{epoch:04d}"
    return directory / f"{stem}.pt", directory / f"{stem}.json"


def save_checkpoint(directory: str | Path, payload: dict[str, Any], epoch: int,
                    keep: int = 2) -> Path:
    """Write ``payload`` as the checkpoint of ``epoch``; keep only the newest ``keep`` ones."""
    directory = Path(directory)
    buffer = io.BytesIO()
    torch.save({**payload, "format_version": FORMAT_VERSION}, buffer)
    data = buffer.getvalue()
    pt_path, meta_path = checkpoint_paths(directory, epoch)
    with atomic_path(pt_path) as tmp:
        tmp.write_bytes(data)
    write_json(meta_path, {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                           "epoch": int(epoch),
                           "global_step": int(payload.get("global_step", 0))})
    _prune(directory, keep)
    return pt_path


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """Committed checkpoints (those with a sidecar), oldest first, as (epoch, payload path)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for meta in directory.iterdir():
        match = _NAME.match(meta.name)
        if match:
            found.append((int(match.group(1)), meta.with_suffix(".pt")))
    return sorted(found)


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest committed checkpoint's payload, after clearing what a killed process left
    (`clean_leftovers`): this is what a resume starts from."""
    clean_leftovers(directory)
    found = list_checkpoints(directory)
    return found[-1][1] if found else None


def clean_leftovers(directory: str | Path) -> list[Path]:
    """Remove what a kill can leave in ``directory``: payloads without a sidecar (never
    committed, or half-pruned) and temporaries of an interrupted write. Returns what it removed.

    Only the writing process may call this: it would remove another writer's temporaries. In a
    distributed run only rank 0 writes checkpoints, so other ranks leave the folder alone.
    """
    directory = Path(directory)
    if not directory.is_dir() or not _is_writer():
        return []
    removed = []
    for path in directory.iterdir():
        orphan = _PAYLOAD.match(path.name) and not path.with_suffix(".json").exists()
        if (orphan or _TEMPORARY.match(path.name)) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return sorted(removed)


def _is_writer() -> bool:
    """Rank 0 of a distributed run, or a process on its own."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and verify one checkpoint; raise `CheckpointError` with one line if it is not sound."""
    path = Path(path)
    meta_path = path.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text())
        expected = str(meta["sha256"])
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{meta_path}: unreadable checkpoint metadata ({_first_line(exc)});"
                              f" delete {path.name} and {meta_path.name} to resume from an "
                              f"earlier checkpoint, {_START_OVER}") from None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint ({exc.strerror}); delete "
                              f"{meta_path.name} to resume from an earlier checkpoint, "
                              f"{_START_OVER}") from None
    actual = hashlib.sha256(data).hexdigest()
    delete = (f"delete {path.name} and {meta_path.name} to resume from an earlier checkpoint, "
              f"{_START_OVER}")
    if actual != expected:
        raise CheckpointError(
            f"{path}: checkpoint is corrupted (SHA-256 {actual[:12]}... does not match the "
            f"recorded {expected[:12]}...); refusing to resume from it: {delete}")
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # digest matched but the payload is not ours: say so in one line
        if type(exc).__name__ == "UnpicklingError":
            # weights_only refused an object that is not a tensor, number, string, list or
            # dict: it is never unpickled, and we never advise the user to unpickle it.
            reason = ("it holds Python objects other than tensors, numbers, strings, lists and "
                      "dicts; refusing to unpickle them")
        else:  # truncated, not a torch file: torch's messages run over several lines
            reason = _first_line(exc)
        raise CheckpointError(f"{path}: not a loadable checkpoint ({reason}); {delete}") \
            from None
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint format "
                              f"(expected version {FORMAT_VERSION}); {delete}")
    return payload


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message, without terminal colour codes."""
    text = _ANSI.sub("", str(exc)).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def _prune(directory: Path, keep: int) -> None:
    found = list_checkpoints(directory)
    for _, pt_path in found[:-keep] if keep > 0 else []:
        # The payload goes first: a kill in between leaves a sidecar without a payload, which
        # list_checkpoints still lists, so the next pruning removes it (the other order would
        # leave a payload that nothing lists, and so nothing ever removes).
        pt_path.unlink(missing_ok=True)
        pt_path.with_suffix(".json").unlink(missing_ok=True)
