"""`recsys train` against a real `mlflow server` on loopback, checked through MlflowClient:
params, per-epoch metric history, dataset input, artifacts, tags, the registered version and its
alias, and that the registered pyfunc returns the same lists as `recsys recommend`. Plus the two
failure modes: a server that is not there (one line, before training) and one that goes away
mid-run (training finishes, a warning lists what was not logged). No mocks of MLflow."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from recsys.cli import main
from recsys.data.io import sha256_file

from .services import TcpProxy, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# A small Mult-DAE: per-epoch metrics (loss parts, validation NDCG) in a few seconds.
DAE = ["--set", "epochs=3", "--set", "hidden_dims=[48]", "--set", "batch_size=128",
       "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def trained(mlflow_server, mls_data, tmp_path_factory):
    """One tracked, registered training run shared by the checks below."""
    out = tmp_path_factory.mktemp("runs") / "dae"
    code = main(["train", "multdae", "--data", str(mls_data), "--out", str(out), *DAE,
                 "--tracking-uri", mlflow_server, "--experiment", "it-train",
                 "--register", "it-dae"])
    assert code == 0
    record = json.loads((out / "run.json").read_text())
    return out, record["mlflow"]["run_id"]


def test_run_params_tags_and_metric_history(mlflow_server, trained):
    out, run_id = trained
    client = MlflowClient(mlflow_server)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "it-train"
    # The logged model is filed under the run's experiment (not MLflow's Default, id 0), logged
    # from code (nothing pickled).
    model_uri = json.loads((out / "run.json").read_text())["mlflow"]["model_uri"]
    logged = client.get_logged_model(model_uri.removeprefix("models:/"))
    assert logged.experiment_id == run.info.experiment_id
    assert logged.source_run_id == run_id and logged.status == "READY"
    params = run.data.params
    assert (params["model"], params["epochs"], params["hidden_dims"]) == ("multdae", "3", "[48]")
    assert params["data"].endswith("mls")
    tags = run.data.tags
    assert (tags["recsys.model"], tags["recsys.family"], tags["recsys.device"]) == \
        ("multdae", "autoencoder", "cpu")
    assert tags["recsys.version"]
    # Named MODEL · DATASET/SPLIT, in an experiment of model training (not the GenAI view).
    assert run.info.run_name == "multdae · ml-latest-small/random"
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert experiment.tags["mlflow.note.content"]
    # Per-epoch metrics by stage, the model's own loss parts under its name; no `epoch`.
    for key in ("train/multdae/loss", "train/multdae/nll", "train/lr", "valid/ndcg_at_100"):
        assert [m.step for m in client.get_metric_history(run_id, key)] == [1, 2, 3], key
    assert not {"epoch", "loss", "nll", "valid_ndcg_at_100"} & set(run.data.metrics)
    # final test metrics are those the run directory holds
    metrics = json.loads((out / "metrics.json").read_text())
    assert run.data.metrics["test/ndcg_at_100"] == pytest.approx(metrics["ndcg@100"])
    assert run.data.metrics["test/recall_at_20"] == pytest.approx(metrics["recall@20"])
    # ... and the logged model's, on the test dataset (the Models tab groups them so)
    assert logged.name == "multdae"
    [test_input] = [d for d in run.inputs.dataset_inputs
                    if {t.key: t.value for t in d.tags}["mlflow.data.context"] == "test"]
    linked = {m.key: m for m in logged.metrics}
    assert linked["test/ndcg_at_100"].value == pytest.approx(metrics["ndcg@100"])
    assert (linked["test/ndcg_at_100"].dataset_name, linked["test/ndcg_at_100"].dataset_digest) \
        == (test_input.dataset.name, test_input.dataset.digest)


def test_dataset_input_and_artifacts(mlflow_server, mls_data, trained, tmp_path):
    _, run_id = trained
    client = MlflowClient(mlflow_server)
    run = client.get_run(run_id)
    # train, valid and test, each an input of its own context, named after the data, its split
    # and its implicit preparation (the explicit one of the same file is another dataset).
    inputs = {{t.key: t.value for t in d.tags}["mlflow.data.context"]: d.dataset
              for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"training", "validation", "test"}
    for part, context in (("train", "training"), ("valid", "validation"), ("test", "test")):
        dataset = inputs[context]
        assert dataset.name == "ml-latest-small/random/implicit>=4"
        assert dataset.digest == sha256_file(mls_data / f"{part}.npz")[:16]
        assert json.loads(dataset.source)["uri"] == str((mls_data / f"{part}.npz").resolve())
        assert json.loads(dataset.profile)["interactions"] > 0
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "run.json", "metrics.json", "learning_curve.png", "history.json",
            "per_user_metrics.json", "topk_sample.json"} <= artifacts
    sample = pd.read_json(client.download_artifacts(run_id, "topk_sample.json", str(tmp_path)),
                          orient="split")
    assert {"user", "item", "rank", "score", "title"} <= set(sample.columns)
    assert sample.groupby("user")["rank"].max().eq(10).all()


def test_registered_alias_serves_the_recommend_lists(mlflow_server, mls_data, trained, tmp_path):
    import mlflow

    out, run_id = trained
    client = MlflowClient(mlflow_server)
    version = client.get_model_version_by_alias("it-dae", "champion")
    assert version.run_id == run_id
    # A version says what it is: the data, its test metrics, where it came from.
    metrics = json.loads((out / "metrics.json").read_text())
    assert version.description.startswith(
        f"multdae trained on ml-latest-small/random/implicit>=4; test ndcg@100 "
        f"{metrics['ndcg@100']:.4f}")
    assert run_id in version.description
    assert version.tags["recsys.data"] == "ml-latest-small/random/implicit>=4"
    assert version.tags["recsys.metric"] == "ndcg@100"
    assert float(version.tags["test/ndcg_at_100"]) == pytest.approx(metrics["ndcg@100"],
                                                                    rel=1e-5)
    commit = client.get_run(run_id).data.tags.get("mlflow.source.git.commit")
    assert version.tags.get("mlflow.source.git.commit") == commit
    assert main(["recommend", str(out), "--data", str(mls_data), "--k", "15", "--device", "cpu",
                 "--out", str(tmp_path / "rec.parquet")]) == 0
    expected = pd.read_parquet(tmp_path / "rec.parquet")
    mlflow.set_tracking_uri(mlflow_server)
    model = mlflow.pyfunc.load_model("models:/it-dae@champion")
    got = model.predict(pd.DataFrame({"user": expected["user"].unique()}), params={"k": 15})
    pd.testing.assert_frame_equal(got[["user", "item", "rank", "cold"]],
                                  expected[["user", "item", "rank", "cold"]])
    assert (got["score"] - expected["score"]).abs().max() < 1e-5
    # a second registration under another alias: a new version, the champion stays put
    assert main(["train", "pop", "--data", str(mls_data), "--out", str(tmp_path / "pop"),
                 "--tracking-uri", mlflow_server, "--experiment", "it-train",
                 "--register", "it-dae", "--alias", "challenger", "--quiet"]) == 0
    challenger = client.get_model_version_by_alias("it-dae", "challenger")
    assert int(challenger.version) == int(version.version) + 1
    assert client.get_model_version_by_alias("it-dae", "champion").version == version.version


def test_unreachable_server_fails_before_training(mls_data, tmp_path, capsys):
    dead = f"http://127.0.0.1:{free_port()}"
    started = time.perf_counter()
    code = main(["train", "multdae", "--data", str(mls_data), "--out", str(tmp_path / "run"),
                 *DAE, "--tracking-uri", dead])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [f"error: cannot reach the MLflow tracking server at {dead} "
                   "(ConnectionError); start it, set --tracking-uri / MLFLOW_TRACKING_URI, or "
                   "pass --no-track"]
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written
    assert time.perf_counter() - started < 20


def test_server_going_away_mid_run_keeps_training(mlflow_server, mls_data, tmp_path, capsys,
                                                  monkeypatch):
    """The proxy is cut when epoch 2 is logged: training completes, the run directory holds the
    model and metrics, and one warning names what MLflow did not get."""
    from recsys.tracking.mlflow import MlflowTracker

    proxy = TcpProxy(int(mlflow_server.rsplit(":", 1)[1]))
    original = MlflowTracker.log_metrics

    def log_metrics(self, metrics, step=None):
        if step == 2:
            proxy.cut()
        return original(self, metrics, step)

    monkeypatch.setattr(MlflowTracker, "log_metrics", log_metrics)
    out = tmp_path / "run"
    started = time.perf_counter()
    # --no-refit: the refit's epochs (refit_* metrics) would join the unlogged steps counted below.
    code = main(["train", "multdae", "--data", str(mls_data), "--out", str(out), *DAE,
                 "--no-refit", "--tracking-uri", proxy.uri, "--experiment", "it-gone"])
    seconds = time.perf_counter() - started
    err = capsys.readouterr().err
    assert code == 0
    assert (out / "model" / "weights.pt").is_file() and (out / "metrics.json").is_file()
    warning = [line for line in err.splitlines() if "is incomplete" in line]
    assert len(warning) == 1, err
    assert "metrics of 2 steps (2-3)" in warning[0] and "model" in warning[0]
    assert f"everything is in {out}" in warning[0]
    assert seconds < 90  # a dead server costs one short timeout, not one per call
    # the real server kept what arrived before the cut
    client = MlflowClient(mlflow_server)
    [run] = client.search_runs([client.get_experiment_by_name("it-gone").experiment_id])
    assert [m.step for m in client.get_metric_history(run.info.run_id,
                                                      "train/multdae/loss")] == [1]
    assert run.data.params["epochs"] == "3"


def test_compare_logs_child_runs_and_registers_the_best(mlflow_server, mls_data, tmp_path,
                                                        capsys):
    config = tmp_path / "compare.yaml"
    config.write_text(f"""
