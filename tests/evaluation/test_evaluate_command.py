"""`recsys evaluate`: table, JSON, per-user file, run directory records, bad input."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from recsys.cli import main
from recsys.data.interactions import Dataset
from recsys.evaluation.evaluate import evaluate
from recsys.models import registry
from recsys.rundir import data_record, read_run, save_run

from .doubles import DotModel, ExplicitDot, make_dataset


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setitem(registry.MODELS, "dot", "evaluation.doubles:DotModel")
    monkeypatch.setitem(registry.MODELS, "explicitdot", "evaluation.doubles:ExplicitDot")
    data = make_dataset(explicit=True)
    data.save(tmp_path / "data")
    # What `recsys train` records about the data (evaluate checks it is the data given).
    info = data_record(tmp_path / "data", data)
    save_run(tmp_path / "run", DotModel(seed=2).fit(data.train), info)
    save_run(tmp_path / "xrun", ExplicitDot(seed=2).fit(data.train), info)
    return tmp_path


def test_json_matches_the_api_and_the_run_records_it(setup, capsys):
    tmp = setup
    code = main(["evaluate", str(tmp / "run"), "--data", str(tmp / "data"), "--metrics",
                 "ndcg@10,recall@5,coverage@5", "--json", str(tmp / "m.json"),
                 "--per-user", str(tmp / "pu.parquet"), "--device", "cpu"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "ndcg@10" in printed and "95% CI" in printed
    metrics = json.loads((tmp / "m.json").read_text())
    data = Dataset.load(tmp / "data")
    model = DotModel(seed=2).fit(data.train)
    expected = evaluate(model, data.eval_split("test"), "ndcg@10,recall@5,coverage@5")
    assert metrics == pytest.approx(expected.summary)
    assert read_run(tmp / "run")["metrics"] == pytest.approx(expected.summary)
    assert json.loads((tmp / "run" / "metrics.json").read_text()) == pytest.approx(metrics)
    per_user = pd.read_parquet(tmp / "pu.parquet")
    assert per_user["user"].min() >= 1000  # external ids
    assert per_user["ndcg@10"].mean() == pytest.approx(metrics["ndcg@10"])


def test_default_metrics_include_rating_metrics_for_explicit_models(setup):
    tmp = setup
    assert main(["evaluate", str(tmp / "xrun"), "--data", str(tmp / "data"), "--json",
                 str(tmp / "x.json"), "--no-ci"]) == 0
    metrics = json.loads((tmp / "x.json").read_text())
    assert {"rmse", "mae", "recall@20", "ndcg@100", "coverage@20", "map@20"} <= set(metrics)
    assert 0 < metrics["mae"] <= metrics["rmse"] <= 4  # clipped to the 1..5 scale
    assert main(["evaluate", str(tmp / "run"), "--data", str(tmp / "data"), "--json",
                 str(tmp / "i.json"), "--no-ci"]) == 0
    assert "rmse" not in json.loads((tmp / "i.json").read_text())


def test_valid_part_is_an_error_when_the_data_has_none(setup, capsys):
    tmp = setup
    assert main(["evaluate", str(tmp / "run"), "--data", str(tmp / "data"), "--part",
                 "valid"]) == 2
    assert "no valid part to evaluate" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--metrics", "ndcg@10,recal@5"], "did you mean 'recall@5'"),
    (["--metrics", "rmse"], "does not predict ratings"),
])
def test_bad_input_is_one_line_and_writes_nothing(setup, capsys, args, message):
    tmp = setup
    before = (tmp / "run" / "run.json").read_text()
    code = main(["evaluate", str(tmp / "run"), "--data", str(tmp / "data"), *args, "--json",
                 str(tmp / "m.json")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp / "m.json").exists()
    assert (tmp / "run" / "run.json").read_text() == before


def test_not_a_run_or_not_a_dataset(setup, capsys):
    tmp = setup
    assert main(["evaluate", str(tmp / "data"), "--data", str(tmp / "data")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["evaluate", str(tmp / "run"), "--data", str(tmp / "run")]) == 2
    assert "not a prepared dataset" in capsys.readouterr().err


def test_data_of_another_shape_is_refused(setup, capsys):
    tmp = setup
    make_dataset(n_items=30).save(tmp / "other")
    assert main(["evaluate", str(tmp / "run"), "--data", str(tmp / "other")]) == 2
    assert "trained on 25" in capsys.readouterr().err
