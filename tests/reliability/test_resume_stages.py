"""kill -9 at every boundary between the stages of `recsys train` (first fit, refit, save, test
evaluation, MLflow logging, the MLflow run's end, the run's completion mark), then `--resume`:
the run gets the metrics.json and weights of an uninterrupted run, and its MLflow run (the same
one, in a real SQLite store) ends FINISHED with the test metrics and the model logged.

The kill is real: a driver process replaces one function of recsys with a wrapper that SIGKILLs
its own process before or after the original runs, then calls the CLI; everything else is the
real `recsys train` (a separate process per run, one thread per library)."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reliability.helpers import REPO, run_process, subprocess_env

pytestmark = pytest.mark.slow

# Runs `recsys ARGV...` with MODULE.NAME (NAME may be Class.method) wrapped so that the process
# kills itself with SIGKILL before or after the original runs.
DRIVER = r"""
import importlib, os, signal, sys
module, name, when, *argv = sys.argv[1:]
owner = importlib.import_module(module)
*path, attr = name.split(".")
for part in path:
    owner = getattr(owner, part)
original = getattr(owner, attr)

def killed_here(*args, **kwargs):
    if when == "after":
        original(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)

setattr(owner, attr, killed_here)
from recsys.cli import main
sys.exit(main(argv))
"""

NEURAL = ("multdae", "--set", "epochs=3", "--set", "checkpoint_every=1", "--set",
          "hidden_dims=[16]", "--set", "batch_size=16", "--seed", "0", "--device", "cpu")

# (stage, function wrapped, before/after it, the MLflow status the kill leaves): in the order
# `recsys train` reaches them.
STAGES = [
    ("after-the-first-fit", "recsys.training.refit", "_refit_neural", "before", "RUNNING"),
    ("after-the-refit", "recsys.rundir", "save_run", "before", "RUNNING"),
    ("after-saving-before-the-test-evaluation", "recsys.rundir", "save_run", "after", "RUNNING"),
    ("after-the-test-metrics-before-mlflow", "recsys.tracking.records", "log_training_end",
     "before", "RUNNING"),
    ("after-mlflow-logging-before-the-run-ends", "recsys.tracking.mlflow",
     "MlflowTracker.close", "before", "RUNNING"),
    ("after-the-run-ended-before-completion", "recsys.tracking.mlflow",
     "MlflowTracker.close", "after", "FINISHED"),
]


def _killed_train(module: str, name: str, when: str, argv: list
                  ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", DRIVER, module, name, when, "train",
                           *map(str, argv)], capture_output=True, text=True, timeout=300,
                          env=subprocess_env(), cwd=REPO)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "model" / "weights.pt", weights_only=True)


def _mlflow_runs(db: Path) -> list[tuple[str, str]]:
    """(run id, status) of every run in the store, read from the SQLite file itself."""
    with sqlite3.connect(db) as con:
        return con.execute("SELECT run_uuid, status FROM runs").fetchall()


def _metric_keys(db: Path, run_id: str) -> set[str]:
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT key FROM latest_metrics WHERE run_uuid = ?", (run_id,))
        return {key for (key,) in rows}


@pytest.fixture(scope="module")
def reference(world, tmp_path_factory) -> dict[str, Path]:
    """Uninterrupted runs (no tracking: it changes no number) of the neural model and of pop."""
    root = tmp_path_factory.mktemp("reference")
    runs = {}
    for model, argv in (("multdae", NEURAL), ("pop", ("pop",))):
        out = root / model
        result = run_process(["train", *argv, "--data", world.data, "--out", out, "--no-track",
                              "--quiet"])
        assert result.code == 0, result.err
        runs[model] = out
    return runs


def _kill_then_resume(world, tmp_path: Path, argv: tuple, stage: tuple) -> tuple[Path, Path]:
    _, module, name, when, left = stage
    out, db = tmp_path / "run", tmp_path / "mlflow.db"
    args = [*argv, "--data", world.data, "--out", out, "--tracking-uri", f"sqlite:///{db}",
            "--quiet"]
    killed = _killed_train(module, name, when, args)
    assert killed.returncode == -signal.SIGKILL, \
        f"the kill at {name} ({when}) never happened (exit {killed.returncode}): {killed.stderr}"
    assert [status for _, status in _mlflow_runs(db)] == [left]
    if (out / "run.json").exists():
        assert "completed" not in json.loads((out / "run.json").read_text())
    resumed = run_process(["train", *args, "--resume"])
    assert resumed.code == 0, resumed.err
    return out, db


def _assert_finished(out: Path, db: Path, reference: Path) -> None:
    assert (out / "metrics.json").read_bytes() == (reference / "metrics.json").read_bytes()
    mine, theirs = _weights(out), _weights(reference)
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    record = json.loads((out / "run.json").read_text())
    run_id = json.loads((out / "tracking.json").read_text())["run_id"]
    # The resume continued the killed process's MLflow run (no second run) and ended it.
    assert _mlflow_runs(db) == [(run_id, "FINISHED")]
    assert "test/ndcg_at_100" in _metric_keys(db, run_id)
    assert record["mlflow"]["run_id"] == run_id and record["mlflow"]["model_uri"]
    assert record["completed"]


@pytest.mark.parametrize("stage", STAGES, ids=[s[0] for s in STAGES])
def test_a_kill_between_stages_is_finished_by_resume(world, reference, tmp_path, stage):
    out, db = _kill_then_resume(world, tmp_path, NEURAL, stage)
    _assert_finished(out, db, reference["multdae"])
    # Now the run is complete: a further resume has nothing left to do, and touches nothing.
    before = (out / "run.json").read_bytes()
    again = run_process(["train", *NEURAL, "--data", world.data, "--out", out, "--tracking-uri",
                         f"sqlite:///{db}", "--resume"])
    assert again.code == 0 and "nothing to resume" in again.err, again.err
    assert (out / "run.json").read_bytes() == before


def test_a_baseline_killed_before_mlflow_logging_is_finished_by_resume(world, reference,
                                                                      tmp_path):
    # No checkpoints: the resume fits again (the same closed-form model) and ends the MLflow run.
    stage = next(s for s in STAGES if s[0] == "after-the-test-metrics-before-mlflow")
    out, db = _kill_then_resume(world, tmp_path, ("pop",), stage)
    _assert_finished(out, db, reference["pop"])
