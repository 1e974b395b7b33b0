"""DiffRec: the noise schedule, the forward process, the importance sampler's loss history, the
reverse process used for scoring, config checks, and the shared contract."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recsys.errors import RecsysError
from recsys.models.base import FitContext
from recsys.models.diffrec import (
    FIRST_BETA,
    UNIFORM_SHARE,
    DiffRec,
    diffusion_betas,
    record_losses,
    step_distribution,
    timestep_embedding,
)
from recsys.models.registry import create_model

from .contract import RecommenderContract, checkerboard

CONTRACT = {"hidden_dims": [16], "epochs": 60, "batch_size": 16, "lr": 1e-2, "device": "cpu",
            "patience": None}


class TestDiffRec(RecommenderContract):
    model_name = "diffrec"
    params = CONTRACT


class TestDiffRecWithoutNoise(RecommenderContract):
    """The paper's noise-free ablation with uniform steps: the denoiser applied ``steps`` times."""

    model_name = "diffrec"
    params = {**CONTRACT, "noise_scale": 0.0, "steps": 3, "importance_sampling": False}


def built(**params: object) -> DiffRec:
    model = create_model("diffrec", **{"hidden_dims": [8], "device": "cpu", **params})
    assert isinstance(model, DiffRec)
    model.build(4, 12)
    return model


# -- the schedule and the forward process ------------------------------------------------------


def test_linear_var_makes_the_noise_variance_linear_in_t():
    ramp = torch.linspace(1e-4 * 5e-4, 1e-4 * 5e-3, 6, dtype=torch.float64)
    betas = diffusion_betas("linear-var", 6, 1e-4, 5e-4, 5e-3)
    assert betas[0] == FIRST_BETA  # fixed, whatever the schedule says
    # After the first step, abar_t / abar_1 is (1 - ramp_t) / (1 - ramp_1): the variance ramp.
    kept = torch.cumprod(1.0 - betas[1:], dim=0)
    torch.testing.assert_close(kept, (1.0 - ramp[1:]) / (1.0 - ramp[0]))
    linear = diffusion_betas("linear", 6, 0.1, 0.1, 0.5)
    torch.testing.assert_close(linear[1:], torch.linspace(0.01, 0.05, 6, dtype=torch.float64)[1:])
    cosine = diffusion_betas("cosine", 50, 0.0, 0.0, 0.0)
    assert (cosine > 0).all() and (cosine <= 0.999).all() and cosine[-1] > cosine[10]


def test_q_sample_has_the_closed_form_mean_and_variance():
    model = built(noise_schedule="cosine", steps=10)
    net = model.network
    torch.manual_seed(0)
    x0 = torch.tensor([[1.0] * 6 + [0.0] * 6]).repeat(20000, 1)
    t = torch.full((20000,), 6)
    x_t = net.q_sample(x0, t, torch.randn_like(x0))
    alpha_bar = torch.cumprod(1.0 - diffusion_betas("cosine", 10, 0.0, 0.0, 0.0), dim=0)[6]
    assert x_t[:, 0].mean().item() == pytest.approx(alpha_bar.sqrt().item(), abs=0.02)
    assert x_t[:, 7].mean().item() == pytest.approx(0.0, abs=0.02)
    assert x_t[:, 7].var().item() == pytest.approx(1.0 - alpha_bar.item(), rel=0.05)


def test_timestep_embedding_separates_steps_and_pads_odd_sizes():
    emb = timestep_embedding(torch.arange(5), 7)
    assert emb.shape == (5, 7) and torch.all(emb[:, -1] == 0)
    assert torch.cdist(emb, emb).fill_diagonal_(1.0).min() > 0.1  # every step distinct
    torch.testing.assert_close(emb[0, :3], torch.ones(3))  # cos(0)


# -- importance sampling -------------------------------------------------------------------------


