"""The README's "Adding a model" walkthrough, run as written: its model file, saved as a module
and given one registry line, trains, tunes, prints its config, evaluates and recommends through
the public commands, and keeps to the layers' import rules."""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

import pandas as pd
import pytest
from commands.test_train import blocks_dataset

from recsys.cli import main
from recsys.models import registry

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_model() -> str:
    section = README.read_text().split("## Adding a model", 1)[1].split("\n## ", 1)[0]
    [code] = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return code


@pytest.fixture
def linear_ae(tmp_path, monkeypatch):
    (tmp_path / "readme_linear_ae.py").write_text(readme_model())
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry.MODELS, "linear-ae", "readme_linear_ae:LinearAE")
    yield
    sys.modules.pop("readme_linear_ae", None)


def test_the_readme_model_imports_only_what_a_model_may():
    imported = {node.module for node in ast.walk(ast.parse(readme_model()))
                if isinstance(node, ast.ImportFrom)}
    ours = {m for m in imported if m.startswith("recsys")}
    assert ours == {"recsys.config", "recsys.models.neural", "recsys.models.nn"}


def test_one_file_and_a_registry_line_give_every_command(linear_ae, tmp_path, capsys):
    data = tmp_path / "data"
    blocks_dataset().save(data)
    run = tmp_path / "run"
    common = ["--no-track", "--set", "epochs=3", "--set", "batch_size=16"]
    assert main(["train", "linear-ae", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "dropout: 0.5" in printed and "search:" in printed
    assert main(["train", "linear-ae", "--data", str(data), "--out", str(run), *common]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 < metrics["ndcg@100"] <= 1.0
    assert main(["evaluate", str(run), "--data", str(data), "--metrics", "ndcg@100",
                 "--json", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["ndcg@100"] == pytest.approx(
        metrics["ndcg@100"])
    assert main(["recommend", str(run), "--data", str(data), "--k", "5",
                 "--out", str(tmp_path / "lists.csv")]) == 0
    lists = pd.read_csv(tmp_path / "lists.csv")
    assert len(lists) == 60 * 5 and set(lists["rank"]) == {1, 2, 3, 4, 5}
    tuned = tmp_path / "tuned"
    assert main(["train", "linear-ae", "--data", str(data), "--out", str(tuned), *common,
                 "--tune", "--trials", "2"]) == 0
    assert "dropout" in (tuned / "tuned.yaml").read_text()
