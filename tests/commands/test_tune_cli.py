"""`recsys train MODEL --tune` with an Optuna study, through the real CLI process: the study
flags' one-line errors, tuned.yaml round-tripping through --config, trials as nested MLflow runs
of the train run, and a stored study that a second `train` continues."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .test_train import blocks_dataset

REPO = Path(__file__).resolve().parents[2]


def recsys(*argv: object) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / "recsys"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "recsys.cli"]
    env = {k: v for k, v in os.environ.items() if k != "RECSYS_DEBUG"}
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                "TQDM_DISABLE": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
                "PYTHONWARNINGS": "ignore"})
    return subprocess.run([*command, *map(str, argv)], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=600)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tune") / "data"
    blocks_dataset(n_users=60, n_items=30).save(path)
    return path


LAMBDA_SPACE = "lambda_: {low: 1.0, high: 5000.0, log: true}\n"


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_study_flags_without_tune_are_refused(data, tmp_path):
    err = one_line_error(recsys("train", "ease", "--data", data, "--out", tmp_path / "run",
                                "--trials", "3", "--no-track"))
    assert "--trials" in err and "--tune" in err
    assert not (tmp_path / "run").exists()


def test_a_study_name_without_storage_is_refused(data, tmp_path):
    err = one_line_error(recsys("train", "ease", "--data", data, "--out", tmp_path / "run",
                                "--tune", "--study-name", "s", "--no-track"))
    assert "--study-storage" in err


def test_a_tune_grid_beside_study_flags_is_refused(data, tmp_path):
    config = tmp_path / "ease.yaml"
    config.write_text("tune: {lambda_: [10.0, 100.0]}\n")
    err = one_line_error(recsys("train", "ease", "--data", data, "--out", tmp_path / "run",
                                "--config", config, "--tune", "--trials", "3", "--no-track"))
    assert "'tune:' grid and --trials" in err


@pytest.mark.parametrize(("text", "needle"), [
    ("lamda: {low: 1.0, high: 2.0}\n", "unknown key 'lamda'"),
    ("lambda_: {low: 9.0, high: 2.0}\n", "'lambda_': 'low' (9.0) must be below 'high'"),
    ("lambda_: {low: one, high: 2.0}\n", "'lambda_': 'low' and 'high' must be numbers"),
])
def test_a_bad_search_space_file_is_one_line_and_trains_nothing(data, tmp_path, text, needle):
    space = tmp_path / "space.yaml"
    space.write_text(text)
    err = one_line_error(recsys("train", "ease", "--data", data, "--out", tmp_path / "run",
                                "--tune", "--search-space", space, "--no-track"))
    assert needle in err and str(space) in err
    assert not (tmp_path / "run" / "run.json").exists()


def test_the_study_is_tracked_as_nested_runs_and_tuned_yaml_round_trips(data, tmp_path):
    """Mult-DAE, 3 trials over lr: one parent `train` run, three children (params, per-epoch
    curve, validation metric, state), the best params on the parent; tuned.yaml trains the same
    model again through --config, with the same test metrics."""
    from mlflow.tracking import MlflowClient

    space = tmp_path / "space.yaml"
    space.write_text("lr: {low: 0.001, high: 0.05, log: true}\n")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = tmp_path / "run"
    fast = ["--set", "hidden_dims=[8]", "--set", "epochs=3", "--set", "batch_size=16",
            "--device", "cpu"]
    proc = recsys("train", "multdae", "--data", data, "--out", run, "--tune", "--trials", "3",
                  "--search-space", space, *fast, "--tracking-uri", store, "--experiment", "t")
    assert proc.returncode == 0, proc.stderr
    record = json.loads((run / "run.json").read_text())
    tuned = record["tuned"]
    assert tuned["search"] == "study" and tuned["part"] == "valid"
    assert len(tuned["candidates"]) == 3
    assert {c["state"] for c in tuned["candidates"]} == {"COMPLETE"}
    best = max(tuned["candidates"], key=lambda c: c["ndcg@100"])
    assert tuned["params"] == {"lr": best["lr"]}
    assert (run / "metrics.json").is_file()  # evaluated once on test, after the refit

    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("t")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 3
    parent = parents[0]
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    assert sorted(c.data.tags["optuna.trial"] for c in children) == ["0", "1", "2"]
    for child in children:
        assert child.data.tags["optuna.state"] == "COMPLETE"
        assert child.info.status == "FINISHED"
        number = int(child.data.tags["optuna.trial"])
        assert float(child.data.params["lr"]) == pytest.approx(tuned["candidates"][number]["lr"])
        assert child.data.metrics["trial/valid_ndcg_at_100"] == pytest.approx(
            tuned["candidates"][number]["ndcg@100"])
        curve = client.get_metric_history(child.info.run_id, "valid/ndcg_at_100")
        assert sorted(m.step for m in curve if m.step > 0) == [1, 2, 3]
    assert float(parent.data.params["best.lr"]) == pytest.approx(tuned["params"]["lr"])
    assert parent.data.metrics["best/valid_ndcg_at_100"] == pytest.approx(tuned["score"])
    assert float(parent.data.params["lr"]) == pytest.approx(tuned["params"]["lr"])

    # tuned.yaml is the whole chosen config, usable as --config.
    chosen = yaml.safe_load((run / "tuned.yaml").read_text())
    assert chosen["lr"] == tuned["params"]["lr"] and chosen["hidden_dims"] == [8]
    again = tmp_path / "again"
    proc = recsys("train", "multdae", "--data", data, "--out", again, "--config",
                  run / "tuned.yaml", "--no-track")
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load((again / "config.yaml").read_text()) == \
        yaml.safe_load((run / "config.yaml").read_text())
    assert json.loads((again / "metrics.json").read_text()) == \
        json.loads((run / "metrics.json").read_text())


def test_a_stored_study_continues_under_the_same_name(data, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(LAMBDA_SPACE)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    common = ["train", "ease", "--data", data, "--out", tmp_path / "run", "--tune",
              "--search-space", space, "--study-storage", storage, "--study-name", "ease-s",
              "--set", "device=cpu", "--no-track"]
    first = recsys(*common, "--trials", "2")
    assert first.returncode == 0, first.stderr
    before = json.loads((tmp_path / "run" / "run.json").read_text())["tuned"]["candidates"]
    second = recsys(*common, "--trials", "3", "--overwrite")
    assert second.returncode == 0, second.stderr
    after = json.loads((tmp_path / "run" / "run.json").read_text())["tuned"]["candidates"]
    assert len(before) == 2 and len(after) == 5
    assert [c["lambda_"] for c in after[:2]] == [c["lambda_"] for c in before]


def test_compare_tunes_a_model_with_a_study_of_the_given_budget(data, tmp_path):
    """`tune: {trials: 3}` in `recsys compare` is the study `recsys train --tune --trials 3`
    runs (same declared space, same seed): the same choice."""
    config = tmp_path / "compare.yaml"
    config.write_text(f"data: {data}\nout: {tmp_path / 'runs'}\nbootstrap: 100\nmodels:\n"
                      "  - model: pop\n  - model: ease\n    params: {device: cpu}\n"
                      "    tune: {trials: 3}\n")
    proc = recsys("compare", config, "--no-track")
    assert proc.returncode == 0, proc.stderr
    compared = json.loads((tmp_path / "runs" / "ease" / "run.json").read_text())["tuned"]
    proc = recsys("train", "ease", "--data", data, "--out", tmp_path / "train", "--tune",
                  "--trials", "3", "--set", "device=cpu", "--no-track")
    assert proc.returncode == 0, proc.stderr
    trained = json.loads((tmp_path / "train" / "run.json").read_text())["tuned"]
    assert compared == trained["params"] and set(compared) == {"lambda_"}

    config.write_text(f"data: {data}\nmodels:\n  - model: ease\n"
                      "    tune: {trials: 3, search_space: space.yaml}\n")
    (tmp_path / "space.yaml").write_text("lambda_: {low: 1.0}\n")
    err = one_line_error(recsys("compare", config, "--no-track"))
    assert "space.yaml: 'lambda_': a range needs both 'low' and 'high'" in err