name: it-compare
data: {mls_data}
out: {tmp_path / 'runs'}
metrics: [recall@20, ndcg@100]
primary: ndcg@100
bootstrap: 200
models:
  - model: pop
  - model: itemknn
    tune: {{k: [20, 100]}}
""")
    assert main(["compare", str(config), "--tracking-uri", mlflow_server,
                 "--experiment", "it-compare", "--register", "it-best",
                 "--table", str(tmp_path / "table.csv")]) == 0
    printed = capsys.readouterr().out
    assert "pop" in printed and "itemknn" in printed and "p vs best" in printed
    table = pd.read_csv(tmp_path / "table.csv")
    assert set(table["model"]) == {"pop", "itemknn"} and set(table["metric"]) == \
        {"recall@20", "ndcg@100"}
    assert (table["low"] <= table["mean"]).all() and (table["mean"] <= table["high"]).all()
    best = table[(table["metric"] == "ndcg@100") & table["best"]]["model"].item()
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("it-compare").experiment_id
    runs = client.search_runs([experiment])
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.run_name == "it-compare"
    assert sorted(r.info.run_name for r in children) == \
        ["itemknn · ml-latest-small/random", "pop · ml-latest-small/random"]
    assert parent.data.tags["recsys.best_model"] == best
    assert parent.data.metrics["best/ndcg_at_100"] == pytest.approx(
        table[(table["metric"] == "ndcg@100") & table["best"]]["mean"].item())
    assert all(r.data.metrics["time/fit_seconds"] >= 0 for r in children)
    assert {"comparison.png", "comparison.json"} <= \
        {a.path for a in client.list_artifacts(parent.info.run_id)}
    tuned = next(r for r in children if r.data.tags["recsys.model"] == "itemknn")
    assert len(client.get_metric_history(tuned.info.run_id, "tune/valid_ndcg_at_100")) == 2
    champion = client.get_model_version_by_alias("it-best", "champion")
    assert champion.run_id == parent.data.tags["recsys.best_run_id"]
    assert champion.tags["recsys.compare.label"] == best
    assert champion.description.startswith(f"{best} trained on ml-latest-small/random/")
    # Each child's model is filed under the comparison's experiment, beside its run.
    models = client.search_logged_models(experiment_ids=[experiment])
    assert sorted(m.source_run_id for m in models) == sorted(r.info.run_id for r in children)


def test_ui_serves_the_store_and_prints_its_url(tmp_path):
    import subprocess
    import sys

    from .services import spawn, stop, wait_http

    port = free_port()
    proc = spawn([sys.executable, "-m", "recsys.cli", "ui", "--port", str(port),
                  "--tracking-uri", f"sqlite:///{tmp_path / 'ui.db'}"],
                 cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"MLflow UI: http://127.0.0.1:{port}")
        wait_http(f"http://127.0.0.1:{port}/health", proc, timeout=10)
    finally:
        stop(proc)
    assert Path(tmp_path / "ui.db").exists()


def _post(port: int, body: bytes, content_type: str = "application/json") -> tuple[int, dict]:
    """POST to a scoring server's /invocations: the status and the JSON answer."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                     method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())


