"""AAE: the priors it samples, the three phases of a step (each moving only its own parameters),
the adversarial losses, the aggregate posterior pulled to the prior, the shared contract and the
errors a user can cause."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recsys.data.interactions import Interactions, Vocabulary
from recsys.errors import RecsysError
from recsys.models.aae import AAE, PriorSampler, mixture_means
from recsys.models.base import FitContext
from recsys.models.neural import Batch
from recsys.models.registry import create_model

from .contract import RecommenderContract, checkerboard

SMALL = {"hidden_dims": [32], "latent_dim": 8, "d_hidden_dims": [16], "epochs": 60,
         "batch_size": 16, "lr": 1e-2, "device": "cpu", "patience": None}

pytestmark = pytest.mark.usefixtures("one_thread")


class TestAAE(RecommenderContract):
    model_name = "aae"
    params = SMALL


class TestAAEMixturePrior(RecommenderContract):
    model_name = "aae"
    params = {**SMALL, "prior": "mixture", "prior_components": 4}


# -- the priors ----------------------------------------------------------------------------------


def test_mixture_means_lie_on_the_sphere_and_do_not_depend_on_the_run_seed():
    torch.manual_seed(1)
    a = mixture_means(10, 6, 3.0)
    torch.manual_seed(2)
    b = mixture_means(10, 6, 3.0)
    assert torch.equal(a, b)
    assert torch.allclose(a.norm(dim=1), torch.full((10,), 3.0))
    assert torch.pdist(a).min() > 0.1  # ten distinct modes
    # The 2-D case is a ring of Gaussians, as in the paper's figure.
    assert torch.allclose(mixture_means(10, 2, 1.0).norm(dim=1), torch.ones(10))


def test_gaussian_prior_samples_have_the_prior_moments():
    torch.manual_seed(0)
    z, component = PriorSampler(5, "gaussian", 10, 4.0, 0.5).sample(40_000)
    assert z.shape == (40_000, 5) and torch.equal(component, torch.zeros(40_000).long())
    assert z.mean(0).abs().max() < 0.02
    assert torch.allclose(z.std(0), torch.full((5,), 0.5), atol=0.01)


def test_mixture_prior_samples_come_from_their_component_in_equal_shares():
    torch.manual_seed(0)
    prior = PriorSampler(6, "mixture", 4, 10.0, 0.5)
    z, component = prior.sample(20_000)
    # Modes 10 apart at most a few std wide: every sample is nearest its own component's mean.
    nearest = torch.cdist(z, prior.means).argmin(dim=1)
    assert torch.equal(nearest, component)
    shares = torch.bincount(component, minlength=4).float() / len(component)
    assert torch.allclose(shares, torch.full((4,), 0.25), atol=0.02)
    for k in range(4):
        around = z[component == k] - prior.means[k]
        assert around.mean(0).abs().max() < 0.05
        assert torch.allclose(around.std(0), torch.full((6,), 0.5), atol=0.03)
    # The samples' norm is far from a centred Gaussian's: the prior is not N(0, s^2 I).
    assert z.norm(dim=1).mean() > 9.0


# -- one step, phase by phase ------------------------------------------------------------------


def built(**params) -> tuple[AAE, torch.Tensor]:
    torch.manual_seed(0)
    model = AAE(**{**SMALL, **params})
    model.build(12, 30)
    model.configure_optimizers()
    x = (torch.rand(12, 30) < 0.3).float()
    x[:, 0] = 1.0
    return model, x


def snapshot(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def same(module: torch.nn.Module, before: list[torch.Tensor]) -> bool:
    return all(torch.equal(p, b) for p, b in zip(module.parameters(), before, strict=True))


def test_each_phase_moves_only_its_own_parameters():
    model, x = built()
    net = model.network
    parts = {"encoder": net.encoder, "decoder": net.decoder, "discriminator": net.discriminator}
    h = torch.nn.functional.normalize(x, dim=-1)

    def moved() -> set[str]:
        return {name for name, m in parts.items() if not same(m, before[name])}

    before = {name: snapshot(m) for name, m in parts.items()}
    _, codes = model.reconstruction_phase(h, x)
    assert moved() == {"encoder", "decoder"}
    assert not codes.requires_grad

    before = {name: snapshot(m) for name, m in parts.items()}
    model.discriminator_phase(codes)
    assert moved() == {"discriminator"}

    before = {name: snapshot(m) for name, m in parts.items()}
    d_grads = [p.grad.clone() for p in net.discriminator.parameters()]
    model.generator_phase(h)
    assert moved() == {"encoder"}
    # D only passed the gradient on: its own gradients are still those of its phase, and it
    # stays trainable for the next step.
    assert all(torch.equal(p.grad, g) and p.requires_grad
               for p, g in zip(net.discriminator.parameters(), d_grads, strict=True))
    # The generator's optimiser is the encoder's alone; the reconstruction one holds both.
    assert {id(p) for g in model._opt_g.param_groups for p in g["params"]} == {
        id(p) for p in net.encoder.parameters()}
    assert len(model._opt_ae.param_groups[0]["params"]) == len(
        [*net.encoder.parameters(), *net.decoder.parameters()])


def test_adversarial_losses_of_an_undecided_discriminator_are_log_2():
    model, x = built(d_lr=1e-12, g_lr=1e-12)
    last = model.network.discriminator[-1]
    with torch.no_grad():  # D's logit is 0 everywhere: it cannot tell prior from codes
        last.weight.zero_()
        last.bias.zero_()
    out = model.training_step(Batch(x, torch.arange(12)), step=0)
    assert out["d_loss"].item() == pytest.approx(2 * math.log(2), rel=1e-5)
    assert out["g_loss"].item() == pytest.approx(math.log(2), rel=1e-5)
    assert out["d_prior"].item() == pytest.approx(0.5)
    assert out["d_code"].item() == pytest.approx(0.5)
    assert out["loss"].item() == pytest.approx(
        (out["nll"] + out["d_loss"] + out["g_loss"]).item(), rel=1e-6)
    assert not out["loss"].requires_grad  # the model stepped its optimisers itself


def test_scores_decode_the_code_of_the_whole_history():
    model, x = built(dropout=0.9)
    net = model.network
    net.eval()
    ratings = x * 4.0  # ratings are read as implicit feedback
    with torch.no_grad():
        scores = model.forward_scores(ratings, torch.arange(12))
        expected = net.decoder(net.encoder(torch.nn.functional.normalize(x, dim=-1)))
    assert torch.allclose(scores, expected, atol=1e-6)


# -- training: the aggregate posterior is pulled to the prior ------------------------------------


def test_the_generator_phase_moves_the_aggregate_posterior_to_the_prior():
    """A prior three times wider than the codes an autoencoder finds alone: the adversary must
    widen them (an encoder its optimiser cannot move stays narrow)."""
    rng = np.random.default_rng(0)
    dense = rng.random((256, 40)) < 0.3
    dense[:, 0] = True
    train = Interactions(sp.csr_matrix(dense.astype(np.float32)), Vocabulary(np.arange(256)),
                         Vocabulary(np.arange(40)))
    rows = torch.from_numpy(dense.astype(np.float32))

    def codes(g_lr: float) -> torch.Tensor:
        torch.manual_seed(0)
        model = create_model("aae", **{**SMALL, "latent_dim": 2, "epochs": 40, "batch_size": 64,
                                       "prior_std": 3.0, "d_lr": 3e-3, "g_lr": g_lr})
        model.fit(train, None, FitContext(quiet=True))
        model.network.eval()
        with torch.no_grad():
            return model.network.encode(rows)

    matched, alone = codes(3e-3), codes(1e-9)
    assert ((matched.std(0) > 1.8) & (matched.std(0) < 4.0)).all(), matched.std(0)
    assert (matched.mean(0).abs() < 1.0).all(), matched.mean(0)
    assert (alone.std(0) < 1.0).all(), alone.std(0)


def test_a_resumed_fit_equals_an_uninterrupted_one(tmp_path):
    """All three optimisers and the prior's draws (torch's global RNG) are checkpointed: two
    epochs, then a resume to four, give the weights of four epochs in one go."""
    data = checkerboard()
    params = {**SMALL, "epochs": 4, "prior": "mixture", "prior_components": 3}
    full = create_model("aae", **params)
    full.fit(data.train, None, FitContext(quiet=True, run_dir=tmp_path / "a"))
    create_model("aae", **{**params, "epochs": 2}).fit(
        data.train, None, FitContext(quiet=True, run_dir=tmp_path / "b"))
    torch.manual_seed(12345)  # the resuming process starts from another RNG state
    resumed = create_model("aae", **params)
    resumed.fit(data.train, None, FitContext(quiet=True, run_dir=tmp_path / "b", resume=True))
    assert resumed.train_result_.resumed_from == 2
    for key, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


# -- errors a user can cause ---------------------------------------------------------------------


def test_an_unknown_prior_or_a_one_component_mixture_is_one_clear_line():
    with pytest.raises(RecsysError, match="'prior'") as err:
        create_model("aae", prior="laplace")
    assert "\n" not in str(err.value)
    with pytest.raises(RecsysError, match="'prior_components'"):
        create_model("aae", prior="mixture", prior_components=1)
    with pytest.raises(RecsysError, match=r"aae dims \[600, 50\] do not match the data"):
        create_model("aae").build(10, 40)


def test_saved_weights_keep_the_mixture_and_refuse_another_shape(tmp_path):
    data = checkerboard()
    model = create_model("aae", **{**SMALL, "epochs": 2, "prior": "mixture"})
    model.fit(data.train, None, FitContext(quiet=True))
    model.save(tmp_path / "m")
    state = torch.load(tmp_path / "m" / "weights.pt", weights_only=True)
    assert torch.equal(state["prior.means"], model.network.prior.means)
    other = create_model("aae", **{**SMALL, "latent_dim": 4, "prior": "mixture"})
    other.n_users, other.n_items = model.n_users, model.n_items
    with pytest.raises(RecsysError, match="saved weights do not match the config"):
        other.load_state_dict(state)
    assert np.isfinite(model.history_[-1]["code_std"])
