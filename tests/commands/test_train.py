"""`recsys train`: run directory, tuning on validation, config merging, run options, tracker hook,
and the one-line errors a user can cause."""

from __future__ import annotations

import json
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
import yaml

from recsys.cli import main
from recsys.commands import train as train_command
from recsys.config import StrictConfig, TrainConfig
from recsys.data.interactions import Dataset, Interactions, Vocabulary
from recsys.data.io import sha256_file
from recsys.models import registry
from recsys.models.base import Recommender
from recsys.models.tuning import default_grid, tune
from recsys.rundir import load_run, read_run
from recsys.tracking.base import Tracker, flatten
from recsys.training.checkpoint import list_checkpoints


def blocks_dataset(n_users: int = 60, n_items: int = 30, n_blocks: int = 3, seed: int = 0,
                   valid: bool = True, test: bool = True) -> Dataset:
    """Users in blocks that like one block of items (plus noise), split per user into
    train / valid (one liked item) / test (two liked items)."""
    rng = np.random.default_rng(seed)
    block = np.arange(n_users) % n_blocks
    liked = (np.arange(n_items)[None, :] * n_blocks // n_items) == block[:, None]
    dense = (liked & (rng.random((n_users, n_items)) < 0.7)) | (rng.random((n_users, n_items))
                                                               < 0.05)
    labels = np.zeros(dense.shape, dtype=np.int8)  # 0 train, 1 valid, 2 test
    for u in range(n_users):  # building a fixture, not scoring: a loop is fine here
        own = rng.permutation(np.flatnonzero(dense[u] & liked[u]))
        labels[u, own[:2]] = 2
        labels[u, own[2:3]] = 1
    users, items = Vocabulary(np.arange(n_users) + 1), Vocabulary(np.arange(n_items) + 101)

    def part(mask: np.ndarray) -> Interactions:
        r, c = np.nonzero(mask)
        return Interactions.from_frame(pd.DataFrame({"user": r, "item": c}), users, items)

    parts = {"train": part(dense & (labels == 0) if valid else dense & (labels != 2))}
    if valid:
        parts["valid"] = part(dense & (labels == 1))
    if test:
        parts["test"] = part(dense & (labels == 2))
    return Dataset(parts, {"implicit": True, "dataset": "blocks"})


class StubConfig(TrainConfig):
    """A neural-style config: it has the run options (device, seed, deterministic, metric)."""


class Stub(Recommender):
    """Popularity behind a TrainConfig, standing in for a neural model."""

    name: ClassVar[str] = "stub"
    Config: ClassVar[type[StrictConfig]] = StubConfig

    def fit(self, train, valid=None, ctx=None):
        self.n_users, self.n_items = train.n_users, train.n_items
        self.counts = torch.from_numpy(np.bincount(train.matrix.indices,
                                                   minlength=train.n_items).astype(np.float32))
        self.seen_ctx = ctx
        return self

    def score(self, users: np.ndarray, history: sp.csr_matrix) -> torch.Tensor:
        return self.counts.expand(len(users), -1).clone()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"counts": self.counts}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.counts = state["counts"]


class ExplicitStub(Stub):
    name: ClassVar[str] = "xstub"
    explicit: ClassVar[bool] = True


@pytest.fixture
def data_dir(tmp_path):
    blocks_dataset().save(tmp_path / "data")
    return tmp_path / "data"


@pytest.fixture
def stubs(monkeypatch):
    monkeypatch.setitem(registry.MODELS, "stub", f"{__name__}:Stub")
    monkeypatch.setitem(registry.MODELS, "xstub", f"{__name__}:ExplicitStub")


def train(data_dir, out, *extra: str) -> int:
    """`recsys train MODEL --data DIR --out OUT ...` without MLflow (tests/tracking covers it)."""
    return main(["train", *extra[:1], "--data", str(data_dir), "--out", str(out), *extra[1:],
                 "--no-track"])


# -- the run ------------------------------------------------------------------------------------


