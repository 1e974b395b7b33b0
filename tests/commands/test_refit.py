"""The refit on train + valid after validation has chosen (recsys.training.refit): what it trains
on, for how long, what it records, --no-refit, no validation part, strong generalisation,
resuming a run interrupted in its refit, the tracker's keys, and `recsys compare`."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from commands.test_train import RecordingTracker, blocks_dataset, train
from recsys.cli import main
from recsys.commands import train as train_command
from recsys.data.interactions import Dataset, Interactions, Vocabulary
from recsys.models.base import FitContext
from recsys.models.baselines import EASE
from recsys.models.registry import create_model
from recsys.rundir import read_run
from recsys.training import trainer as trainer_module
from recsys.training.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    refit_checkpoint_dir,
)
from recsys.training.refit import refit_data, refit_parts

# A small Mult-DAE: no early stopping, so the epoch count of the first fit is known; the best
# epoch is still the one validation picked.
DAE = ["multdae", "--set", "hidden_dims=[8]", "--set", "batch_size=16", "--set", "patience=null",
       "--set", "epochs=4", "--set", "checkpoint_every=1", "--seed", "0", "--device", "cpu"]


@pytest.fixture
def data_dir(tmp_path):
    blocks_dataset().save(tmp_path / "data")
    return tmp_path / "data"


def weights(run) -> dict[str, torch.Tensor]:
    return torch.load(run / "model" / "weights.pt", weights_only=True)


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def close(saved: dict[str, torch.Tensor], model: Any) -> bool:
    state = model.state_dict()
    return saved.keys() == state.keys() and all(
        torch.allclose(saved[k].float(), state[k].cpu().float(), atol=1e-6) for k in saved)


def saved_config(run) -> dict[str, Any]:
    return json.loads((run / "model" / "model.json").read_text())["config"]


def without_seconds(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def first_fit_history(run) -> list[dict[str, float]]:
    return load_checkpoint(latest_checkpoint(run / "checkpoints"))["history"]


def test_a_neural_model_is_refitted_for_the_best_epoch_on_train_plus_valid(data_dir, tmp_path,
                                                                           capsys):
    out = tmp_path / "r"
    assert train(data_dir, out, *DAE) == 0
    printed = capsys.readouterr().out
    history = first_fit_history(out)
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]  # the first fit, as before
    best = max(history, key=lambda r: r["valid_ndcg@100"])["epoch"]
    info = read_run(out)
    assert info["refit"]["epochs"] == best and info["refit"]["parts"] == ["train", "valid"]
    assert 0 < info["refit"]["seconds"] <= info["fit_seconds"]
    assert "refit_skipped" not in info
    assert f"refit on train+valid: {best} epoch" in printed
    # The refit's checkpoints have their own folder; the first fit's stay where they were.
    assert [e for e, _ in list_checkpoints(refit_checkpoint_dir(out, best))][-1] == best
    assert list_checkpoints(out / "checkpoints")[-1][0] == 4
    # The saved model is the one a plain fit of `best` epochs on train + valid gives.
    dataset = Dataset.load(data_dir)
    config = saved_config(out)
    assert config["epochs"] == 4  # the user's config is recorded, the refit's length in run.json
    direct = create_model("multdae", **{**config, "epochs": best})
    direct.fit(refit_data(dataset), None, FitContext())
    assert same(weights(out), {k: v.cpu() for k, v in direct.state_dict().items()})
    # ... and not the model of train alone that --no-refit keeps.
    kept = tmp_path / "kept"
    assert train(data_dir, kept, *DAE, "--no-refit") == 0
    assert "refit on" not in capsys.readouterr().out
    info = read_run(kept)
    assert info["refit"] is None and info["refit_skipped"] == "--no-refit"
    assert without_seconds(first_fit_history(kept)) == without_seconds(history)
    assert not same(weights(kept), weights(out))


def test_a_baseline_is_fitted_once_on_train_plus_valid(data_dir, tmp_path, monkeypatch):
    fits: list[tuple[int, Any]] = []
    original = EASE.fit

    def spy(self, train, valid=None, ctx=None):
        fits.append((train.nnz, valid))
        return original(self, train, valid, ctx)

    monkeypatch.setattr(EASE, "fit", spy)
    dataset = Dataset.load(data_dir)
    both = refit_data(dataset)
    assert both.nnz == dataset.train.nnz + dataset.parts["valid"].nnz
    assert train(data_dir, tmp_path / "r", "ease", "--set", "device=cpu", "--quiet") == 0
    assert fits == [(both.nnz, None)]  # no fit on train alone to throw away
    info = read_run(tmp_path / "r")
    assert info["refit"]["epochs"] is None and info["refit"]["parts"] == ["train", "valid"]
    assert close(weights(tmp_path / "r"), EASE(**saved_config(tmp_path / "r")).fit(both))

    fits.clear()
    assert train(data_dir, tmp_path / "k", "ease", "--set", "device=cpu", "--no-refit",
                 "--quiet") == 0
    assert [n for n, _ in fits] == [dataset.train.nnz] and fits[0][1] is not None
    kept = EASE(**saved_config(tmp_path / "k")).fit(dataset.train)
    assert close(weights(tmp_path / "k"), kept)
    assert not close(weights(tmp_path / "r"), kept)
    assert read_run(tmp_path / "k")["refit_skipped"] == "--no-refit"


def test_without_a_validation_part_there_is_no_refit_and_one_line_says_so(tmp_path, capsys):
    blocks_dataset(valid=False).save(tmp_path / "d")
    assert train(tmp_path / "d", tmp_path / "r", *DAE, "--set", "epochs=3", "--quiet") == 0
    assert capsys.readouterr().err == ("note: no validation part: early stopping is off, the "
                                       "model of the last epoch (3) is kept\n")
    info = read_run(tmp_path / "r")
    assert info["refit"] is None and info["refit_skipped"] == "no validation part"
    assert not list((tmp_path / "r" / "checkpoints").glob("refit-*"))
    # A baseline has no early stopping to miss: nothing to say.
    assert train(tmp_path / "d", tmp_path / "p", "pop", "--quiet") == 0
    assert capsys.readouterr().err == ""
    assert read_run(tmp_path / "p")["refit_skipped"] == "no validation part"


def strong_dataset() -> Dataset:
    """Users 0-5 train; 6-7 validation users (valid_history + valid); 8-9 test users."""
    users, items = Vocabulary(np.arange(10)), Vocabulary(np.arange(6))

    def part(pairs: list[tuple[int, int]]) -> Interactions:
        u, i = zip(*pairs, strict=True)
        return Interactions.from_frame(pd.DataFrame({"user": u, "item": i}), users, items)

    train_pairs = [(u, i) for u in range(6) for i in range(6) if (u + i) % 2 == 0]
    return Dataset({"train": part(train_pairs),
                    "valid_history": part([(6, 0), (6, 1), (7, 2), (7, 3)]),
                    "valid": part([(6, 2), (7, 4)]),
                    "test_history": part([(8, 0), (8, 1), (9, 2)]),
                    "test": part([(8, 2), (9, 3)])}, {"implicit": True})


def test_strong_generalisation_refits_on_the_validation_users_but_never_the_test_users(tmp_path):
    dataset = strong_dataset()
    both = refit_data(dataset)
    assert refit_parts(dataset) == ["train", "valid_history", "valid"]
    expected = (dataset.train.matrix + dataset.parts["valid_history"].matrix
                + dataset.parts["valid"].matrix)
    assert (both.matrix != expected).nnz == 0
    assert list(both.active_users()) == list(range(8))  # validation users are training rows now
    assert both.matrix[8:].nnz == 0  # test users' fold-in never trains
    dataset.save(tmp_path / "d")
    assert train(tmp_path / "d", tmp_path / "r", "pop", "--quiet") == 0
    assert read_run(tmp_path / "r")["refit"]["parts"] == ["train", "valid_history", "valid"]


class Interrupt:
    """Ctrl-C right after the refit's checkpoint of epoch ``at`` is written."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.original = trainer_module.save_checkpoint

    def __call__(self, directory, payload, epoch, keep=2):
        path = self.original(directory, payload, epoch, keep)
        if str(directory.name).startswith("refit-") and epoch == self.at:
            raise KeyboardInterrupt
        return path


