"""`recsys train --resume` continues the interrupted training's MLflow run: the same run id, back
to RUNNING and then FINISHED, every epoch's metrics once at its own step, params logged once.

Interruptions are real: kill -9 of a training process, or Ctrl-C (KeyboardInterrupt) raised in
this process right after an epoch is logged. The store is one sqlite database for the module;
each test has its own experiment, and every check reads the store back through MlflowClient."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient

from recsys.cli import main
from recsys.tracking.mlflow import MlflowTracker
from recsys.training.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint

# A small Mult-DAE whose epochs take a fraction of a second; no early stopping, so the number of
# epochs is known. Same seed and device every time, as a resume requires.
DAE = ["--set", "hidden_dims=[16]", "--set", "batch_size=128", "--set", "patience=null",
       "--seed", "0", "--device", "cpu", "--quiet"]
VALID = "valid/ndcg_at_100"
LOSS = "train/multdae/loss"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('resume-store') / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()  # create the schema once, outside the timed runs
    return uri


def train(data: Path, out: Path, store: str, experiment: str, *extra: str) -> list[str]:
    return ["train", "multdae", "--data", str(data), "--out", str(out), *DAE,
            "--tracking-uri", store, "--experiment", experiment, *extra]


def interrupted(monkeypatch, argv: list[str], after_step: int, logged: bool = True) -> None:
    """Run ``argv`` and press Ctrl-C as soon as epoch ``after_step`` has been checkpointed and
    (``logged``) sent to MLflow, or (not ``logged``) just before it is sent."""
    original = MlflowTracker.log_metrics

    def log_metrics(self, metrics, step=None):
        if step == after_step and not logged:
            raise KeyboardInterrupt
        original(self, metrics, step)
        if step == after_step:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(MlflowTracker, "log_metrics", log_metrics)
        assert main(argv) == 130


def stopped_after_epoch_2(monkeypatch, store: str, data: Path, tmp_path: Path, experiment: str
                          ) -> tuple[Path, list[str], MlflowClient, str]:
    """A 4-epoch training stopped by Ctrl-C after epoch 2: (run dir, argv, client, run id)."""
    out = tmp_path / "run"
    argv = train(data, out, store, experiment, "--set", "epochs=4")
    interrupted(monkeypatch, argv, after_step=2)
    return out, argv, MlflowClient(store), recorded_run(out)


def stopped_before_logging_epoch_3(monkeypatch, store: str, data: Path, tmp_path: Path,
                                   experiment: str) -> tuple[Path, list[str], MlflowClient, str]:
    """A 5-epoch training stopped between epoch 3's checkpoint and its metrics."""
    out = tmp_path / "run"
    argv = train(data, out, store, experiment, "--set", "epochs=5")
    interrupted(monkeypatch, argv, after_step=3, logged=False)
    client, run_id = MlflowClient(store), recorded_run(out)
    assert steps(client, run_id) == [1, 2]
    assert [e for e, _ in list_checkpoints(out / "checkpoints")][-1] == 3
    return out, argv, client, run_id


def recorded_run(out: Path) -> str:
    record = json.loads((out / "tracking.json").read_text())
    return record["run_id"]


def runs_of(client: MlflowClient, experiment: str) -> list:
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def steps(client: MlflowClient, run_id: str, key: str = VALID) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_kill_9_then_resume_continues_the_same_run(store, mls_data, tmp_path, capsys):
    epochs = 10
    out = tmp_path / "run"
    argv = train(mls_data, out, store, "resume-kill", "--set", f"epochs={epochs}",
                 "--set", "checkpoint_every=1")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "recsys.cli", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            done = list_checkpoints(out / "checkpoints")
            if done and done[-1][0] >= 3:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.005)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, \
        f"not killed (exit {proc.returncode}): {proc.stderr.read().decode()[-2000:]}"

    client = MlflowClient(store)
    run_id = recorded_run(out)  # written when the run was created, before any epoch
    killed = client.get_run(run_id)
    assert killed.info.status == "RUNNING"  # kill -9: nobody could end it
    logged = steps(client, run_id)
    assert logged and max(logged) < epochs

    capsys.readouterr()
    assert main([*argv, "--resume"]) == 0
    err = capsys.readouterr().err
    assert "warning" not in err and "note" not in err, err

    [run] = runs_of(client, "resume-kill")
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    for key in (VALID, LOSS):
        assert steps(client, run_id, key) == list(range(1, epochs + 1)), key
    assert run.data.params["epochs"] == str(epochs) and run.data.params["model"] == "multdae"
    assert run.data.tags["recsys.resumes"] == "1"
    assert "test/ndcg_at_100" in run.data.metrics
    # run.json points at the same run as tracking.json
    assert json.loads((out / "run.json").read_text())["mlflow"]["run_id"] == run_id