def test_tuned_ease_run_is_saved_evaluated_and_reports_its_choice(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(data_dir, out, "ease", "--tune", "--set", "device=cpu") == 0
    printed = capsys.readouterr()
    info = read_run(out)
    tuned = info["tuned"]
    assert tuned["metric"] == "ndcg@100" and tuned["part"] == "valid"
    assert [c["lambda_"] for c in tuned["candidates"]] == default_grid("ease")["lambda_"]
    # The choice is the best validation candidate, the same as tune() on the valid part.
    dataset = Dataset.load(data_dir)
    from recsys.models.baselines import EASE

    direct = tune(EASE(device="cpu"), dataset.train, dataset.eval_split("valid"))
    assert tuned["params"] == direct.best_params
    assert f"tuned: lambda_={direct.best_params['lambda_']}" in printed.out
    assert "[8/8] lambda_=2000.0" in printed.err  # one progress line per candidate
    # The final model is fitted with the chosen value and saved; the run reloads.
    model, _ = load_run(out)
    assert model.get_params()["lambda_"] == direct.best_params["lambda_"]
    assert yaml.safe_load((out / "config.yaml").read_text())["lambda_"] == model.config.lambda_
    # Test metrics: metrics.json, run.json and the printed table agree.
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == info["metrics"]
    assert {"recall@20", "ndcg@100", "coverage@20"} <= set(metrics)
    assert 0.0 < metrics["ndcg@100"] <= 1.0
    assert f"{metrics['ndcg@100']:.4f}" in printed.out
    assert info["eval_test"]["users"] == 60
    assert info["data"] == str(data_dir.resolve())
    assert info["data_digest"] == sha256_file(data_dir / "metadata.json")
    assert info["fit_seconds"] >= 0 and info["model"] == "ease"


def test_config_file_and_set_merge_and_the_tune_section_replaces_the_grid(data_dir, tmp_path):
    config = tmp_path / "ease.yaml"
    config.write_text("lambda_: 50\ndevice: cpu\ntune:\n  lambda_: [5, 7]\n")
    assert train(data_dir, tmp_path / "a", "ease", "--config", str(config),
                 "--set", "lambda_=9", "--metrics", "ndcg@10") == 0
    assert yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())["lambda_"] == 9.0
    assert read_run(tmp_path / "a")["tuned"] is None
    assert set(json.loads((tmp_path / "a" / "metrics.json").read_text())) == {"ndcg@10"}
    assert train(data_dir, tmp_path / "b", "ease", "--config", str(config), "--tune",
                 "--metric", "recall@5", "--quiet") == 0
    tuned = read_run(tmp_path / "b")["tuned"]
    # The config's own value is a candidate too (first), for the one-SE rule.
    assert [c["lambda_"] for c in tuned["candidates"]] == [50, 5, 7]
    assert [c["default"] for c in tuned["candidates"]] == [True, False, False]
    assert tuned["metric"] == "recall@5" and "recall@5" in tuned["candidates"][0]


def test_run_options_land_in_configs_that_have_them(data_dir, tmp_path, stubs):
    assert train(data_dir, tmp_path / "s", "stub", "--seed", "7", "--device", "cpu",
                 "--deterministic", "--metric", "recall@10", "--set", "epochs=3", "--quiet") == 0
    config = yaml.safe_load((tmp_path / "s" / "config.yaml").read_text())
    assert (config["seed"], config["device"], config["deterministic"], config["metric"],
            config["epochs"]) == (7, "cpu", True, "recall@10", 3)
    # Unset flags keep the config's values; models without such keys are not touched.
    assert train(data_dir, tmp_path / "e", "ease", "--seed", "7", "--device", "cpu") == 0
    assert yaml.safe_load((tmp_path / "e" / "config.yaml").read_text()) == {
        "lambda_": 200.0, "device": "cpu"}


def test_fit_gets_the_context_and_the_validation_part(data_dir, tmp_path, stubs, monkeypatch):
    seen: dict[str, Any] = {}
    original = Stub.fit

    def spy(self, train, valid=None, ctx=None):
        seen.update(valid=valid, ctx=ctx)
        return original(self, train, valid, ctx)

    monkeypatch.setattr(Stub, "fit", spy)
    # --no-refit: the model is fitted on train with valid (test_refit.py: the refit's fit)
    assert train(data_dir, tmp_path / "r", "stub", "--no-refit", "--quiet") == 0
    ctx = seen["ctx"]
    assert ctx.run_dir == tmp_path / "r" and ctx.quiet and not ctx.resume
    assert ctx.data_meta["dataset"] == "blocks"
    expected = Dataset.load(data_dir).eval_split("valid")
    assert np.array_equal(seen["valid"].users, expected.users)
    assert (seen["valid"].target != expected.target).nnz == 0
    assert train(data_dir, tmp_path / "r", "stub", "--resume", "--quiet") == 0
    assert seen["ctx"].resume


