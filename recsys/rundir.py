"""The run directory: what `recsys train` writes and every later command reads.

Layout::

    RUN_DIR/
      run.json        model name, data dir + digest, the data's fingerprint (what the model
                      learnt from: see `data_fingerprint`), versions, tuned params, the refit on
                      train + valid ("refit": epochs, seconds, parts; null, with
                      "refit_skipped", when not done), metrics, "completed" once every step
                      of `recsys train` is done (a resume finishes a run without it)
      config.yaml     the resolved model config (feed it back with --config)
      model/          model.json + weights.pt (see Recommender.save)
      metrics.json    final metrics on the test part (when evaluated)
      checkpoints/    training checkpoints (neural models; the refit's in refit-NNNN/)
      tracking.json   the MLflow run id, URI and experiment, written when the run starts
                      (`--resume` continues that run)

A run is only ever evaluated or scored on the data it was trained on (`check_run_data`): the same
item vocabulary, user vocabulary and training parts, compared by content digests recorded at
train time, so another split of the same file, or another file of the same shape, is refused.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import yaml

from recsys import __version__
from recsys.data.interactions import Dataset, Vocabulary
from recsys.data.io import atomic_path, read_json, sha256_file, write_json
from recsys.errors import RecsysError
from recsys.models.base import Recommender

RUN_FILE = "run.json"
FINGERPRINT = "data_fingerprint"
# The parts a model can learn from (the refit's, `recsys.training.refit.REFIT_PARTS`): the test
# users' history and the test part are not among them, so a run may be evaluated on a new test
# part over the same training data.
TRAINING_PARTS = ("train", "valid_history", "valid")


def save_run(run_dir: str | Path, model: Recommender, info: dict[str, Any]) -> Path:
    """Write the model and its description; ``info`` is merged into run.json."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    model.save(run_dir / "model")
    with atomic_path(run_dir / "config.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(model.get_params(), sort_keys=True))
    record = {"model": model.name, "recsys_version": __version__,
              "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), **info}
    write_json(run_dir / RUN_FILE, record)
    return run_dir


def read_run(run_dir: str | Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    if not (run_dir / RUN_FILE).is_file():
        raise RecsysError(f"{run_dir} is not a run directory (no {RUN_FILE}); "
                          "create one with `recsys train MODEL --data DIR --out RUN_DIR`")
    try:
        record = read_json(run_dir / RUN_FILE)
    except (OSError, ValueError) as exc:  # ValueError: bad JSON or bytes that are not UTF-8
        raise RecsysError(f"{run_dir / RUN_FILE}: unreadable ({str(exc).splitlines()[0]}); "
                          "the run directory is damaged: train it again") from None
    if not isinstance(record, dict):
        raise RecsysError(f"{run_dir / RUN_FILE}: not a run record (expected a JSON object); "
                          "the run directory is damaged: train it again")
    return record


def load_run(run_dir: str | Path) -> tuple[Recommender, dict[str, Any]]:
    """The trained model and its run.json record."""
    info = read_run(run_dir)
    model = Recommender.load(Path(run_dir) / "model")
    return model, info


def update_run(run_dir: str | Path, **fields: Any) -> None:
    record = read_run(run_dir)
    record.update(fields)
    write_json(Path(run_dir) / RUN_FILE, record)


# -- which data a run belongs to ----------------------------------------------------------------


def vocabulary_digest(vocab: Vocabulary) -> str:
    """SHA-256 of a vocabulary's ids in order, typed: integer 7 and text "7" differ."""
    h = hashlib.sha256()
    if vocab.is_integer:
        h.update(b"int64\0")
        h.update(np.ascontiguousarray(vocab.ids, dtype="<i8").tobytes())
    else:
        h.update(b"str\0")
        h.update(json.dumps([str(x) for x in vocab.ids], ensure_ascii=False).encode("utf-8"))
    return h.hexdigest()


def matrix_digest(matrix: sp.csr_matrix) -> str:
    """SHA-256 of a CSR matrix's content (shape, rows, columns, values), not of its file: a
    prepared folder re-created from the same input has the same digest."""
    m = matrix.tocsr()
    if not m.has_sorted_indices:
        m = m.sorted_indices()
    h = hashlib.sha256(np.asarray(m.shape, dtype="<i8").tobytes())
    for array, dtype in ((m.indptr, "<i8"), (m.indices, "<i4"), (m.data, "<f4")):
        h.update(np.ascontiguousarray(array, dtype=dtype).tobytes())
    return h.hexdigest()


def data_fingerprint(dataset: Dataset, parts: Iterable[str] | None = None) -> dict[str, Any]:
    """What identifies the data a model learnt from: both vocabularies and the content of each
    training part (``parts``: by default every one of `TRAINING_PARTS`)."""
    names = TRAINING_PARTS if parts is None else parts  # an absent part is recorded as None
    return {"users": vocabulary_digest(dataset.users), "items": vocabulary_digest(dataset.items),
            "parts": {name: matrix_digest(dataset.parts[name].matrix) if dataset.has(name)
                      else None for name in names}}


def data_record(data_dir: str | Path, dataset: Dataset) -> dict[str, Any]:
    """The run.json fields that say which prepared data a run was trained on."""
    data_dir = Path(data_dir)
    return {"data": str(data_dir.resolve()), "data_digest": sha256_file(data_dir / "metadata.json"),
            "data_name": dataset.meta.get("dataset"), FINGERPRINT: data_fingerprint(dataset)}


def check_run_data(run_dir: str | Path, info: dict[str, Any], model: object, data: Dataset,
                   data_dir: str | Path, *, users: bool = True, force: bool = False) -> None:
    """Refuse to evaluate or score the run in ``run_dir`` (its run.json ``info`` and loaded
    ``model``) on ``data`` unless it is the data the run was trained on: the same users x items
    space, then the same item vocabulary and, with ``users`` (known users are scored, or the data
    is evaluated), the same user vocabulary and training parts. ``force`` turns a different
    vocabulary or training part into a one-line warning (the space must match regardless: the
    model cannot score another one). Runs written before fingerprints were recorded are checked
    by the prepared data's metadata.json digest, with a note."""
    _check_space(model, data, data_dir)
    recorded = info.get(FINGERPRINT)
    if isinstance(recorded, dict):
        given = data_fingerprint(data, (recorded.get("parts") or {}).keys())
        differs = [what for what, same in (
            ("item vocabulary", recorded.get("items") == given["items"]),
            ("user vocabulary", not users or recorded.get("users") == given["users"]),
            *((f"{name} part", not users or recorded["parts"][name] == digest)
              for name, digest in given["parts"].items())) if not same]
    else:
        digest = info.get("data_digest")
        meta = Path(data_dir) / "metadata.json"
        if digest is None:
            differs = []
            checked = "only its number of users and items"
        else:
            differs = [] if meta.is_file() and sha256_file(meta) == digest else ["metadata.json"]
            checked = "the prepared data's metadata.json digest"
        if not differs:
            print(f"note: {run_dir}: run.json predates data fingerprints; checked {checked} "
                  "(train the run again to record them)", file=sys.stderr)
    if not differs:
        return
    given_name = data.meta.get("dataset")
    trained = f"{info.get('data', '?')}" + (f" ({info['data_name']})" if info.get("data_name")
                                            else "")
    here = f"{Path(data_dir).resolve()}" + (f" ({given_name})" if given_name else "")
    what = ", ".join(differs) + (" differs" if len(differs) == 1 else " differ")
    if force:
        print(f"warning: --force: --data {data_dir} is not the data {run_dir} was trained on "
              f"({what}): trained on {trained}, using {here}", file=sys.stderr)
        return
    raise RecsysError(f"--data {data_dir}: not the data {run_dir} was trained on ({what}): "
                      f"trained on {trained}, given {here}; use the run's data, or pass --force "
                      "to use this one anyway")


def _check_space(model: Recommender, data: Dataset, data_dir: str | Path) -> None:
    """The users x items space the model was built for (no --force: it cannot score another)."""
    n_users, n_items = model.n_users, model.n_items
    if n_items and n_items != len(data.items):
        raise RecsysError(f"{data_dir}: {len(data.items)} items, but the run's model was trained "
                          f"on {n_items}; use the prepared data the run was trained on")
    if n_users and n_users != len(data.users):
        raise RecsysError(f"{data_dir}: {len(data.users)} users, but the run's model was trained "
                          f"on {n_users}; use the prepared data the run was trained on")


# -- the run directory as an output ------------------------------------------------------------

# What `recsys train` writes into RUN_DIR (removed first by --overwrite; nothing else is).
RUN_ENTRIES = ("run.json", "config.yaml", "metrics.json", "model", "checkpoints",
               "tracking.json", "tuned.yaml")


def check_out(out: Path, resume: bool, overwrite: bool, model: str | None = None,
              checkpoints: bool = True) -> None:
    """Refuse to clobber a run; with ``resume``, the run in ``out`` must be one ``model`` can
    continue (``checkpoints``: whether that model writes any). ``out`` must be new, an empty
    folder or a run (`is_run_dir`): a folder holding anything else is never written into."""
    from recsys.data.io import refuse_symlink

    refuse_symlink(out)
    if out.exists() and not out.is_dir():
        raise RecsysError(f"--out {out}: exists and is not a directory")
    if resume and overwrite:
        raise RecsysError("--resume continues the run in --out and --overwrite replaces it; "
                          "pass one of them")
    has_run, has_checkpoints = (out / "run.json").exists(), (out / "checkpoints").exists()
    if not has_run and not has_checkpoints:
        if out.is_dir() and any(out.iterdir()):
            raise RecsysError(f"--out {out}: exists, is not empty and holds no run; choose a new "
                              "or empty directory (recsys writes runs only where it wrote them)")
        if resume:
            print(f"note: --resume: {out} holds no run yet; training from the start",
                  file=sys.stderr)
        return
    if not is_run_dir(out):
        raise RecsysError(f"--out {out}: holds a run.json or checkpoints/ that recsys did not "
                          "write (or beside files it did not write); choose a new or empty "
                          "directory, or remove the folder if it may go")
    if resume:
        # Resuming must never turn one model's run into another's (a baseline has no
        # checkpoint to refuse it, and would silently replace the run).
        if has_run and model is not None:
            previous = read_run(out).get("model")
            if previous != model:
                raise RecsysError(f"--resume: {out} holds a run of '{previous}', not "
                                  f"'{model}'; resume it with `recsys train {previous}`, or "
                                  "pass --overwrite to replace it")
        elif not has_run and not checkpoints:
            raise RecsysError(f"--resume: {out} holds the checkpoints of an interrupted run, "
                              f"and '{model}' writes none; resume it with the model that wrote "
                              "them, or pass --overwrite to replace it")
        return
    if overwrite:
        for name in RUN_ENTRIES:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        return
    raise RecsysError(f"--out {out} already holds a run; pass --resume to continue it, "
                      "--overwrite to replace it, or choose another directory")


# What a run's checkpoints/ holds: epoch checkpoints, their temporaries, refit folders.
_CHECKPOINT_ENTRY = re.compile(r"^(\.?epoch-\d+\.(pt|json)(\..+\.tmp)?|refit-\d+)$")


def is_run_dir(out: Path) -> bool:
    """Whether ``out`` is a run that `train` wrote: its run.json is a run record (what
    `--overwrite` removes is then only RUN_ENTRIES; other files stay), or, without a run.json
    (killed before it was written), the folder holds nothing but RUN_ENTRIES and its
    checkpoints/ nothing but checkpoints. A run.json that is no run record is nobody's we know."""
    from recsys.data.io import read_json

    if (out / "run.json").exists():
        try:
            record = read_json(out / "run.json")
        except (OSError, ValueError):
            return False
        return isinstance(record, dict) and {"model", "created"} <= set(record)
    temporaries = tuple(f".{name}." for name in RUN_ENTRIES)
    if any(e not in RUN_ENTRIES and not (e.startswith(temporaries) and e.endswith(".tmp"))
           for e in os.listdir(out)):
        return False
    folder = out / "checkpoints"
    return not folder.is_dir() or all(_CHECKPOINT_ENTRY.match(e) for e in os.listdir(folder))
