"""Adversarial autoencoder (Makhzani, Shlens, Jaitly, Goodfellow, Frey: "Adversarial
Autoencoders", ICLR workshop 2016), as applied to collaborative filtering by Galke, Mai, Vagliano
and Scherp ("Multi-modal Adversarial Autoencoders for Recommendations of Citations and Subject
Labels", UMAP 2018).

Mult-VAE with its KL term replaced by a discriminator. A user's 0/1 history x is L2-normalised,
dropped out and encoded by a tanh MLP with a linear last layer into a code z = E(x)
(deterministic, default I-600-50); a tanh MLP decodes z to logits over the catalogue
(50-600-I), scored by the multinomial likelihood of Mult-VAE, so that the two models differ
only in how q(z) is kept near a prior p(z):

- Mult-VAE: the per-user KL(q(z|x) || N(0, I)), which needs a closed form or an estimate of
  both densities;
- AAE: the *aggregate* posterior q(z) = E_x[q(z|x)] is matched to p(z) adversarially (the
  paper's section 2): a discriminator D tells prior samples from codes, and the encoder
  is trained to fool it. Only samples of p(z) are needed, so the prior need not be Gaussian:
  ``prior: mixture`` is an equal-weight mixture of ``prior_components`` Gaussians (the paper
  compares AAE and VAE on a 2-D mixture of 10), whose means lie at distance ``prior_radius``
  from the origin in fixed random directions, each with standard deviation ``prior_std``.

Each engine step runs the paper's two phases on one batch, with three optimisers:

1. reconstruction: E and the decoder minimise the multinomial negative log-likelihood;
2. regularisation, (a) discriminator: D minimises binary cross-entropy on prior samples (label 1)
   and the codes of phase 1, computed before its update (label 0, detached: D's phase never
   reaches the encoder, and one encoder pass is saved);
   (b) generator: E minimises the non-saturating ``-log D(E(x))`` (E's own optimiser, whose
   learning rate ``g_lr`` sets how hard the prior is enforced: a loss weight would be undone by
   Adam's normalisation).

The same dropped-out input feeds both encoder passes of a step: the codes the prior shapes are
those the decoder learns from. Scoring decodes E(x) of the full history (no dropout, no noise).
"""

from __future__ import annotations

from typing import Any, Literal

import scipy.sparse as sp
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from recsys.config import TrainConfig
from recsys.data.interactions import Interactions
from recsys.models.neural import NEURAL_SPACE, Batch, NeuralRecommender
from recsys.models.nn import (
    Activation,
    PositiveInt,
    binarize,
    build_optimizer,
    check_dims,
    check_history,
    init_like_multvae,
    mlp,
    multinomial_nll,
    weights_must_match,
)

Prior = Literal["gaussian", "mixture"]
# The mixture's directions come from their own generator: the prior is part of the model's
# definition, the same whatever the run's seed (and stored with the weights all the same).
_PRIOR_SEED = 20160101


# -- the prior -----------------------------------------------------------------------------------


def mixture_means(components: int, dim: int, radius: float) -> torch.Tensor:
    """``components`` points at distance ``radius`` from the origin in seeded random directions
    (uniform on the sphere); in 2-D with 10 components, the paper's ring of Gaussians."""
    directions = torch.randn(components, dim, generator=torch.Generator().manual_seed(_PRIOR_SEED))
    return radius * F.normalize(directions, dim=-1)


class PriorSampler(nn.Module):
    """Samples of p(z): N(0, std^2 I), or an equal-weight mixture of N(mean_k, std^2 I)."""

    def __init__(self, dim: int, kind: Prior, components: int, radius: float, std: float
                 ) -> None:
        super().__init__()
        self.dim, self.kind, self.std = dim, kind, std
        means = (mixture_means(components, dim, radius) if kind == "mixture"
                 else torch.zeros(1, dim))
        self.register_buffer("means", means)

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(n samples, the component each was drawn from); torch's global RNG, so a resumed run
        draws what an uninterrupted one would."""
        device = self.means.device
        component = torch.randint(len(self.means), (n,), device=device)
        noise = torch.randn(n, self.dim, device=device)
        return self.means[component] + self.std * noise, component


# -- the network ---------------------------------------------------------------------------------


class AAENetwork(nn.Module):
    def __init__(self, n_items: int, config: AAEConfig) -> None:
        super().__init__()
        c = config
        hidden = list(c.hidden_dims)
        # The code layer is linear: a tanh code could not reach a Gaussian's tails.
        self.encoder = mlp([n_items, *hidden, c.latent_dim], last_activation=False)
        self.decoder = mlp([c.latent_dim, *reversed(hidden), n_items], last_activation=False)
        init_like_multvae(self)  # the autoencoder only: D keeps torch's default init
        self.discriminator = mlp([c.latent_dim, *c.d_hidden_dims, 1], c.d_activation)
        self.dropout = nn.Dropout(c.dropout)
        self.prior = PriorSampler(c.latent_dim, c.prior, c.prior_components, c.prior_radius,
                                  c.prior_std)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """E(x) of the normalised history (dropped out in training mode)."""
        return self.encoder(self.dropout(F.normalize(x, dim=-1)))

    def discriminate(self, z: torch.Tensor) -> torch.Tensor:
        """D's logit that ``z`` is a sample of the prior."""
        return self.discriminator(z).squeeze(-1)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encode(x))


