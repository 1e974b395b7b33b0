"""Tracking flags, the tracker they build, and what a run logs: against a real local sqlite store
(MLflow's default backend), no server needed."""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib
import pandas as pd
import pytest
from evaluation.doubles import DotModel, make_dataset

from recsys.commands.common import add_tracking_args, tracking_options
from recsys.errors import RecsysError
from recsys.models import registry
from recsys.rundir import save_run
from recsys.tracking.base import Tracker
from recsys.tracking.callbacks import TrackerCallbacks
from recsys.tracking.records import (
    data_label,
    default_run_name,
    epoch_metrics,
    learning_curve,
    log_training_end,
    log_training_start,
    metric_key,
    metric_name,
    training_tags,
)
from recsys.tracking.setup import (
    TrackingOptions,
    check_registry_names,
    make_tracker,
    resolve_tracking_uri,
)

matplotlib.use("Agg")


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_tracking_args(parser)
    return parser.parse_args(list(argv))


def _options(*argv: str) -> TrackingOptions:
    return tracking_options(_args(*argv))


def test_flags_and_defaults():
    args = _args()
    assert (args.tracking_uri, args.experiment, args.run_name, args.no_track, args.register,
            args.alias, args.log_system_metrics) == (None, None, None, False, None, "champion",
                                                     False)
    args = _args("--tracking-uri", "http://h:1", "--experiment", "e", "--register", "m",
                 "--alias", "prod", "--log-system-metrics", "--no-track", "--run-name", "mine")
    assert (args.tracking_uri, args.experiment, args.register, args.alias) == \
        ("http://h:1", "e", "m", "prod")
    assert args.no_track and args.log_system_metrics
    assert _options("--run-name", "mine").run_name == "mine"


def test_no_track_gives_the_null_tracker():
    tracker = make_tracker(_options("--no-track"), run_name="x")
    assert type(tracker) is Tracker
    # a null parent (compare --no-track) gives null children
    assert type(make_tracker(_options(), run_name="child", parent=tracker)) is Tracker


