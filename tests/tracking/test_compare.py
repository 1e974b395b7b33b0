"""`recsys compare` without a tracking server: the config file's checks, the statistics of the
comparison table, and a whole comparison with --no-track on a small synthetic split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from evaluation.doubles import make_dataset

from recsys.cli import main
from recsys.commands.compare import (
    check_prepare,
    ensure_data,
    load_compare_config,
    prepare_argv,
)
from recsys.errors import RecsysError
from recsys.models import registry
from recsys.workflows.compare import CompareConfig, ModelOutcome, comparison_table


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cmp.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("body, message", [
    ("data: d\nmodels: [{model: pop}]\nmodles: []\n", "unknown key 'modles'"),
    ("data: d\nmodels: [{model: pop}, {model: pop}]\n", "appears twice"),
    ("data: d\nmodels: [{model: eese}]\n", "unknown model 'eese'.*'ease'"),
    ("data: d\nmodels: [{model: ease, params: {lamda: 3}}]\n", "unknown key 'lamda'"),
    ("data: d\nmodels: [{model: ease, tune: {lamda: [3]}}]\n", "unknown key 'lamda'"),
    ("data: d\nmodels: [{model: ease, tune: config}]\n", "needs `config: FILE`"),
    ("data: d\nmetrics: [ndcg@x]\nmodels: [{model: pop}]\n", "cmp.yaml"),
    ("data: d\ntest: anova\nmodels: [{model: pop}]\n", "'wilcoxon' or 'ttest'"),
])
def test_config_errors_are_one_line(tmp_path, body, message):
    with pytest.raises(RecsysError, match=message):
        load_compare_config(_write(tmp_path, body))


def test_config_reads_model_files_relative_to_itself(tmp_path):
    (tmp_path / "ease.yaml").write_text("lambda_: 300.0\ntune:\n  lambda_: [10.0, 20.0]\n")
    spec = load_compare_config(_write(tmp_path, """
data: d
models:
  - {model: ease, config: ease.yaml, tune: config, params: {device: cpu}}
  - {model: pop, label: popular}
"""), only="ease")
    [m] = spec.models
    assert m.params == {"lambda_": 300.0, "device": "cpu"} and m.tune == {"lambda_": [10.0, 20.0]}
    assert spec.primary in spec.metrics and spec.name == "cmp"
    with pytest.raises(RecsysError, match="--only nope: no such model label"):
        load_compare_config(tmp_path / "cmp.yaml", only="nope")


def test_prepare_section_becomes_prepare_flags():
    assert prepare_argv({"dataset": "ml-100k", "implicit_threshold": 4.0, "kcore": True,
                         "seed": 0, "valid_fraction": None}) == \
        ["ml-100k", "--implicit-threshold", "4.0", "--kcore", "--seed", "0"]


@pytest.mark.parametrize("section, message", [
    ({"datset": "ml-100k"}, "x.yaml: prepare: unknown key 'datset' (did you mean 'dataset'?)"),
    ({"dataset": "ml-100k", "implict-threshold": 4}, "unknown key 'implict-threshold' (did you "
                                                     "mean 'implicit_threshold'?)"),
    ({"dataset": "ml-100k", "out": "elsewhere"}, "unknown key 'out'"),
    ({"dataset": "ml-100k", "split": "randum"}, "argument --split: invalid choice: 'randum'"),
    ({"dataset": "ml-100k", "seed": "zero"}, "argument --seed: invalid int value: 'zero'"),
])
def test_prepare_section_is_checked_before_anything_runs(tmp_path, section, message):
    with pytest.raises(RecsysError) as caught:
        check_prepare(section, str(tmp_path / "d"), where="x.yaml")
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "d").exists()
    # dashes or underscores, flags of every kind: accepted as they are
    check_prepare({"dataset": "ml-100k", "implicit-threshold": 4, "min_item_interactions": 5,
                   "kcore": True, "valid_fraction": None}, "d", where="x.yaml")


def test_a_missing_dataset_is_prepared_from_the_prepare_section(tmp_path, capsys):
    ratings = tmp_path / "r.csv"
    ratings.write_text("user,item,rating\n" + "".join(
        f"{u},{i},{(u * i) % 5 + 1}\n" for u in range(1, 31) for i in range(1, 21) if (u + i) % 3))
    spec = load_compare_config(_write(tmp_path, f"""