def test_ctrl_c_then_resume_with_more_epochs(store, mls_data, tmp_path, capsys, monkeypatch):
    """Checkpoints every 2 epochs and Ctrl-C after epoch 5: the resume restarts from epoch 4 and
    trains epoch 5 again, which must not appear twice; ``epochs`` may grow on resume, and since
    MLflow keeps a param's first value the new one is a tag."""
    out = tmp_path / "run"
    argv = train(mls_data, out, store, "resume-more", "--set", "checkpoint_every=2")
    interrupted(monkeypatch, [*argv, "--set", "epochs=6"], after_step=5)
    client = MlflowClient(store)
    run_id = recorded_run(out)
    assert client.get_run(run_id).info.status == "FAILED"
    assert steps(client, run_id) == [1, 2, 3, 4, 5]
    assert [e for e, _ in list_checkpoints(out / "checkpoints")][-1] == 4

    capsys.readouterr()
    status = []
    original = MlflowTracker.log_metrics

    def log_metrics(self, metrics, step=None):
        status.append(client.get_run(run_id).info.status)
        original(self, metrics, step)

    with monkeypatch.context() as m:
        m.setattr(MlflowTracker, "log_metrics", log_metrics)
        assert main([*argv, "--set", "epochs=7", "--resume"]) == 0
    assert status and set(status) == {"RUNNING"}  # while the resumed training logs
    err = capsys.readouterr().err
    assert "warning" not in err and "note" not in err, err

    [run] = runs_of(client, "resume-more")
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    history = client.get_metric_history(run_id, VALID)
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5, 6, 7]
    # The values MLflow holds are the training's own: the final checkpoint's history (epoch 5
    # logged by the interrupted process equals the one trained again: the resume is exact).
    final = load_checkpoint(latest_checkpoint(out / "checkpoints"))["history"]
    by_step = {m.step: m.value for m in history}
    assert [by_step[e] for e in range(1, 8)] == pytest.approx(
        [r["valid_ndcg@100"] for r in final], rel=1e-6)
    params = run.data.params
    assert params["epochs"] == "6" and run.data.tags["recsys.resumed.epochs"] == "7"
    assert params["checkpoint_every"] == "2" and params["hidden_dims"] == "[16]"
    assert run.data.tags["recsys.resumes"] == "1"


def test_epoch_checkpointed_but_never_logged_is_filled_in(store, mls_data, tmp_path, capsys,
                                                          monkeypatch):
    """Killed between writing epoch 3's checkpoint and logging it (what kill -9 usually hits):
    the resume starts after epoch 3 and never trains it again, yet the run gets its metrics."""
    out, argv, client, run_id = stopped_before_logging_epoch_3(monkeypatch, store, mls_data,
                                                               tmp_path, "resume-gap")

    capsys.readouterr()
    assert main([*argv, "--resume"]) == 0
    assert capsys.readouterr().err == ""
    [run] = runs_of(client, "resume-gap")
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    for key in (VALID, LOSS, "train/seconds"):
        assert steps(client, run_id, key) == [1, 2, 3, 4, 5], key
    final = load_checkpoint(latest_checkpoint(out / "checkpoints"))["history"]
    logged = {m.step: m.value for m in client.get_metric_history(run_id, LOSS)}
    assert logged[3] == pytest.approx(final[2]["loss"], rel=1e-6)