def test_tracking_uri_resolution(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri() == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    assert resolve_tracking_uri() == "http://127.0.0.1:9"
    assert resolve_tracking_uri("sqlite:///x.db") == "sqlite:///x.db"
    for store in ("./mlruns", "file:///tmp/mlruns", "/abs/mlruns"):
        with pytest.raises(RecsysError, match="file store"):
            resolve_tracking_uri(store)


@pytest.mark.parametrize("register, alias, message", [
    ("a/b", "champion", "no '/' or ':'"),
    ("ok", "bad alias", "letters, digits"),
    ("ok", "latest", "reserved"),
    ("ok", "v3", "reserved"),
])
def test_registry_names_are_checked_before_training(register, alias, message):
    with pytest.raises(RecsysError, match=message):
        check_registry_names(register, alias)
    # the options the flags build refuse them too (compare's spec and the flags: one rule)
    with pytest.raises(RecsysError, match=message):
        _options("--register", register, "--alias", alias)


def test_learning_curve_has_one_panel_per_series():
    history = [{"epoch": e, "loss": 10.0 / e, "kl": 0.1 * e, "valid_ndcg@100": 0.1 + 0.01 * e}
               for e in range(1, 6)]
    fig = learning_curve(history)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["loss", "kl", "valid_ndcg@100"]
    line = fig.axes[0].lines[0]
    assert list(line.get_xdata()) == [1, 2, 3, 4, 5]
    assert learning_curve([{"epoch": 1}]) is None


def test_a_run_in_the_local_sqlite_store(tmp_path, monkeypatch):
    """The default backend: params, dataset input, metrics, artifacts and the pyfunc model."""
    import mlflow
    from mlflow import MlflowClient

    from recsys.data.io import sha256_file

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setitem(registry.MODELS, "dot", "evaluation.doubles:DotModel")
    data = make_dataset(n_users=30, n_items=20)
    data.save(tmp_path / "data")
    model = DotModel(seed=2).fit(data.train)
    model.history_ = [{"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": 1.0}]
    save_run(tmp_path / "run", model, {})

    tracker = make_tracker(_options("--experiment", "local"),
                           run_name=default_run_name(model.name, tmp_path / "data"),
                           tags=training_tags(model, "cpu"))
    assert tracker.tracking_uri == "sqlite:///mlflow.db"
    log_training_start(tracker, model=model, data_dir=tmp_path / "data")
    callbacks = TrackerCallbacks(tracker)
    callbacks.on_fit_start({"model": "dot"})
    callbacks.on_epoch_end(1, {"epoch": 1, "loss": 2.0, "lr": 0.1, "valid_ndcg@10": 0.25})
    callbacks.on_epoch_end(2, {"epoch": 2, "loss": 1.0, "lr": 0.1, "valid_ndcg@10": 0.5})
    per_user = pd.DataFrame({"user": [0, 1, 2], "ndcg@10": [0.5, 0.0, 1.0]})
    uri = log_training_end(tracker, model=model, run_dir=tmp_path / "run",
                           data_dir=tmp_path / "data", dataset=data,
                           summary={"ndcg@10": 0.5}, per_user=per_user)
    tracker.close()
    assert (tmp_path / "mlflow.db").is_file()  # the sqlite store in the working directory
    assert tracker.failures == []

    client = MlflowClient("sqlite:///mlflow.db")
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    # Named for a person: MODEL · DATASET/SPLIT (a synthetic dataset has neither: its folder's
    # name); an experiment of model training, described.
    assert run.info.run_name == "dot · data"
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "recsys" in experiment.tags["mlflow.note.content"]
    assert run.data.params["factors"] == "4" and run.data.params["model"] == "dot"
    assert run.data.metrics["test/ndcg_at_10"] == 0.5
    history = client.get_metric_history(run.info.run_id, "train/dot/loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.0), (2, 1.0)]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/lr")] == [1, 2]
    assert run.data.metrics["valid/ndcg_at_10"] == 0.5
    assert not {"epoch", "loss", "test_ndcg_at_10"} & set(run.data.metrics)
    assert run.data.tags["recsys.device"] == "cpu" and run.data.tags["recsys.model"] == "dot"
    label = "data/implicit"
    assert run.data.tags["recsys.data"] == label
    assert run.data.tags["mlflow.note.content"].startswith("dot ")
    inputs = {next(t.value for t in d.tags if t.key == "mlflow.data.context"): d.dataset
              for d in run.inputs.dataset_inputs}
    parts = [p for p in ("train", "valid", "test") if data.has(p)]
    contexts = {"train": "training", "valid": "validation", "test": "test"}
    assert set(inputs) == {contexts[p] for p in parts}
    for part in parts:
        dataset = inputs[contexts[part]]
        assert dataset.name == label
        assert dataset.digest == sha256_file(tmp_path / "data" / f"{part}.npz")[:16]
        assert str(tmp_path / "data" / f"{part}.npz") in dataset.source
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "run.json", "learning_curve.png", "history.json",
            "per_user_metrics.json", "topk_sample.json"} <= artifacts
    per_user_back = pd.read_json(client.download_artifacts(run.info.run_id,
                                                           "per_user_metrics.json",
                                                           str(tmp_path)), orient="split")
    assert per_user_back["user"].tolist() == data.users.ids[:3].tolist()

    # Logged from code (nothing pickled), and filed under the run's experiment, not Default.
    logged = client.get_logged_model(tracker.model_uri.removeprefix("models:/"))
    assert logged.experiment_id == run.info.experiment_id != "0"
    assert logged.source_run_id == run.info.run_id
    assert logged.name == "dot"  # named after the model, not "model"
    # The test metrics are the model's too, on the test dataset (the Models tab's columns).
    linked = {(m.key, m.dataset_name, m.dataset_digest): m.value for m in logged.metrics}
    test_digest = inputs["test"].digest
    assert linked[("test/ndcg_at_10", label, test_digest)] == 0.5
    assert mlflow.models.get_model_info(uri).saved_input_example_info is not None
    flavor = mlflow.models.get_model_info(uri).flavors["python_function"]
    assert flavor["model_code_path"].endswith("pyfunc_model.py") and "python_model" not in flavor
    local = mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "logged"))
    assert not [p.name for p in Path(local).rglob("*.pkl")]

    mlflow.set_tracking_uri("sqlite:///mlflow.db")
    served = mlflow.pyfunc.load_model(uri)
    users = pd.DataFrame({"user": data.users.ids[:4]})
    got = served.predict(users, params={"k": 3})
    from recsys.scoring.serving import TopKPredictor

    expected = TopKPredictor.from_dataset(model, data).predict(users, k=3)
    pd.testing.assert_frame_equal(got.reset_index(drop=True), expected)
    # recsys's own loader (batch scoring) accepts it: logged from recsys's own model code.
    from recsys.tracking.packaging import load_pyfunc

    checked = load_pyfunc(uri, tracking_uri="sqlite:///mlflow.db")
    pd.testing.assert_frame_equal(checked.predict(users, params={"k": 3}).reset_index(drop=True),
                                  expected)


