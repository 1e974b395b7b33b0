"""The run directory: what `recsys train` writes and every later command reads.

Layout::

    RUN_DIR/
      run.json        model name, data dir + digest, versions, tuned params, the refit on
                      train + valid ("refit": epochs, seconds, parts; null, with
                      "refit_skipped", when not done), metrics
      config.yaml     the resolved model config (feed it back with --config)
      model/          model.json + weights.pt (see Recommender.save)
      metrics.json    final metrics on the test part (when evaluated)
      checkpoints/    training checkpoints (neural models; the refit's in refit-NNNN/)
      tracking.json   the MLflow run id, URI and experiment, written when the run starts
                      (`--resume` continues that run)
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

import yaml

from recsys import __version__
from recsys.data.io import atomic_path, read_json, write_json
from recsys.errors import RecsysError
from recsys.models.base import Recommender

RUN_FILE = "run.json"


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
