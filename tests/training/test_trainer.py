"""The training engine: resume equality, NaN guard, early stopping, determinism, checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recsys.errors import RecsysError
from recsys.models.base import FitContext
from recsys.tracking.base import Tracker
from recsys.tracking.callbacks import TrackerCallbacks
from recsys.training import (
    CheckpointError,
    DeviceRows,
    RowSampler,
    TrainingDiverged,
    fit,
    latest_checkpoint,
    load_checkpoint,
    lower_is_better,
)
from recsys.training.checkpoint import list_checkpoints, save_checkpoint

from .neural_toy import ToyAE, ToyGAN, holdout_loss, toy_data

# Small batches so an epoch has several steps; a step schedule so the LR state matters on resume.
BASE = dict(epochs=6, batch_size=16, lr=0.05, metric="loss", patience=10, seed=3,
            lr_schedule="step", lr_step_size=2, lr_gamma=0.5)


class Recording(Tracker):
    def __init__(self, stop_after: int | None = None) -> None:
        self.params: list[dict] = []
        self.metrics: list[tuple[dict, int | None]] = []
        self.stop_after = stop_after

    def log_params(self, params):
        self.params.append(params)

    def log_metrics(self, metrics, step=None):
        self.metrics.append((dict(metrics), step))
        if self.stop_after is not None and step == self.stop_after:
            raise KeyboardInterrupt  # what a kill right after the checkpoint looks like


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.network.state_dict().items()}


def same_weights(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def without_time(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def test_resume_reaches_the_same_weights_and_metrics(tmp_path):
    train, valid = toy_data()
    full = ToyAE(**BASE)
    fit(full, train, valid, FitContext(run_dir=tmp_path / "a"), validate=holdout_loss)

    tracker = Recording(stop_after=3)
    interrupted = ToyAE(**BASE)
    with pytest.raises(KeyboardInterrupt):
        fit(interrupted, train, valid,
            FitContext(run_dir=tmp_path / "b", callbacks=TrackerCallbacks(tracker)),
            validate=holdout_loss)
    assert [e for e, _ in list_checkpoints(tmp_path / "b" / "checkpoints")][-1] == 3

    torch.manual_seed(12345)  # the resumed process starts from a different RNG state
    np.random.seed(999)
    resumed = ToyAE(**BASE)
    result = fit(resumed, train, valid, FitContext(run_dir=tmp_path / "b", resume=True),
                 validate=holdout_loss)
    assert result.resumed_from == 3 and result.epochs_run == 6
    assert same_weights(weights(full), weights(resumed))
    assert without_time(full.history_) == without_time(resumed.history_)
    assert full.train_result_.best_epoch == result.best_epoch


def test_resume_with_more_epochs_continues_training(tmp_path):
    train, valid = toy_data()
    cfg = {**BASE, "lr_schedule": "none"}
    full = ToyAE(**cfg)
    fit(full, train, valid, FitContext(run_dir=tmp_path / "a"), validate=holdout_loss)
    part = ToyAE(**{**cfg, "epochs": 2})
    fit(part, train, valid, FitContext(run_dir=tmp_path / "b"), validate=holdout_loss)
    resumed = ToyAE(**cfg)
    fit(resumed, train, valid, FitContext(run_dir=tmp_path / "b", resume=True),
        validate=holdout_loss)
    assert same_weights(weights(full), weights(resumed))


def test_resume_refuses_a_changed_config(tmp_path):
    train, valid = toy_data()
    fit(ToyAE(**{**BASE, "epochs": 2}), train, valid, FitContext(run_dir=tmp_path),
        validate=holdout_loss)
    with pytest.raises(RecsysError, match="config key 'lr'"):
        fit(ToyAE(**{**BASE, "lr": 0.01}), train, valid,
            FitContext(run_dir=tmp_path, resume=True), validate=holdout_loss)


def test_same_seed_same_weights_other_seed_differs():
    train, valid = toy_data()
    runs = []
    for seed in (3, 3, 4):
        model = ToyAE(**{**BASE, "seed": seed, "deterministic": True, "epochs": 3})
        fit(model, train, valid, validate=holdout_loss)
        runs.append(weights(model))
    assert same_weights(runs[0], runs[1])
    assert not same_weights(runs[0], runs[2])


def test_nan_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path):
    train, valid = toy_data()  # 40 users, batches of 16 -> 3 steps per epoch
    model = ToyAE(**{**BASE, "nan_at_step": 7})  # first step of epoch 3
    with pytest.raises(TrainingDiverged) as err:
        fit(model, train, valid, FitContext(run_dir=tmp_path), validate=holdout_loss)
    message = str(err.value)
    assert "\n" not in message and "loss is nan" in message and "epoch 3, step 7" in message
    last = latest_checkpoint(tmp_path / "checkpoints")
    assert last is not None and last.name == "epoch-0002.pt" and str(last) in message
    payload = load_checkpoint(last)
    assert payload["epoch"] == 2
    assert all(torch.isfinite(v).all() for v in payload["network"].values())


def test_early_stopping_restores_the_best_epoch():
    train, valid = toy_data()
    values = iter([0.9, 0.5, 0.7, 0.8, 0.6, 0.1])  # best at epoch 2, patience 3 -> stop at 5
    seen: dict[int, dict[str, torch.Tensor]] = {}

    def scripted(model, _valid):
        seen[len(seen) + 1] = weights(model)
        return next(values)

    model = ToyAE(**{**BASE, "epochs": 10, "patience": 3})
    result = fit(model, train, valid, validate=scripted)
    assert result.stopped_early and result.epochs_run == 5
    assert result.best_epoch == 2 and result.best_value == 0.5
    assert same_weights(weights(model), seen[2])
    assert not same_weights(weights(model), seen[5])
    assert [r["valid_loss"] for r in model.history_] == [0.9, 0.5, 0.7, 0.8, 0.6]


def test_higher_is_better_metrics_select_the_maximum():
    train, valid = toy_data()
    values = iter([0.1, 0.3, 0.2])
    model = ToyAE(**{**BASE, "epochs": 3, "metric": "ndcg@10"})
    result = fit(model, train, valid, validate=lambda m, v: next(values))
    assert result.best_epoch == 2
    assert lower_is_better("rmse") and lower_is_better("mae")
    assert not lower_is_better("ndcg@100") and not lower_is_better("recall@20")


def test_tracker_gets_params_once_and_one_record_per_epoch():
    train, valid = toy_data()
    tracker = Recording()
    model = ToyAE(**{**BASE, "epochs": 3, "eval_every": 2})
    fit(model, train, valid, FitContext(callbacks=TrackerCallbacks(tracker)), validate=holdout_loss)
    assert len(tracker.params) == 1 and tracker.params[0]["lr"] == BASE["lr"]
    assert [step for _, step in tracker.metrics] == [1, 2, 3]
    first, second, third = (m for m, _ in tracker.metrics)
    # Tracked names (`recsys.tracking.records.epoch_metrics`): the model's loss parts under its
    # name, the engine's figures under train/, validation under valid/.
    assert {"train/toy/loss", "train/toy/half", "train/lr", "train/seconds"} <= first.keys()
    assert not any("epoch" in k for k in first)  # the step is the epoch: no "epoch" chart
    assert "valid/loss" not in first and "valid/loss" in second and "valid/loss" in third
    assert first["train/toy/half"] == pytest.approx(first["train/toy/loss"] / 2, rel=1e-5)
    # the step schedule halves the lr every 2 epochs
    assert [m["train/lr"] for m, _ in tracker.metrics] == pytest.approx([0.05, 0.05, 0.025])
    assert [m["loss"] for m in model.history_] == [m["train/toy/loss"] for m, _ in tracker.metrics]


def test_manual_optimisation_checkpoints_every_optimiser_and_resumes(tmp_path):
    train, valid = toy_data()
    cfg = dict(epochs=4, batch_size=16, lr=0.01, seed=1, metric="loss")
    full = ToyGAN(**cfg)
    fit(full, train, valid, FitContext(run_dir=tmp_path / "a"), validate=holdout_loss)
    assert {"g", "d", "loss"} <= full.history_[0].keys()
    with pytest.raises(KeyboardInterrupt):
        fit(ToyGAN(**cfg), train, valid,
            FitContext(run_dir=tmp_path / "b", callbacks=TrackerCallbacks(Recording(stop_after=2))),
            validate=holdout_loss)
    payload = load_checkpoint(latest_checkpoint(tmp_path / "b" / "checkpoints"))
    assert len(payload["optimizers"]) == 2
    resumed = ToyGAN(**cfg)
    fit(resumed, train, valid, FitContext(run_dir=tmp_path / "b", resume=True),
        validate=holdout_loss)
    assert same_weights(weights(full), weights(resumed))


# -- checkpoints ----------------------------------------------------------------------------------

def test_corrupted_checkpoint_is_refused(tmp_path):
    train, valid = toy_data()
    fit(ToyAE(**{**BASE, "epochs": 2}), train, valid, FitContext(run_dir=tmp_path),
        validate=holdout_loss)
    path = latest_checkpoint(tmp_path / "checkpoints")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted") as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value) and path.name in str(err.value)
    with pytest.raises(CheckpointError, match="corrupted"):
        fit(ToyAE(**BASE), train, valid, FitContext(run_dir=tmp_path, resume=True),
            validate=holdout_loss)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    directory = tmp_path / "checkpoints"
    save_checkpoint(directory, {"epoch": 1, "w": torch.ones(3)}, epoch=1)
    from pathlib import Path

    real_write = Path.write_bytes

    def crash(self, data):  # half the bytes reach the disk, then the process dies
        real_write(self, data[: len(data) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_bytes", crash)
    with pytest.raises(OSError):
        save_checkpoint(directory, {"epoch": 2, "w": torch.zeros(3)}, epoch=2)
    monkeypatch.undo()
    assert sorted(p.name for p in directory.iterdir()) == ["epoch-0001.json", "epoch-0001.pt"]
    assert torch.equal(load_checkpoint(latest_checkpoint(directory))["w"], torch.ones(3))


def test_payload_without_sidecar_is_ignored_and_old_checkpoints_pruned(tmp_path):
    directory = tmp_path / "checkpoints"
    for epoch in (1, 2, 3):
        save_checkpoint(directory, {"epoch": epoch}, epoch=epoch, keep=2)
    assert [e for e, _ in list_checkpoints(directory)] == [2, 3]
    (directory / "epoch-0004.pt").write_bytes(b"partial")  # killed before its sidecar
    assert latest_checkpoint(directory).name == "epoch-0003.pt"
    meta = json.loads((directory / "epoch-0003.json").read_text())
    assert meta["epoch"] == 3 and len(meta["sha256"]) == 64


# -- batching -------------------------------------------------------------------------------------

def test_device_rows_match_the_csr_rows():
    rng = np.random.default_rng(0)
    matrix = sp.random(30, 17, density=0.2, format="csr", random_state=1, dtype=np.float32)
    rows = DeviceRows(matrix, torch.device("cpu"))
    index = torch.as_tensor(rng.permutation(30)[:11])
    np.testing.assert_array_equal(rows.rows(index).numpy(), matrix[index.numpy()].toarray())
    assert rows.rows(torch.as_tensor([5, 5])).shape == (2, 17)
    buffer = torch.full((11, 17), 7.0)  # a reused batch buffer: every old value is cleared
    assert rows.rows(index, out=buffer) is buffer
    np.testing.assert_array_equal(buffer.numpy(), matrix[index.numpy()].toarray())


def test_sampler_covers_every_row_once_and_shards_evenly():
    sampler = RowSampler(np.arange(10, 33), batch_size=5, seed=0)
    batches = sampler.epoch_batches()
    assert len(batches) == len(sampler) == 5
    assert sorted(torch.cat(batches).tolist()) == list(range(10, 33))
    assert torch.cat(batches).tolist() != torch.cat(sampler.epoch_batches()).tolist()
    shards = [RowSampler(np.arange(23), batch_size=4, seed=7, rank=r, world_size=2)
              for r in range(2)]
    parts = [torch.cat(s.epoch_batches()) for s in shards]
    assert len(parts[0]) == len(parts[1]) == 12 and len(shards[0]) == 3
    assert set(torch.cat(parts).tolist()) == set(range(23))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_training_with_bf16_autocast_and_device_batches(tmp_path):
    matrix = sp.random(50, 30, density=0.2, format="csr", random_state=2, dtype=np.float32)
    rows = DeviceRows(matrix, torch.device("cuda"))
    index = torch.arange(0, 50, 3)
    assert torch.equal(rows.rows(index).cpu(), torch.as_tensor(matrix[index.numpy()].toarray()))
    train, valid = toy_data()
    model = ToyAE(**{**BASE, "device": "cuda", "bf16": True, "epochs": 3})
    result = fit(model, train, valid, FitContext(run_dir=tmp_path), validate=holdout_loss)
    assert next(model.network.parameters()).device.type == "cuda"
    assert result.epochs_run == 3 and all(np.isfinite(r["loss"]) for r in model.history_)
    payload = load_checkpoint(latest_checkpoint(tmp_path / "checkpoints"))
    assert all(v.device.type == "cpu" for v in payload["network"].values())


def test_progress_numbers_read_in_one_format():
    from recsys.training.trainer import _duration, _number

    assert [_number(v) for v in (0.693147, 12.5, 503.33, 559.0, 1087.2, 93314.2)] == [
        "0.6931", "12.50", "503.3", "559.0", "1,087", "93,314"]
    assert [_duration(v) for v in (2.4, 65, 7300)] == ["2 s", "1 min 05 s", "2 h 01 min"]