def trained_epochs(monkeypatch) -> list[tuple[bool, int]]:
    """(refit?, epoch) of every epoch trained from now on."""
    seen: list[tuple[bool, int]] = []
    original = trainer_module.Trainer._train_epoch

    def spy(self):
        seen.append((self.refit, self.epoch))
        return original(self)

    monkeypatch.setattr(trainer_module.Trainer, "_train_epoch", spy)
    return seen


# Validated only at epoch 4, the last: the best epoch, and so the refit's length, is 4.
FOUR = [*DAE, "--set", "eval_every=4", "--quiet"]


def test_ctrl_c_during_the_refit_then_resume_finishes_the_refit_only(data_dir, tmp_path,
                                                                     monkeypatch):
    reference = tmp_path / "reference"
    assert train(data_dir, reference, *FOUR) == 0
    assert read_run(reference)["refit"]["epochs"] == 4

    out = tmp_path / "r"
    with monkeypatch.context() as m:
        m.setattr(trainer_module, "save_checkpoint", Interrupt(at=2))
        assert train(data_dir, out, *FOUR) == 130
    assert not (out / "run.json").exists() and not (out / "metrics.json").exists()
    assert [e for e, _ in list_checkpoints(refit_checkpoint_dir(out, 4))] == [1, 2]

    seen = trained_epochs(monkeypatch)
    assert train(data_dir, out, *FOUR, "--resume") == 0
    assert seen == [(True, 3), (True, 4)]  # the first fit is restored, not trained again
    assert same(weights(out), weights(reference))
    assert (out / "metrics.json").read_bytes() == (reference / "metrics.json").read_bytes()


