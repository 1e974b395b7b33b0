"""benchmarks/bench_family.py's quick path end to end on a tiny synthetic rating log, so that the
script cannot rot: every candidate is a real `recsys train` / `recsys evaluate`, and the figures it
reports are checked against the runs' own records."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from reliability.helpers import REPO, run_process, subprocess_env, write_ratings

pytestmark = pytest.mark.slow  # ~a dozen CLI processes


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    root = tmp_path_factory.mktemp("family")
    ratings = write_ratings(root / "ratings.csv")
    for name, extra in (("explicit", []), ("implicit", ["--implicit-threshold", "4"])):
        done = run_process(["prepare", "--input", ratings, *extra, "--out", root / name,
                            "--quiet"])
        assert done.code == 0, done.err
    out = root / "out"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_family.py"), "--quick",
         "--explicit-data", str(root / "explicit"), "--folds", "1",
         "--implicit-data", str(root / "implicit"),
         "--autorec-set", "hidden=16", "--autorec-set", "epochs=40",  # 3 epochs: all clipped
         "--stacked", "8", "--contractive", "10",
         "--dae-set", "hidden_dims=[8]", "--dae-contractive", "10", "--out", str(out)],
        capture_output=True, text=True, env=subprocess_env(), cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out, json.loads((out / "results.json").read_text()), proc.stdout


def run_record(out: Path, model: str, stage: str, name: str) -> dict:
    return json.loads((out / "runs" / model / stage / name / "run.json").read_text())


def test_validation_figures_are_the_engines_own_and_the_options_reach_the_model(bench):
    out, results, _ = bench
    rows = {r["name"]: r for r in results["autorec"]["selection"]["rows"]}
    assert list(rows) == ["plain", "contractive=10.0", "stacked_dims=[8]"]
    for name, row in rows.items():
        # The pooled per-user RMSE of `recsys evaluate --part valid` is early stopping's best
        # validation RMSE: two computations of one figure.
        training = run_record(out, "autorec", "select", name)["training"]
        assert row["valid"] == pytest.approx(training["best_value"], rel=1e-6)
        config = yaml.safe_load((out / "runs" / "autorec" / "select" / name /
                                 "config.yaml").read_text())
        assert config["contractive"] == (10.0 if name.startswith("contractive") else 0.0)
        assert config["stacked_dims"] == ([8] if name.startswith("stacked") else [])
        assert config["epochs"] == 40 and config["hidden"] == 16  # over --quick's 3
    assert rows["contractive=10.0"]["valid"] != rows["plain"]["valid"]
    assert rows["stacked_dims=[8]"]["valid"] != rows["plain"]["valid"]


@pytest.mark.parametrize("model", ["autorec", "multdae"])
def test_each_choice_follows_the_one_se_rule_on_its_reported_gain(bench, model):
    _, results, _ = bench
    selection = results[model]["selection"]
    rows = {r["name"]: r for r in selection["rows"]}
    lower = selection["metric"] == "rmse"
    for option, choice in selection["choices"].items():
        best, top = rows[choice["best"]], rows[choice["best_option"]]
        family = [r for r in rows.values() if option in r["sets"]]
        values = [r["valid"] for r in family]
        assert top["valid"] == (min(values) if lower else max(values)) and option in top["sets"]
        values.append(rows["plain"]["valid"])
        assert best["valid"] == (min(values) if lower else max(values))
        if choice["best"] != "plain":
            better = best["valid"] < rows["plain"]["valid"] if lower else \
                best["valid"] > rows["plain"]["valid"]
            assert (choice["gain"] > 0) == better
            assert choice["kept_plain"] == (not choice["gain"] > choice["se"])
        assert choice["chosen"] == ("plain" if choice["kept_plain"] else choice["best"])
    # Plain and each option's best value are tested, under the default commands (refit).
    tested = results[model]["test"]["configs"]
    assert set(tested) == {"plain"} | {c["best_option"] for c in selection["choices"].values()}


def test_test_figures_come_from_the_refitted_runs(bench):
    out, results, _ = bench
    for row in results["autorec"]["test"]["rows"]:
        for name in results["autorec"]["test"]["configs"]:
            record = run_record(out, "autorec", "test/u1", name)
            assert record["refit"] is not None and not record.get("refit_skipped")
            assert row[name]["test"]["rmse"] == pytest.approx(record["metrics"]["rmse"])
    for row in results["multdae"]["test"]["rows"]:
        for metric, (lo, hi) in row["ci"].items():
            assert lo <= row["test"][metric] <= hi  # the mean lies in its bootstrap interval
        gains = row["paired_vs_plain"]["ndcg@100"]
        if row["name"] == "plain":
            assert gains["gain"] == 0.0
        else:
            plain = next(r for r in results["multdae"]["test"]["rows"] if r["name"] == "plain")
            assert gains["gain"] == pytest.approx(row["test"]["ndcg@100"]
                                                  - plain["test"]["ndcg@100"], abs=1e-9)


def test_the_markdown_lists_every_candidate_and_is_saved(bench):
    out, results, stdout = bench
    assert (out / "family.md").read_text().strip() == stdout.strip()
    for model in ("autorec", "multdae"):
        for row in results[model]["selection"]["rows"]:
            assert f"| {row['name']} |" in stdout
    mean = np.mean([r["plain"]["test"]["rmse"] for r in results["autorec"]["test"]["rows"]])
    assert f"{mean:.4f}" in stdout