def test_metric_names_and_failure_summary():
    from recsys.tracking.mlflow import summarize

    assert metric_key("ndcg@100") == "ndcg_at_100"
    assert metric_key("valid_recall@20") == "valid_recall_at_20"
    assert metric_key("tune/valid_ndcg@10") == "tune/valid_ndcg_at_10"
    assert metric_key("g(loss)") == "g_loss_"
    assert metric_name("test", "ndcg@100") == "test/ndcg_at_100"
    assert metric_name("train", "kl", "multvae") == "train/multvae/kl"
    with pytest.raises(ValueError, match="unknown metric stage 'tst'"):
        metric_name("tst", "ndcg@100")
    failures = ["metrics of step 3", "metrics of step 4", "metrics of step 5", "model",
                "registered model m", "model"]
    assert summarize(failures) == "metrics of 3 steps (3-5), model, registered model m"
    assert summarize(["metrics of step 7"]) == "metrics of step 7"


def test_epoch_records_are_named_by_stage_and_the_models_loss_parts_by_model():
    record = {"epoch": 3, "loss": 510.0, "nll": 500.0, "kl": 40.0, "beta": 0.25, "lr": 1e-3,
              "seconds": 1.5, "valid_ndcg@100": 0.41}
    assert epoch_metrics(record, "multvae") == {
        "train/multvae/loss": 510.0, "train/multvae/nll": 500.0, "train/multvae/kl": 40.0,
        "train/multvae/beta": 0.25, "train/lr": 1e-3, "train/seconds": 1.5,
        "valid/ndcg_at_100": 0.41}
    # Another model's loss is another chart: the scales never share an axis.
    assert set(epoch_metrics({"loss": 9e4}, "autorec")) == {"train/autorec/loss"}
    refit = {"refit_epoch": 2, "refit_loss": 480.0, "refit_seconds": 1.0, "refit_lr": 1e-3}
    assert epoch_metrics(refit, "multvae") == {"refit/multvae/loss": 480.0,
                                               "refit/seconds": 1.0, "refit/lr": 1e-3}
    assert epoch_metrics({"refit_epochs": 7}, "multvae") == {"refit/epochs": 7}


def test_data_labels_tell_the_preparations_apart(tmp_path):
    implicit = {"dataset": "ml-latest-small", "split": {"split": "random"}, "implicit": True,
                "options": {"implicit_threshold": 4.0}}
    explicit = {"dataset": "ml-latest-small", "split": {"split": "random"}, "implicit": False,
                "options": {"implicit_threshold": None}}
    assert data_label(implicit) == "ml-latest-small/random/implicit>=4"
    assert data_label(explicit) == "ml-latest-small/random/explicit"
    assert data_label({"dataset": "ml-100k", "split": {"split": "ml100k-u1"},
                       "implicit": True, "options": {"implicit_threshold": 3.5}}) \
        == "ml-100k/ml100k-u1/implicit>=3.5"
    import json

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "metadata.json").write_text(json.dumps(implicit))
    assert default_run_name("ease", tmp_path / "d") == "ease · ml-latest-small/random"
    assert default_run_name("ease", tmp_path / "missing") == "ease"


