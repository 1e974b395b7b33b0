"""`recsys train --tune --trials N` against a real `mlflow server`: the study is one parent run
with its trials nested under it (what the MLflow UI shows as a tree), each trial's state and
validation score on it, the best params and tuned.yaml on the parent."""

from __future__ import annotations

import json

import pytest
import yaml
from mlflow import MlflowClient

from recsys.cli import main

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_study_is_a_parent_run_with_its_trials_nested(mlflow_server, mls_data, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("lambda_: {low: 10.0, high: 3000.0, log: true}\n")
    out = tmp_path / "ease"
    assert main(["train", "ease", "--data", str(mls_data), "--out", str(out), "--tune",
                 "--trials", "3", "--search-space", str(space), "--set", "device=cpu",
                 "--tune-rule", "best", "--quiet", "--tracking-uri", mlflow_server,
                 "--experiment", "it-study"]) == 0
    record = json.loads((out / "run.json").read_text())
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("it-study").experiment_id
    runs = client.search_runs([experiment])
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.run_id == record["mlflow"]["run_id"]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in trials) == ["trial-0", "trial-1", "trial-2"]
    scores = {float(r.data.params["lambda_"]): r.data.metrics["trial/valid_ndcg_at_100"]
              for r in trials}
    assert {r.data.tags["optuna.state"] for r in trials} == {"COMPLETE"}
    # A new study starts from the model's defaults.
    [first] = [r for r in trials if r.info.run_name == "trial-0"]
    from recsys.models.baselines import EASE

    assert float(first.data.params["lambda_"]) == EASE().config.lambda_
    assert parent.data.tags["recsys.tune.rule"] == "best"
    best = max(scores, key=scores.get)
    assert float(parent.data.params["best.lambda_"]) == pytest.approx(best)
    assert yaml.safe_load((out / "tuned.yaml").read_text())["lambda_"] == pytest.approx(best)
    assert {"tuned.yaml", "optimization_history.png", "param_importances.png"} <= \
        {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert parent.data.tags["recsys.tune"] == "study"