class AAEConfig(TrainConfig):
    """AAE options (every key of the shared `TrainConfig` applies too); the network and input
    path are Mult-VAE's (configs/multvae.yaml), so is every default shared with it."""

    hidden_dims: list[PositiveInt] = [600]  # pydantic copies mutable defaults
    # Smaller than Mult-VAE's 200: the adversarial match is unstable in 200 dimensions on
    # ml-100k (configs/aae.yaml has the validation figures).
    latent_dim: int = Field(50, ge=1)
    dropout: float = Field(0.5, ge=0, lt=1)
    prior: Prior = "gaussian"
    # Read only with prior: mixture (a Gaussian prior is one component at the origin).
    prior_components: int = Field(10, ge=2)
    prior_radius: float = Field(4.0, gt=0)
    prior_std: float = Field(1.0, gt=0)
    d_hidden_dims: list[PositiveInt] = [200]
    d_activation: Activation = "relu"
    # Step sizes of the discriminator and of the encoder's generator phase (None: lr); g_lr
    # sets how hard the prior is enforced.
    d_lr: float | None = Field(1e-4, gt=0)
    g_lr: float | None = Field(3e-4, gt=0)
    batch_size: int = Field(128, ge=1)
    epochs: int = Field(300, ge=1)


class AAE(NeuralRecommender):
    """Adversarial autoencoder; ``score`` folds in any user from their history vector."""

    name = "aae"
    family = "autoencoder"
    manual_optimization = True
    Config = AAEConfig
    config: AAEConfig
    network: AAENetwork
    # What --tune searches: the grid, and the Optuna study's space (`recsys.models.tuning`).
    tune_grid = {"g_lr": [0.0001, 0.0003, 0.001]}
    search_space = {
        **NEURAL_SPACE,
        "dropout": {"low": 0.0, "high": 0.8},
        "latent_dim": {"low": 10, "high": 200, "step": 10},
        "hidden_dims": {"choices": [[200], [600], [600, 400]]},
        "g_lr": {"low": 1e-05, "high": 0.01, "log": True},
        "d_lr": {"low": 1e-05, "high": 0.01, "log": True},
        "prior": {"choices": ["gaussian", "mixture"]},
    }

    def build(self, n_users: int, n_items: int) -> None:
        c = self.config
        check_dims(self.name, [*c.hidden_dims, c.latent_dim], n_items, "latent_dim")
        self.n_users, self.n_items = n_users, n_items
        self.network = AAENetwork(n_items, c)

    def training_matrix(self, train: Interactions) -> sp.csr_matrix:
        return train.binary()

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        c, net, cuda = self.config, self.network, self.device.type == "cuda"
        autoencoder = [*net.encoder.parameters(), *net.decoder.parameters()]
        self._opt_ae = build_optimizer(c, autoencoder, cuda=cuda)
        self._opt_d = build_optimizer(c, net.discriminator.parameters(), cuda=cuda,
                                      lr=c.d_lr or c.lr)
        self._opt_g = build_optimizer(c, net.encoder.parameters(), cuda=cuda, lr=c.g_lr or c.lr)
        return [self._opt_ae, self._opt_d, self._opt_g]

    # -- the three phases of a step (each updates only its own optimiser's parameters) ----------

    def reconstruction_phase(self, h: torch.Tensor, x: torch.Tensor
                             ) -> tuple[torch.Tensor, torch.Tensor]:
        """E and the decoder on the multinomial NLL of ``x`` from the input ``h`` (already
        normalised and dropped out); returns (nll, the codes, detached)."""
        net = self.network
        z = net.encoder(h)
        nll = multinomial_nll(net.decoder(z), x)
        self._update(self._opt_ae, nll, [net.encoder, net.decoder])
        return nll.detach(), z.detach()

    def discriminator_phase(self, codes: torch.Tensor) -> dict[str, torch.Tensor]:
        """D on prior samples (1) against ``codes`` (0), as many of each."""
        net = self.network
        prior, _ = net.prior.sample(codes.shape[0])
        real, fake = net.discriminate(prior), net.discriminate(codes.detach())
        loss = (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
        self._update(self._opt_d, loss, [net.discriminator])
        return {"d_loss": loss.detach(), "d_prior": torch.sigmoid(real.detach()).mean(),
                "d_code": torch.sigmoid(fake.detach()).mean()}

    def generator_phase(self, h: torch.Tensor) -> torch.Tensor:
        """E towards codes D takes for prior samples (non-saturating loss); D is not updated
        and accumulates no gradient."""
        net = self.network
        net.discriminator.requires_grad_(False)
        try:
            logit = net.discriminate(net.encoder(h))
            loss = F.binary_cross_entropy_with_logits(logit, torch.ones_like(logit))
            self._update(self._opt_g, loss, [net.encoder])
        finally:
            net.discriminator.requires_grad_(True)
        return loss.detach()

    def _update(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor,
                modules: list[nn.Module]) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip is not None:
            params = [p for m in modules for p in m.parameters()]
            torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
        optimizer.step()

    def training_step(self, batch: Batch, step: int) -> dict[str, Any]:
        x = batch.rows
        # One dropout mask per step: both encoder passes see the same corrupted input.
        h = self.network.dropout(F.normalize(x, dim=-1))
        nll, codes = self.reconstruction_phase(h, x)
        d = self.discriminator_phase(codes)
        g_loss = self.generator_phase(h)
        # code_std: the codes' spread per dimension across the batch (prior_std once matched).
        return {"loss": nll + d["d_loss"] + g_loss, "nll": nll, "g_loss": g_loss, **d,
                "code_std": codes.std(dim=0, correction=0).mean()}

    def forward_scores(self, history: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        check_history(self.name, history, self.n_items)
        return self.network.scores(binarize(history))

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        with weights_must_match(self.name, "the config"):
            super().load_state_dict(state)


__all__ = ["AAE", "AAEConfig", "PriorSampler", "mixture_means"]