def test_a_resume_finishes_what_is_missing_and_nothing_else(data_dir, tmp_path, monkeypatch,
                                                            capsys):
    out = tmp_path / "r"
    assert train(data_dir, out, *FOUR) == 0
    metrics = (out / "metrics.json").read_bytes()
    seen = trained_epochs(monkeypatch)
    capsys.readouterr()
    assert train(data_dir, out, *FOUR, "--resume") == 0
    assert "holds a finished run" in capsys.readouterr().err and seen == []

    # Killed after the model was saved, before its test metrics: evaluated again, no training.
    (out / "metrics.json").unlink()
    record = read_run(out)
    del record["metrics"]
    (out / "run.json").write_text(json.dumps(record))
    assert train(data_dir, out, *FOUR, "--resume") == 0
    assert "finished" not in capsys.readouterr().err
    assert seen == [] and (out / "metrics.json").read_bytes() == metrics

    # --no-refit on resume: the model of train alone, restored from the first fit's checkpoint.
    assert train(data_dir, out, *FOUR, "--resume", "--no-refit") == 0
    assert seen == [] and read_run(out)["refit"] is None
    kept = tmp_path / "kept"
    assert train(data_dir, kept, *FOUR, "--no-refit") == 0
    assert same(weights(out), weights(kept))
    # ... and back: the refit is done again (from its checkpoints: nothing to train).
    seen.clear()
    assert train(data_dir, out, *FOUR, "--resume") == 0
    assert seen == [] and read_run(out)["refit"]["epochs"] == 4
    assert (out / "metrics.json").read_bytes() == metrics


def test_a_resume_with_more_epochs_refits_anew(data_dir, tmp_path,
                                                                         monkeypatch):
    out = tmp_path / "r"
    assert train(data_dir, out, *FOUR) == 0
    assert refit_checkpoint_dir(out, 4).is_dir()
    seen = trained_epochs(monkeypatch)
    # Validated at 4 and 8 (epochs grew): the refit of 4 epochs is stale unless 4 stays best.
    assert train(data_dir, out, *FOUR, "--set", "epochs=8", "--resume") == 0
    best = read_run(out)["refit"]["epochs"]
    assert [e for r, e in seen if not r] == [5, 6, 7, 8]
    refits = sorted(p.name for p in (out / "checkpoints").glob("refit-*"))
    assert refits == [f"refit-{best:04d}"]
    # A refit checkpointed under another `epochs` is not continued (a cosine schedule spans
    # `epochs`): the refit is trained again, from its first epoch.
    assert [e for r, e in seen if r] == list(range(1, best + 1))


class StepTracker(RecordingTracker):
    def __init__(self) -> None:
        super().__init__()
        self.steps: dict[str, list[int]] = {}
        self.param_calls = 0

    def log_params(self, params):
        self.param_calls += 1
        super().log_params(params)

    def log_metrics(self, metrics, step=None):
        super().log_metrics(metrics, step)
        for key in metrics:
            if step is not None:
                self.steps.setdefault(key, []).append(step)


def test_the_tracker_gets_the_refit_under_its_own_keys(data_dir, tmp_path, monkeypatch):
    trackers = []

    def make(*args, **kwargs):
        trackers.append(StepTracker())
        return trackers[-1]

    monkeypatch.setattr(train_command, "make_tracker", make)
    assert train(data_dir, tmp_path / "r", *FOUR) == 0
    assert train(data_dir, tmp_path / "k", *FOUR, "--no-refit") == 0
    refit, kept = trackers
    loss = [k for k in refit.steps if k.endswith("/loss")]
    assert sorted(loss) == ["refit/multdae/loss", "train/multdae/loss"]
    assert refit.steps["train/multdae/loss"] == [1, 2, 3, 4]
    assert refit.steps["valid/ndcg_at_100"] == [4]
    assert refit.steps["refit/multdae/loss"] == [1, 2, 3, 4]
    assert not [k for k in refit.steps if k.startswith("refit/valid")]
    assert {k: v for k, v in refit.steps.items() if not k.startswith("refit/")} == kept.steps
    assert refit.param_calls == kept.param_calls  # the refit logs no params of its own
    logged = {k: v for m in refit.metrics for k, v in m.items()}
    assert logged["refit/epochs"] == 4


def test_compare_refits_its_models_too(data_dir, tmp_path):
    config = tmp_path / "cmp.yaml"
    config.write_text(f"""
data: {data_dir}
out: {tmp_path / 'out'}
metrics: [ndcg@10]
primary: ndcg@10
bootstrap: 100
device: cpu
models:
  - model: pop
  - model: multdae
    params: {{hidden_dims: [8], batch_size: 16, patience: null, epochs: 4, eval_every: 4}}
""")
    assert main(["compare", str(config), "--no-track", "--quiet"]) == 0
    assert read_run(tmp_path / "out" / "pop")["refit"]["parts"] == ["train", "valid"]
    assert read_run(tmp_path / "out" / "multdae")["refit"]["epochs"] == 4