def test_the_loss_history_keeps_each_steps_newest_losses():
    model = built(steps=4, history_per_step=3)
    net = model.network
    rng = np.random.default_rng(0)
    reference: dict[int, list[float]] = {s: [] for s in range(4)}
    for _ in range(5):
        t = torch.as_tensor(rng.integers(0, 4, 9))
        losses = torch.as_tensor(rng.random(9))
        record_losses(net, t, losses)
        for step, loss in zip(t.tolist(), losses.tolist(), strict=True):
            reference[step].append(loss)
    for step, seen in reference.items():
        assert net.losses_seen[step] == len(seen)
        kept = sorted(net.loss_history[step, :min(3, len(seen))].tolist())
        assert kept == pytest.approx(sorted(seen[-3:]))


def test_steps_are_uniform_until_every_history_is_full_then_follow_the_losses():
    model = built(steps=3, history_per_step=2)
    net = model.network
    record_losses(net, torch.tensor([0, 0, 1, 1, 2]), torch.tensor([1.0, 1.0, 3.0, 3.0, 9.0]))
    torch.testing.assert_close(step_distribution(net), torch.full((3,), 1 / 3,
                                                                  dtype=torch.float64))
    record_losses(net, torch.tensor([2]), torch.tensor([9.0]))
    probs = step_distribution(net)
    expected = torch.tensor([1.0, 3.0, 9.0], dtype=torch.float64) / 13
    torch.testing.assert_close(probs, expected * (1 - UNIFORM_SHARE) + UNIFORM_SHARE / 3)
    torch.manual_seed(0)
    t, scale = model.sample_steps(30000, torch.device("cpu"))
    counts = torch.bincount(t, minlength=3).double() / 30000
    torch.testing.assert_close(counts, probs, atol=0.01, rtol=0)
    # Each loss is divided by P(t) * T: the weighted mean estimates the uniform mean over steps.
    torch.testing.assert_close(scale, (probs[t] * 3).float())


def test_a_fit_records_the_sampler_state_and_saves_it_but_not_the_schedule(tmp_path):
    data = checkerboard()
    torch.manual_seed(0)
    model = create_model("diffrec", **{**CONTRACT, "epochs": 5})
    model.fit(data.train, None, FitContext(quiet=True))
    net = model.network
    assert int(net.losses_seen.sum()) == 5 * data.train.n_users
    state = model.state_dict()
    assert {"loss_history", "losses_seen"} <= set(state)
    assert "coef_x0" not in state and "sqrt_alpha_bar" not in state  # derived from the config
    model.save(tmp_path)
    loaded = DiffRec.load(tmp_path)
    assert torch.equal(loaded.network.loss_history, net.loss_history)


def test_a_resumed_fit_continues_the_sampler_as_an_uninterrupted_one(tmp_path):
    """The loss history decides the steps drawn after a resume: it travels in the checkpoint."""
    data = checkerboard()
    params = {**CONTRACT, "epochs": 6, "history_per_step": 2}
    full = create_model("diffrec", **params)
    full.fit(data.train, data.valid, FitContext(run_dir=tmp_path / "a"))
    part = create_model("diffrec", **{**params, "epochs": 3})
    part.fit(data.train, data.valid, FitContext(run_dir=tmp_path / "b"))
    torch.manual_seed(12345)  # the resumed process starts from another RNG state
    resumed = create_model("diffrec", **params)
    resumed.fit(data.train, data.valid, FitContext(run_dir=tmp_path / "b", resume=True))
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["mean_step"] for r in full.history_] == [r["mean_step"] for r in resumed.history_]


# -- the reverse process -------------------------------------------------------------------------


def test_the_last_reverse_step_returns_the_x0_estimate():
    net = built().network
    assert net.coef_x0[0].item() == pytest.approx(1.0)
    assert net.coef_xt[0].item() == pytest.approx(0.0, abs=1e-6)