data: {tmp_path / 'data'}
prepare: {{input: {ratings}, test-fraction: 0.25, quiet: true}}
models: [{{model: pop}}]
"""))
    assert ensure_data(spec) == tmp_path / "data"
    assert (tmp_path / "data" / "metadata.json").is_file()
    assert "preparing" in capsys.readouterr().err
    # a prepare that fails says why in its own one line (no second "failed" line)
    spec.data, spec.prepare = str(tmp_path / "none"), {"input": str(tmp_path / "nope.csv")}
    with pytest.raises(RecsysError, match="nope.csv: file not found"):
        ensure_data(spec)
    assert not (tmp_path / "none").exists()


def _outcome(label: str, values: np.ndarray) -> ModelOutcome:
    per_user = pd.DataFrame({"user": np.arange(len(values)), "ndcg@10": values})
    return ModelOutcome(label, "x", {}, Path("."), {"ndcg@10": float(values.mean())}, per_user,
                        0.0)


def test_table_marks_the_best_and_what_differs_from_it():
    rng = np.random.default_rng(0)
    base = rng.random(300)
    strong = _outcome("strong", np.clip(base + 0.2, 0, 1))
    weak = _outcome("weak", base)
    tie = _outcome("tie", np.clip(base + 0.2 + rng.normal(0, 1e-3, 300), 0, 1))
    spec = CompareConfig(data="d", metrics=["ndcg@10"], primary="ndcg@10", bootstrap=500,
                         models=[{"model": "pop"}])
    table = comparison_table([weak, strong, tie], spec).set_index("model")
    best = table.index[table["best"]].item()
    assert best in ("strong", "tie")
    assert table.loc["weak", "significant"] and table.loc["weak", "p_value"] < 1e-6
    assert np.isnan(table.loc[best, "p_value"])
    for label in ("weak", "strong", "tie"):
        row = table.loc[label]
        assert row["low"] < row["mean"] < row["high"]
        assert row["high"] - row["low"] < 0.1  # 300 users: a tight interval


def test_compare_without_tracking_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(registry.MODELS, "dot", "evaluation.doubles:DotModel")
    make_dataset(n_users=60, n_items=30).save(tmp_path / "data")
    config = _write(tmp_path, f"""
name: tiny
data: {tmp_path / 'data'}
out: {tmp_path / 'out'}
metrics: [recall@5, ndcg@10]
primary: ndcg@10
bootstrap: 200
models:
  - model: pop
  - model: dot
    params: {{factors: 8}}
""")
    assert main(["compare", str(config), "--no-track", "--table", str(tmp_path / "t.csv")]) == 0
    printed = capsys.readouterr().out
    assert "tiny: test metrics, bootstrap 95% CI" in printed
    table = pd.read_csv(tmp_path / "t.csv")
    assert sorted(table["model"].unique()) == ["dot", "pop"]
    assert (tmp_path / "out" / "comparison.png").stat().st_size > 1000
    for label in ("pop", "dot"):
        run = tmp_path / "out" / label
        assert (run / "run.json").is_file() and (run / "model" / "weights.pt").is_file()
        metrics = pd.read_json(run / "metrics.json", typ="series")
        row = table[(table["model"] == label) & (table["metric"] == "ndcg@10")]
        assert row["mean"].item() == pytest.approx(metrics["ndcg@10"])


def test_every_search_of_a_comparison_keeps_its_candidate_by_the_specs_rule():
    from recsys.config import validate_config
    from recsys.workflows.compare import search_of

    models = [{"model": "ease", "tune": "default"}, {"model": "multdae", "tune": {"trials": 3}}]
    spec = CompareConfig(data="d", metrics=["ndcg@10"], primary="ndcg@10", models=models)
    assert [search_of(m, spec).rule for m in spec.models] == ["one-se", "one-se"]
    best = CompareConfig(data="d", metrics=["ndcg@10"], primary="ndcg@10", models=models,
                         tune_rule="best")
    assert [(search_of(m, best).mode, search_of(m, best).rule) for m in best.models] == [
        ("grid", "best"), ("study", "best")]
    with pytest.raises(RecsysError, match="tune_rule"):
        validate_config(CompareConfig, {"data": "d", "models": models, "tune_rule": "one_se"})
