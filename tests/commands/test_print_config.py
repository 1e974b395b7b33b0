"""`recsys train MODEL --print-config`: the resolved config as YAML (defaults, then --config, then
--set, then the run flags), without --data/--out; and --tune without --config on the defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from recsys.cli import main
from recsys.config import load_yaml
from recsys.models.registry import MODELS, get_model_class
from recsys.models.tuning import default_grid

from .test_train import blocks_dataset

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def printed(capsys, *argv: str) -> dict:
    assert main(["train", *argv, "--print-config"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("name", list(MODELS))
def test_the_printed_defaults_are_the_shipped_config(capsys, name):
    shown = printed(capsys, name)
    shipped = load_yaml(CONFIGS / f"{name}.yaml")
    grid = shipped.pop("tune")
    cls = get_model_class(name)
    assert shown.pop("tune") == grid
    assert shown.pop("search") == shipped.pop("search")
    assert shown == cls.Config(**shipped).model_dump()


def test_config_then_set_then_run_flags(tmp_path, capsys):
    config = tmp_path / "vae.yaml"
    config.write_text("lr: 0.01\nepochs: 7\nlatent_dim: 16\ntune: {lr: [0.01, 0.02]}\n")
    shown = printed(capsys, "multvae", "--config", str(config), "--set", "epochs=9",
                    "--set", "seed=1", "--seed", "5", "--device", "cpu", "--metric", "recall@20",
                    "--deterministic")
    assert (shown["lr"], shown["epochs"], shown["latent_dim"]) == (0.01, 9, 16)
    assert (shown["seed"], shown["device"], shown["metric"], shown["deterministic"]) == (
        5, "cpu", "recall@20", True)  # a run flag beats --set, as in training
    assert shown["tune"] == {"lr": [0.01, 0.02]}
    assert shown["batch_size"] == 128 and shown["anneal_epochs"] == 125  # the rest: defaults
    # The model's own keys come first, then the training engine's.
    assert list(shown)[:2] == ["hidden_dims", "latent_dim"]


def test_the_printed_config_reads_back_as_the_same_config(tmp_path, capsys):
    first = printed(capsys, "cfgan", "--set", "g_hidden=64")
    saved = tmp_path / "cfgan.yaml"
    saved.write_text(yaml.safe_dump(first))
    assert printed(capsys, "cfgan", "--config", str(saved)) == first


def test_training_only_flags_are_named_not_silently_dropped(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "ease", "--print-config", "--data", str(tmp_path), "--out", str(out),
                 "--tune", "--seed", "3"]) == 0
    captured = capsys.readouterr()
    assert yaml.safe_load(captured.out)["lambda_"] == 200.0
    notes = captured.err.strip().splitlines()
    assert notes == ["note: --print-config trains nothing; ignoring --data, --out, --tune",
                     "note: ease's config has no key for --seed; not shown"]
    assert not out.exists()


@pytest.mark.parametrize("missing", ["--data", "--out"])
def test_training_without_data_or_out_is_one_line(tmp_path, capsys, missing):
    given = {"--data": ["--data", str(tmp_path)], "--out": ["--out", str(tmp_path / "r")]}
    argv = ["train", "ease", *[a for flag, pair in given.items() if flag != missing
                               for a in pair]]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{missing} " in err and "--print-config" in err


def test_a_bad_key_in_print_config_is_one_line(capsys):
    assert main(["train", "multvae", "--print-config", "--set", "anneal_epoch=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "did you mean 'anneal_epochs'" in err
    assert main(["train", "multvae", "--print-config", "--set", "total_anneal_steps=9",
                 "--set", "anneal_epochs=3"]) == 2
    assert "set only one" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["multdae", "cdae"])
def test_tune_with_the_shipped_config_searches_its_grid(tmp_path, capsys, name):
    """A neural model's --tune runs a study, unless the --config has a tune: grid (the shipped
    configs/MODEL.yaml has the default grid): then that grid, candidate by candidate."""
    # Defaults sized for real catalogues (Mult-DAE's 200 units) need more items than 30.
    blocks_dataset(n_users=40, n_items=240).save(tmp_path / "data")
    out = tmp_path / "run"
    assert main(["train", name, "--data", str(tmp_path / "data"), "--out", str(out), "--tune",
                 "--config", str(CONFIGS / f"{name}.yaml"),
                 "--set", "epochs=1", "--device", "cpu", "--no-track", "--quiet"]) == 0
    tuned = json.loads((out / "run.json").read_text())["tuned"]
    assert tuned["search"] == "grid"
    [(key, values)] = default_grid(name).items()
    assert [c[key] for c in tuned["candidates"]] == values