def test_scoring_runs_every_reverse_step_as_a_posterior_mean():
    torch.manual_seed(0)
    model = built(steps=3)
    net = model.network.eval()
    x0 = (torch.rand(5, 12) < 0.4).float()
    with torch.no_grad():
        x_t = x0
        for i in (2, 1, 0):
            x0_hat = net(x_t, torch.full((5,), i))
            x_t = net.coef_x0[i] * x0_hat + net.coef_xt[i] * x_t
        torch.testing.assert_close(model.score(np.arange(5), _csr(x0)), x_t)


def test_without_noise_scoring_applies_the_denoiser_steps_times():
    torch.manual_seed(0)
    model = built(steps=2, noise_scale=0.0)
    net = model.network.eval()
    x0 = (torch.rand(3, 12) < 0.4).float()
    with torch.no_grad():
        expected = net(net(x0, torch.full((3,), 1)), torch.full((3,), 0))
        torch.testing.assert_close(model.score(np.arange(3), _csr(x0)), expected)


def test_sampling_noise_makes_scores_random_and_the_default_does_not():
    torch.manual_seed(0)
    x0 = _csr((torch.rand(3, 12) < 0.4).float())
    noisy = built(steps=4, noise_scale=0.1, noise_min=0.1, noise_max=0.5, sampling_noise=True,
                  sampling_steps=2)
    noisy.network.eval()
    assert not torch.equal(noisy.score(np.arange(3), x0), noisy.score(np.arange(3), x0))
    plain = built(steps=4, noise_scale=0.1, noise_min=0.1, noise_max=0.5)
    plain.network.eval()
    assert torch.equal(plain.score(np.arange(3), x0), plain.score(np.arange(3), x0))


def _csr(dense: torch.Tensor) -> sp.csr_matrix:
    return sp.csr_matrix(dense.numpy())


def test_a_noise_predictor_learns_to_rank_the_heldout_items():
    """mean_type eps: the loss targets the added noise and scoring turns the noise estimate
    into an x_0 estimate; it needs stronger noise than the x0 default to carry any signal."""
    data = checkerboard()
    torch.manual_seed(0)
    model = create_model("diffrec", **{**CONTRACT, "mean_type": "eps", "noise_scale": 1.0,
                                       "noise_min": 0.05, "noise_max": 0.5, "steps": 10,
                                       "importance_sampling": False, "reweight": False})
    model.fit(data.train, data.valid, FitContext(quiet=True))
    first, best = model.history_[0]["valid_ndcg@100"], model.train_result_.best_value
    assert best is not None and best > 0.7 and best > first + 0.2


def test_the_noise_estimate_maps_back_to_x0():
    net = built(noise_schedule="cosine", steps=10).network
    torch.manual_seed(0)
    x0 = (torch.rand(4, 12) < 0.5).float()
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 3, 6, 9])
    x_t = net.q_sample(x0, t, noise)
    recovered = (net.recip_sqrt_alpha_bar[t, None] * x_t
                 - net.sqrt_recip_alpha_bar_m1[t, None] * noise)
    torch.testing.assert_close(recovered, x0, atol=1e-4, rtol=0)


# -- config checks ------------------------------------------------------------------------------


@pytest.mark.parametrize(("params", "message"), [
    ({"noise_min": 0.1, "noise_max": 0.01}, "noise_min .* is larger than noise_max"),
    ({"steps": 3, "sampling_steps": 4}, r"sampling_steps \(4\) exceeds the diffusion's steps"),
    ({"mean_type": "eps", "noise_scale": 0.0}, "noise_scale 0 adds none"),
    ({"noise_schedule": "quadratic"}, "noise_schedule"),
])
def test_inconsistent_settings_end_in_one_line(params, message):
    with pytest.raises(RecsysError, match=message) as err:
        create_model("diffrec", **params)
    assert "\n" not in str(err.value)


def test_a_denoiser_wider_than_the_catalogue_is_refused():
    with pytest.raises(RecsysError, match="hidden_dims"):
        create_model("diffrec").build(4, 12)  # the default 1000 units on 12 items
