"""CUDA training paths: graph replay, the on-device NaN guard (skipped without CUDA)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys.models.base import FitContext
from recsys.models.multdae import MultDAE
from recsys.models.multvae import MultVAE
from recsys.training import Trainer, TrainingDiverged, latest_checkpoint, load_checkpoint

from .neural_toy import ToyAE, holdout_loss, toy_data

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

# 50 users in batches of 8: six full batches (graph replays after the warm-up) and one of 2
# (eager) per epoch.
DATA = dict(n_users=50, n_items=30, seed=4)


def train(model, valid=None):
    trainer = Trainer(model, FitContext(quiet=True))
    trainer.fit(toy_data(**DATA)[0], valid)
    return trainer


def test_graph_replay_trains_exactly_like_eager_steps():
    # No dropout: the two runs draw no random numbers, so their weights must agree.
    kw = dict(hidden_dims=[16], dropout=0.0, l2=0.01, batch_size=8, epochs=3, lr=0.01,
              patience=None, device="cuda", seed=0)
    graphed = MultDAE(**kw, cuda_graph=True)
    eager = MultDAE(**kw, cuda_graph=False)
    t_graph, t_eager = train(graphed), train(eager)
    assert t_graph.graphed is not None and t_graph.graphed.graph is not None
    assert t_eager.graphed is None
    for name, value in graphed.state_dict().items():
        torch.testing.assert_close(value, eager.state_dict()[name], rtol=1e-4, atol=1e-5)
    for a, b in zip(graphed.history_, eager.history_, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    assert graphed.history_[-1]["loss"] < graphed.history_[0]["loss"]


def test_multvae_graph_replay_anneals_beta_from_the_device_step_in_bf16():
    model = MultVAE(hidden_dims=[16], latent_dim=4, batch_size=8, epochs=3, patience=None,
                    total_anneal_steps=10, anneal_cap=0.5, device="cuda", bf16=True, seed=0)
    trainer = train(model)
    assert trainer.graphed.graph is not None
    steps = len(trainer.sampler)  # per epoch
    # beta = min(0.5, step / 10): the per-epoch mean of the replayed steps' betas
    expected = [np.mean([min(0.5, s / 10) for s in range(e * steps, (e + 1) * steps)])
                for e in range(3)]
    assert [h["beta"] for h in model.history_] == pytest.approx(expected, abs=1e-6)
    assert all(np.isfinite(h["loss"]) for h in model.history_)


def test_nan_on_cuda_stops_at_the_epoch_end_naming_the_first_bad_step(tmp_path):
    train_data, valid = toy_data()  # 40 users, batches of 16 -> 3 steps per epoch
    model = ToyAE(epochs=6, batch_size=16, lr=0.05, metric="loss", seed=3, device="cuda",
                  nan_at_step=7)
    with pytest.raises(TrainingDiverged) as err:
        Trainer(model, FitContext(run_dir=tmp_path, quiet=True),
                validate=holdout_loss).fit(train_data, valid)
    message = str(err.value)
    assert "\n" not in message and "loss is nan" in message and "epoch 3, step 7" in message
    last = latest_checkpoint(tmp_path / "checkpoints")
    assert last.name == "epoch-0002.pt"
    assert all(torch.isfinite(v).all() for v in load_checkpoint(last)["network"].values())


class FlagSpy(ToyAE):
    """Records the TF32 switch each step sees."""

    seen: list[bool] = []

    def training_step(self, batch, step):
        FlagSpy.seen.append(torch.backends.cuda.matmul.allow_tf32)
        return super().training_step(batch, step)


@pytest.mark.parametrize("tf32", [True, False])
def test_tf32_holds_during_the_fit_only(tf32):
    before = torch.backends.cuda.matmul.allow_tf32
    FlagSpy.seen = []
    Trainer(FlagSpy(epochs=1, batch_size=16, device="cuda", tf32=tf32),
            FitContext(quiet=True)).fit(toy_data()[0])
    assert FlagSpy.seen and set(FlagSpy.seen) == {tf32}
    assert torch.backends.cuda.matmul.allow_tf32 == before