def test_run_name_flag_names_the_commands_run_not_its_children(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    options = _options("--experiment", "named", "--run-name", "my baseline")
    parent = make_tracker(options, run_name="ease · ml-100k/random")
    child = make_tracker(options, run_name="trial-0", parent=parent)
    child.close()
    parent.close()
    client = MlflowClient("sqlite:///mlflow.db")
    assert client.get_run(parent.run_id).info.run_name == "my baseline"
    assert client.get_run(child.run_id).info.run_name == "trial-0"


def test_an_experiment_made_elsewhere_gets_the_tags_it_lacks(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    make_tracker(_options("--experiment", "first")).close()  # creates the store
    client = MlflowClient("sqlite:///mlflow.db")
    mine = client.create_experiment("theirs", tags={"mlflow.note.content": "kept"})
    make_tracker(_options("--experiment", "theirs")).close()
    tags = client.get_experiment(mine).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert tags["mlflow.note.content"] == "kept"


def test_experiments_store_the_runs_table_view_once(tmp_path, monkeypatch):
    """The view the printed address opens: the key metrics' columns, best test NDCG first, in the
    JSON MLflow's UI reads from ``mlflow.sharedViewState.KEY``; written once, not per run."""
    import json

    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = make_tracker(_options("--experiment", "viewed"))
    tracker.close()
    assert tracker.view_key == "recsys"
    client = MlflowClient("sqlite:///mlflow.db")
    experiment = client.get_experiment_by_name("viewed")
    view = json.loads(experiment.tags["mlflow.sharedViewState.recsys"])
    assert view == {"selectedColumns": ["metrics.`test/ndcg_at_100`",
                                        "metrics.`test/recall_at_20`",
                                        "metrics.`valid/ndcg_at_100`"],
                    "orderByKey": "metrics.`test/ndcg_at_100`", "orderByAsc": False}
    calls = []
    monkeypatch.setattr(MlflowClient, "set_experiment_tag",
                        lambda self, *a: calls.append(a))
    make_tracker(_options("--experiment", "viewed")).close()
    assert calls == []  # equal: not rewritten
    client.set_experiment_tag(experiment.experiment_id, "mlflow.sharedViewState.recsys", "{}")
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    make_tracker(_options("--experiment", "viewed")).close()  # an older view is replaced
    tags = client.get_experiment(experiment.experiment_id).tags
    assert json.loads(tags["mlflow.sharedViewState.recsys"]) == view


def test_the_end_of_a_run_says_where_it_went():
    from recsys.commands.common import run_location

    assert run_location(Tracker()) is None

    class Logged(Tracker):
        run_id, experiment_id, experiment_name = "abc123", "7", "recsys"

    served = Logged()
    served.tracking_uri = "http://127.0.0.1:5001/"
    served.registered = ("movielens", "3")
    line = run_location(served, "champion")
    assert line == ("MLflow run abc123 (recsys): http://127.0.0.1:5001/#/experiments/7/runs/abc123"
                    "?workflowType=machine_learning; registered as movielens version 3 "
                    "(champion)")
    local = Logged()
    local.tracking_uri = "sqlite:///mlflow.db"
    assert run_location(local).endswith(
        "http://127.0.0.1:5000/#/experiments/7/runs/abc123?workflowType=machine_learning once "
        "`recsys ui` serves the store")
    local.view_key = "recsys"  # the experiment's runs table opens in recsys's view
    assert ", beside the others: http://127.0.0.1:5000/#/experiments/7/runs?viewStateShareKey=" \
        "recsys&workflowType=machine_learning once" in run_location(local)


def test_mlflows_own_info_lines_stay_off_the_terminal(tmp_path):
    """A fresh store and a registration, as a user runs them: MLflow's INFO lines ("Creating
    initial MLflow database tables...", "Successfully registered model") do not reach stderr;
    recsys's own line says where the run went."""
    import os
    import subprocess
    import sys

    make_dataset(n_users=30, n_items=20).save(tmp_path / "data")
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_LOGGING_LEVEL")}
    done = subprocess.run([sys.executable, "-m", "recsys.cli", "train", "pop", "--data", "data",
                           "--out", "run", "--register", "popular"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "INFO mlflow" not in done.stderr and "Successfully registered" not in done.stderr
    assert "registered as popular version 1 (champion)" in done.stdout
