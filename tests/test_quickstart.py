"""The README's main job, run as a new user would: the `recsys` console script, offline."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

RECSYS = Path(sys.executable).with_name("recsys")


@pytest.mark.slow
def test_quickstart_runs_end_to_end_on_embedded_data(tmp_path):
    out = tmp_path / "qs"
    proc = subprocess.run([str(RECSYS), "quickstart", "--out", str(out), "--models", "pop,ease"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ease = json.loads((out / "runs" / "ease" / "quickstart-metrics.json").read_text())
    pop = json.loads((out / "runs" / "pop" / "quickstart-metrics.json").read_text())
    # EASE must beat popularity by a wide margin on ml-latest-small (0.34 vs 0.20 measured).
    assert 0.25 < ease["ndcg@100"] < 0.45
    assert ease["ndcg@100"] > pop["ndcg@100"] + 0.08
    assert "Top 10 of ease for user" in proc.stdout
    lists = pd.read_csv(out / "top10-ease.csv")
    assert list(lists.columns[:4]) == ["user", "item", "rank", "score"]
    assert len(lists) == 10 * lists["user"].nunique() and lists["user"].nunique() > 600
    ranks = lists.groupby("user")["rank"]
    assert (ranks.min() == 1).all() and (ranks.max() == 10).all() and (ranks.nunique() == 10).all()


def test_quickstart_rejects_unknown_model(tmp_path):
    proc = subprocess.run([str(RECSYS), "quickstart", "--out", str(tmp_path / "q"),
                           "--models", "eas"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "did you mean 'ease'" in proc.stderr
    assert not (tmp_path / "q").exists()
