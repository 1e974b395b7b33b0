"""`evaluate`, `recommend` and `predict` read the run's own prepared data when --data is not
given (run.json records it), and say in one line when that folder is gone."""

from __future__ import annotations

import json
import shutil

from commands.test_train import blocks_dataset
from recsys.cli import main


def test_the_runs_data_is_the_default(tmp_path, capsys):
    data, run = tmp_path / "data", tmp_path / "run"
    blocks_dataset().save(data)
    assert main(["train", "ease", "--data", str(data), "--out", str(run), "--no-track",
                 "--quiet"]) == 0
    trained = json.loads((run / "metrics.json").read_text())["ndcg@100"]
    assert main(["evaluate", str(run), "--metrics", "ndcg@100",
                 "--json", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["ndcg@100"] == trained
    assert main(["recommend", str(run), "--k", "3", "--out", str(tmp_path / "l.csv")]) == 0
    assert (tmp_path / "l.csv").read_text().count("\n") == 1 + 60 * 3
    capsys.readouterr()
    shutil.move(data, tmp_path / "moved")
    assert main(["evaluate", str(run)]) == 2
    line = capsys.readouterr().err.strip()
    assert "is not there any more; pass --data DIR" in line and "\n" not in line
    assert main(["evaluate", str(run), "--data", str(tmp_path / "moved"), "--metrics",
                 "ndcg@100"]) == 0