def test_a_resume_interrupted_in_turn_still_fills_in_the_gap(store, mls_data, tmp_path,
                                                             monkeypatch):
    """The same gap (epoch 3 checkpointed, never logged), and the resume is itself stopped
    during its first epoch: epoch 3 reached the run when the resume started."""
    _, argv, client, run_id = stopped_before_logging_epoch_3(monkeypatch, store, mls_data,
                                                             tmp_path, "resume-twice")
    interrupted(monkeypatch, [*argv, "--resume"], after_step=4, logged=False)
    assert steps(client, run_id) == [1, 2, 3]
    assert [r.info.run_id for r in runs_of(client, "resume-twice")] == [run_id]


def test_resume_with_a_changed_config_is_refused_up_front(store, mls_data, tmp_path, capsys,
                                                          monkeypatch):
    out, argv, client, run_id = stopped_after_epoch_2(monkeypatch, store, mls_data, tmp_path,
                                                      "resume-changed")
    before = list_checkpoints(out / "checkpoints")

    capsys.readouterr()
    assert main([*argv, "--set", "lr=0.01", "--resume"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"error: --resume: MLflow run {run_id} was logged with lr=0.001, the config "
                   "now gives lr=0.01; resume with the same config, or pass --overwrite to start "
                   "a new run"]
    # Nothing changed: no new run, the interrupted one as it was, no training happened.
    [run] = runs_of(client, "resume-changed")
    assert run.info.run_id == run_id and run.info.status == "FAILED"
    assert steps(client, run_id) == [1, 2] and run.data.params["lr"] == "0.001"
    assert list_checkpoints(out / "checkpoints") == before


def test_resume_with_no_track_leaves_the_run_alone(store, mls_data, tmp_path, capsys,
                                                    monkeypatch):
    out, argv, client, run_id = stopped_after_epoch_2(monkeypatch, store, mls_data, tmp_path,
                                                      "resume-untracked")

    capsys.readouterr()
    assert main([*argv, "--no-track", "--resume"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "", captured.err
    assert (out / "metrics.json").is_file()
    [run] = runs_of(client, "resume-untracked")
    assert run.info.run_id == run_id and run.info.status == "FAILED"
    assert steps(client, run_id) == [1, 2]
    assert recorded_run(out) == run_id


@pytest.mark.parametrize("gone", ["deleted", "elsewhere"])
def test_recorded_run_not_in_the_store_starts_a_new_run(store, mls_data, tmp_path, capsys,
                                                        monkeypatch, gone):
    """The recorded run was deleted, or lives in another store (another --tracking-uri): one
    note, and the resumed epochs go to a new, finished run."""
    out = tmp_path / "run"
    experiment = f"resume-{gone}"
    argv = train(mls_data, out, store, experiment, "--set", "epochs=4")
    interrupted(monkeypatch, argv, after_step=2)
    client = MlflowClient(store)
    old = interrupted_id = recorded_run(out)
    if gone == "deleted":
        client.delete_run(old)
    else:  # a run id this store never saw, recorded at another URI
        old = uuid.uuid4().hex
        (out / "tracking.json").write_text(json.dumps(
            {"run_id": old, "tracking_uri": "http://127.0.0.1:9"}))

    capsys.readouterr()
    assert main([*argv, "--resume"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    new = recorded_run(out)
    runs = {r.info.run_id: r for r in runs_of(client, experiment)}  # active runs only
    run = runs.pop(new)
    assert new != old and run.info.status == "FINISHED"
    assert list(runs) == ([] if gone == "deleted" else [interrupted_id])
    assert len(notes) == 1 and notes[0].startswith(f"note: --resume: MLflow run {old}")
    assert notes[0].endswith(f"logging to a new run {new}")
    assert ("its run is deleted" in notes[0]) == (gone == "deleted")
    assert ("recorded at http://127.0.0.1:9" in notes[0]) == (gone == "elsewhere")
    # This process trained epochs 3-4 (from the checkpoint of epoch 2) and logged them.
    assert steps(client, new) == [3, 4]