class RecordingTracker(Tracker):
    def __init__(self) -> None:
        self.params: dict[str, Any] = {}
        self.metrics: list[dict[str, float]] = []
        self.evaluations: dict[str, dict[str, float]] = {}
        self.status: str | None = None

    def log_params(self, params):
        self.params.update(params)

    def log_metrics(self, metrics, step=None):
        self.metrics.append(dict(metrics))

    def log_evaluation(self, metrics, part="test"):
        self.evaluations[part] = dict(metrics)

    def close(self, status="FINISHED"):
        self.status = status


def test_the_tracker_hook_gets_the_config_and_the_final_metrics(data_dir, tmp_path, monkeypatch):
    tracker = RecordingTracker()
    monkeypatch.setattr(train_command, "make_tracker", lambda *a, **k: tracker)
    assert train(data_dir, tmp_path / "r", "itemknn", "--set", "k=5", "--quiet") == 0
    config = flatten({"model": "itemknn", "k": 5, "shrink": 10.0, "device": "auto"})
    assert {k: tracker.params[k] for k in config} == config
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    # The final metrics arrive as the test part's evaluation (the tracker names and links them).
    assert tracker.evaluations == {"test": metrics}
    assert tracker.status == "FINISHED"
    failing = RecordingTracker()
    monkeypatch.setattr(train_command, "make_tracker", lambda *a, **k: failing)
    assert train(data_dir, tmp_path / "r", "itemknn", "--quiet") == 2  # the run exists
    broken = RecordingTracker()
    monkeypatch.setattr(train_command, "make_tracker", lambda *a, **k: broken)

    def explode(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr("recsys.models.baselines.ItemKNN.fit", explode)
    with pytest.raises(RuntimeError):
        train(data_dir, tmp_path / "r2", "itemknn", "--quiet")
    assert broken.status == "FAILED"


def test_data_without_a_test_part_is_trained_but_not_evaluated(tmp_path, capsys):
    blocks_dataset(test=False).save(tmp_path / "d")
    assert train(tmp_path / "d", tmp_path / "r", "pop") == 0
    assert not (tmp_path / "r" / "metrics.json").exists()
    assert "metrics" not in read_run(tmp_path / "r")
    assert "run written to" in capsys.readouterr().out


def test_an_existing_run_needs_overwrite_or_resume(data_dir, tmp_path, capsys):
    out = tmp_path / "r"
    assert train(data_dir, out, "pop", "--quiet") == 0
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert train(data_dir, out, "ease", "--quiet") == 2
    assert "already holds a run" in capsys.readouterr().err
    assert read_run(out)["model"] == "pop"
    assert train(data_dir, out, "ease", "--overwrite", "--quiet") == 0
    assert read_run(out)["model"] == "ease"
    assert (out / "notes.txt").read_text() == "mine"  # only what train writes is replaced


def test_resume_of_a_finished_run_has_nothing_to_do_unless_epochs_grow(data_dir, tmp_path,
                                                                          capsys):
    out = tmp_path / "r"
    dae = ["multdae", "--set", "hidden_dims=[8]", "--set", "patience=null", "--quiet"]
    assert train(data_dir, out, *dae, "--set", "epochs=2") == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert train(data_dir, out, *dae, "--set", "epochs=2", "--resume") == 0
    err = capsys.readouterr().err
    assert err.startswith(f"note: --resume: {out} holds a finished run (2 of 2 epochs trained)")
    assert {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    # more epochs: the resume trains on from epoch 2
    assert train(data_dir, out, *dae, "--set", "epochs=3", "--resume") == 0
    assert list_checkpoints(out / "checkpoints")[-1][0] == 3


# -- errors a user can cause --------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "message"), [
    (["eas"], "unknown model 'eas' (did you mean 'ease'?)"),
    (["ease", "--set", "lamda=3"], "unknown key 'lamda' (did you mean 'lambda_'?)"),
    (["ease", "--set", "lambda_=-1"], "invalid value for 'lambda_'"),
    (["ease", "--set", "nokeyvalue"], "expected key=value"),
    (["ease", "--metric", "ndgc@10", "--tune"], "unknown metric 'ndgc@10' (did you mean "
                                                "'ndcg@10'?)"),
    (["ease", "--metrics", "recall"], "needs a cut-off"),
    (["xstub"], "model 'xstub' predicts ratings but"),
])
def test_bad_input_is_one_line_and_exit_2(data_dir, tmp_path, capsys, stubs, argv, message):
    assert train(data_dir, tmp_path / "r", *argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "r" / "run.json").exists()


