"""Training checkpoints: written atomically, verified by SHA-256, loaded without unpickling.

Each checkpoint is two files in ``RUN_DIR/checkpoints``::

    epoch-0007.pt     the payload (torch.save of tensors, numbers, strings, lists and dicts)
    epoch-0007.json   {"sha256": ..., "bytes": ..., "epoch": 7, "global_step": ...}

The payload is written first and the sidecar second, each through a temporary name and a
rename, so the sidecar's presence is what commits a checkpoint: a kill between the two leaves
a payload without a sidecar, which is ignored. On load the payload's digest must match the
sidecar's; a mismatch (a truncated copy, flipped bytes on disk) is refused with one line rather
than resuming from silently wrong weights. Payloads are read with ``torch.load(weights_only=True)``,
so RNG states are stored as tensors and lists, never as arbitrary Python objects.
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
    found = list_checkpoints(directory)
    return found[-1][1] if found else None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and verify one checkpoint; raise `CheckpointError` with one line if it is not sound."""
    path = Path(path)
    meta_path = path.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text())
        expected = str(meta["sha256"])
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{meta_path}: unreadable checkpoint metadata ({exc}); "
                              "delete this checkpoint to resume from an earlier one") from None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint ({exc.strerror}); "
                              "delete its .json to resume from an earlier one") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise CheckpointError(
            f"{path}: checkpoint is corrupted (SHA-256 {actual[:12]}... does not match the "
            f"recorded {expected[:12]}...); refusing to resume from it: delete {path.name} and "
            f"{meta_path.name} to resume from an earlier checkpoint, or train without --resume")
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # digest matched but the payload is not ours: say so in one line
        raise CheckpointError(f"{path}: not a loadable checkpoint ({exc})") from None
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint format "
                              f"(expected version {FORMAT_VERSION})")
    return payload


def _prune(directory: Path, keep: int) -> None:
    found = list_checkpoints(directory)
    for _, pt_path in found[:-keep] if keep > 0 else []:
        # The sidecar goes first: a payload without one is simply ignored by list_checkpoints.
        pt_path.with_suffix(".json").unlink(missing_ok=True)
        pt_path.unlink(missing_ok=True)
