"""`recsys runs DIR` lists the run folders `recsys train` and `recsys compare` wrote."""

from __future__ import annotations

import json

from commands.test_train import blocks_dataset
from recsys.cli import main


def test_runs_lists_each_run_with_its_model_data_and_metric(tmp_path, capsys):
    data = tmp_path / "data"
    blocks_dataset().save(data)
    for model in ("pop", "ease"):
        assert main(["train", model, "--data", str(data), "--out", str(tmp_path / "runs" / model),
                     "--no-track", "--quiet"]) == 0
    (tmp_path / "runs" / "notes").mkdir()  # a folder that is no run
    (tmp_path / "runs" / "notes" / "run.json").write_text("{}")
    capsys.readouterr()
    assert main(["runs", str(tmp_path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in rows] == ["ease", "pop"]
    for row in rows:
        metrics = json.loads((tmp_path / "runs" / row["model"] / "metrics.json").read_text())
        assert row["ndcg@100"] == metrics["ndcg@100"]
        assert row["data"] == "blocks" and row["completed"]
    assert main(["runs", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "ease" in table and "pop" in table and "notes" not in table
    assert main(["runs", str(tmp_path / "missing")]) == 2