def test_config_file_errors_name_the_file(data_dir, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lambda_: 10\nshrinkk: 3\n")
    assert train(data_dir, tmp_path / "r", "ease", "--config", str(bad)) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "unknown key 'shrinkk'" in err
    grid = tmp_path / "grid.yaml"
    grid.write_text("tune:\n  lamda: [1, 2]\n")
    assert train(data_dir, tmp_path / "r", "ease", "--config", str(grid), "--tune") == 2
    err = capsys.readouterr().err
    assert f"{grid}: tune: unknown key 'lamda' (did you mean 'lambda_'?)" in err
    assert train(data_dir, tmp_path / "r", "ease", "--config", str(tmp_path / "none.yaml")) == 2
    assert "config file not found" in capsys.readouterr().err


def test_tune_without_a_validation_part_and_data_that_is_not_prepared(tmp_path, capsys):
    blocks_dataset(valid=False).save(tmp_path / "d")
    assert train(tmp_path / "d", tmp_path / "r", "ease", "--tune") == 2
    assert "--tune needs a validation part" in capsys.readouterr().err
    assert train(tmp_path / "nowhere", tmp_path / "r", "ease") == 2
    assert "not a prepared dataset" in capsys.readouterr().err


# -- real data ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.realdata
def test_tuned_ease_on_ml100k_reaches_the_peer_level(mirror, tmp_path, capsys):
    data = tmp_path / "ml100k"
    assert main(["prepare", "ml-100k", "--split", "random", "--implicit-threshold", "4",
                 "--min-user-interactions", "5", "--test-fraction", "0.2", "--valid-fraction",
                 "0.1", "--seed", "0", "--mirror", str(mirror), "--cache", str(tmp_path / "c"),
                 "--quiet", "--out", str(data)]) == 0
    for model in ("pop", "ease"):
        assert main(["train", model, "--data", str(data), "--out", str(tmp_path / model),
                     "--tune", "--quiet", "--metrics", "recall@20,ndcg@100", "--no-track"]) == 0
    pop = read_run(tmp_path / "pop")["metrics"]
    ease = read_run(tmp_path / "ease")["metrics"]
    # PROTOCOLS.md peers on this protocol: Popularity 0.268, EASE 0.449 (NDCG@100).
    assert 0.22 < pop["ndcg@100"] < 0.31
    assert 0.41 < ease["ndcg@100"] < 0.48
    assert ease["recall@20"] > pop["recall@20"] + 0.1


@pytest.mark.parametrize(("flags", "named"), [
    (["--seed", "3"], "--seed"),
    (["--metric", "recall@5"], "--metric"),
    (["--deterministic", "--seed", "1"], "--seed, --deterministic"),
])
def test_run_flags_a_baseline_cannot_use_are_named(data_dir, tmp_path, capsys, flags, named):
    assert train(data_dir, tmp_path / "run", "ease", *flags) == 0
    assert f"note: {named} changes nothing for 'ease'" in capsys.readouterr().err


def test_run_flags_a_neural_model_uses_are_not_named(data_dir, tmp_path, capsys):
    assert train(data_dir, tmp_path / "run", "multdae", "--set", "epochs=1", "--set",
                 "hidden_dims=[8]", "--seed", "3", "--metric", "recall@5") == 0
    assert "changes nothing" not in capsys.readouterr().err