def test_models_serve_answers_top_k_over_rest(mlflow_server, mls_data, trained):
    """`mlflow models serve` on the registered alias (loopback, --env-manager local)."""
    import subprocess
    import sys
    import urllib.request

    import mlflow

    from .services import spawn, stop, wait_http

    port = free_port()
    env_uri = {"MLFLOW_TRACKING_URI": mlflow_server}
    proc = spawn([sys.executable, "-m", "mlflow", "models", "serve", "-m",
                  "models:/it-dae@champion", "--env-manager", "local", "--host", "127.0.0.1",
                  "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                 extra_env=env_uri)
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", proc)
        users = [int(u) for u in pd.read_parquet(mls_data / "users.parquet")["user"][:3]]
        body = {"dataframe_records": [{"user": users[0], "items": []},
                                      {"user": users[1], "items": []},
                                      {"user": 10**9, "items": [1, 260, 1196]}],
                "params": {"k": 5}}
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                         data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as r:
            served = pd.DataFrame(json.loads(r.read())["predictions"])
        # CSV cannot carry the signature's list column: MLflow's parser refuses it (400; that
        # answer, MLflow's own, carries its stack_trace field). And the one-row-per-user layout.
        csv = ("user\n" + "\n".join(map(str, users)) + "\n").encode()
        csv_code, csv_answer = _post(port, csv, "text/csv")
        lists_code, lists_answer = _post(port, json.dumps(
            {"dataframe_records": [{"user": u, "items": []} for u in users],
             "params": {"k": 3, "layout": "lists"}}).encode())
        # A request the model refuses: 400, its one-line message, no stack trace.
        bad_code, error = _post(port, json.dumps(
            {"dataframe_records": [{"user": users[0], "items": []}],
             "params": {"k": 5, "layout": "wide"}}).encode())
    finally:
        stop(proc)
    assert bad_code == 400 and "layout" in error["message"], error
    assert "stack_trace" not in error and "Traceback" not in error["message"]
    assert csv_code == 400 and "Failed to parse input" in csv_answer["message"], csv_answer
    assert lists_code == 200, lists_answer
    lists = pd.DataFrame(lists_answer["predictions"])
    assert list(lists.columns) == ["user", "items", "scores", "cold"]
    assert [len(row) for row in lists["items"]] == [3, 3, 3]
    assert list(served.columns) == ["user", "item", "rank", "score", "cold"]
    assert served.groupby("user")["rank"].apply(list).tolist() == [[1, 2, 3, 4, 5]] * 3
    assert not {1, 260, 1196} & set(served.loc[served["user"] == 10**9, "item"])
    mlflow.set_tracking_uri(mlflow_server)
    local = mlflow.pyfunc.load_model("models:/it-dae@champion").predict(
        pd.DataFrame(body["dataframe_records"]), params={"k": 5})
    assert served["item"].tolist() == local["item"].tolist()
    assert served["score"].to_numpy() == pytest.approx(local["score"].to_numpy(), rel=1e-5)
