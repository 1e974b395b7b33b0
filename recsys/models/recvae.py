"""RecVAE (Shenbin, Alekseev, Tutubalina, Malykh, Nikolenko: "RecVAE: a New Variational
Autoencoder for Top-N Recommendations with Implicit Feedback", WSDM 2020).

What it adds to Mult-VAE:

- encoder: five dense layers with swish activations, layer norm and dense (residual-sum)
  connections, on the L2-normalised, dropped-out history; a single linear decoder;
- composite prior: a mixture of N(0, I), the posterior of the encoder as it was at the end of the
  previous encoder phase ("old encoder", frozen), and a wide N(0, e^10 I); weights 3/20, 3/4, 1/10;
- user-specific KL weight ``beta_u = gamma * |x_u|`` (``gamma`` set) or a constant ``beta``;
  the KL is the single-sample estimate ``log q(z|x) - log p(z)``;
- alternating updates: ``encoder_epochs`` passes updating the encoder only (input dropout), then
  the old encoder is refreshed and ``decoder_epochs`` passes update the decoder only (no dropout).

One trainer epoch is one pass; which phase a step belongs to is a plain function of the global
step (`recvae_phase`), so resuming from a checkpoint continues the cycle where it stopped. The
model steps its two optimisers itself (``manual_optimization``), one for the encoder and one for
the decoder, each built by `recsys.models.nn.build_optimizer` from the config (``optimizer``,
``lr``, ``weight_decay``; Adam by default).
"""

from __future__ import annotations

import math
from typing import Any

import scipy.sparse as sp
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from recsys.config import TrainConfig
from recsys.data.interactions import Interactions
from recsys.models.neural import NEURAL_SPACE, Batch, NeuralRecommender
from recsys.models.nn import (
    binarize,
    build_optimizer,
    check_dims,
    check_history,
    log_normal_pdf,
    multinomial_nll,
    weights_must_match,
)
from recsys.training.api import batches_per_epoch, trained_rows

MIXTURE_WEIGHTS = (3 / 20, 3 / 4, 1 / 10)  # standard normal, old posterior, wide normal
WIDE_LOGVAR = 10.0


def recvae_phase(step: int, batches_per_epoch: int, encoder_epochs: int,
                 decoder_epochs: int) -> tuple[str, bool]:
    """(``"encoder"`` or ``"decoder"``, whether ``step`` is the first step of a decoder phase)."""
    epoch, offset = divmod(step, max(1, batches_per_epoch))
    position = epoch % (encoder_epochs + decoder_epochs)
    if position < encoder_epochs:
        return "encoder", False
    return "decoder", position == encoder_epochs and offset == 0


class RecVAEEncoder(nn.Module):
    def __init__(self, n_items: int, hidden_dim: int, latent_dim: int, layers: int = 5) -> None:
        super().__init__()
        self.fcs = nn.ModuleList(
            nn.Linear(n_items if i == 0 else hidden_dim, hidden_dim) for i in range(layers))
        # eps = 0.1 as in the authors' code: a large epsilon damps tiny-variance layers.
        self.norms = nn.ModuleList(nn.LayerNorm(hidden_dim, eps=0.1) for _ in range(layers))
        self.mu = nn.Linear(hidden_dim, latent_dim)
        self.logvar = nn.Linear(hidden_dim, latent_dim)

    def forward(self, x: torch.Tensor, dropout: float) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.dropout(F.normalize(x, dim=-1), p=dropout, training=self.training)
        h = self.norms[0](F.silu(self.fcs[0](x)))
        skip = h  # running sum of all earlier layers' outputs (the dense connections)
        for fc, norm in zip(self.fcs[1:], self.norms[1:], strict=True):
            h = norm(F.silu(fc(h) + skip))
            skip = skip + h
        return self.mu(h), self.logvar(h)


class RecVAENetwork(nn.Module):
    def __init__(self, n_items: int, hidden_dim: int, latent_dim: int) -> None:
        super().__init__()
        self.encoder = RecVAEEncoder(n_items, hidden_dim, latent_dim)
        self.old_encoder = RecVAEEncoder(n_items, hidden_dim, latent_dim)
        self.old_encoder.requires_grad_(False)
        self.decoder = nn.Linear(latent_dim, n_items)
        self.update_prior()

    def update_prior(self) -> None:
        self.old_encoder.load_state_dict(self.encoder.state_dict())

    def log_prior(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Element-wise log density of the composite prior at z."""
        with torch.no_grad():
            post_mu, post_logvar = self.old_encoder(x, 0.0)
        zeros = torch.zeros_like(z)
        parts = torch.stack([
            log_normal_pdf(z, zeros, zeros) + math.log(MIXTURE_WEIGHTS[0]),
            log_normal_pdf(z, post_mu, post_logvar) + math.log(MIXTURE_WEIGHTS[1]),
            log_normal_pdf(z, zeros, zeros + WIDE_LOGVAR) + math.log(MIXTURE_WEIGHTS[2]),
        ], dim=-1)
        return torch.logsumexp(parts, dim=-1)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        mu, _ = self.encoder(x, 0.0)
        return self.decoder(mu)


class RecVAEConfig(TrainConfig):
    # The paper's lr 5e-4, gamma 0.005 and batch 500 were for ML-20M; these are the values
    # ml-100k's validation part chose (configs/recvae.yaml).
    lr: float = Field(1e-3, gt=0)
    hidden_dim: int = Field(600, ge=1)
    latent_dim: int = Field(200, ge=1)
    dropout: float = Field(0.5, ge=0, lt=1)
    gamma: float | None = Field(0.02, gt=0)  # KL weight gamma * |x_u|; null: use beta
    beta: float | None = Field(None, ge=0)  # constant KL weight, when gamma is null
    encoder_epochs: int = Field(3, ge=1)
    decoder_epochs: int = Field(1, ge=1)
    batch_size: int = Field(128, ge=1)
    epochs: int = Field(300, ge=1)
    patience: int | None = Field(30, ge=1)  # several alternation cycles of 4 epochs


class RecVAE(NeuralRecommender):
    """RecVAE; ``score`` folds in any user from their history vector (no retraining)."""

    name = "recvae"
    family = "vae"
    Config = RecVAEConfig
    config: RecVAEConfig
    # What --tune searches: the grid, and the Optuna study's space (`recsys.models.tuning`).
    tune_grid = {"gamma": [0.01, 0.02, 0.04]}
    search_space = {
        **NEURAL_SPACE,
        "dropout": {"low": 0.0, "high": 0.8},
        "gamma": {"low": 0.002, "high": 0.2, "log": True},
        "latent_dim": {"low": 50, "high": 400, "step": 50},
    }
    manual_optimization = True

    def build(self, n_users: int, n_items: int) -> None:
        c = self.config
        check_dims(self.name, [c.hidden_dim, c.latent_dim], n_items, "latent_dim")
        self.n_users, self.n_items = n_users, n_items
        self.network = RecVAENetwork(n_items, c.hidden_dim, c.latent_dim)
        self._batches_per_epoch = 1

    def training_matrix(self, train: Interactions) -> sp.csr_matrix:
        matrix = train.binary()
        # The phase of a step depends on the engine's batch count (its rule, one home).
        rows = len(trained_rows(matrix, self.train_on_empty_rows))
        self._batches_per_epoch = max(1, batches_per_epoch(rows, self.config.batch_size))
        return matrix

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        c, net, cuda = self.config, self.network, self.device.type == "cuda"
        self.encoder_optimizer = build_optimizer(c, net.encoder.parameters(), cuda=cuda)
        self.decoder_optimizer = build_optimizer(c, net.decoder.parameters(), cuda=cuda)
        return [self.encoder_optimizer, self.decoder_optimizer]

    def kl_weight(self, x: torch.Tensor) -> torch.Tensor | float:
        c = self.config
        if c.gamma is not None:
            return c.gamma * x.sum(dim=-1)
        return c.beta if c.beta is not None else 1.0

    def negative_elbo(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(negative log-likelihood, weighted KL estimate) of a batch, with input dropout."""
        net = self.network
        mu, logvar = net.encoder(x, self.config.dropout)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        nll = multinomial_nll(net.decoder(z), x)
        kl = (log_normal_pdf(z, mu, logvar) - net.log_prior(x, z)).sum(dim=-1)
        return nll, (kl * self.kl_weight(x)).mean()

    def decoder_nll(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder phase's loss: no dropout, and no KL term (it does not depend on the
        decoder), so the encoder runs without building a graph."""
        net = self.network
        with torch.no_grad():
            mu, logvar = net.encoder(x, 0.0)
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        return multinomial_nll(net.decoder(z), x)

    def training_step(self, batch: Batch, step: int) -> dict[str, Any]:
        c, net = self.config, self.network
        phase, refresh = recvae_phase(step, self._batches_per_epoch, c.encoder_epochs,
                                      c.decoder_epochs)
        x = batch.rows
        if phase == "encoder":
            optimizer, params = self.encoder_optimizer, net.encoder.parameters()
            nll, kl = self.negative_elbo(x)
        else:
            if refresh:
                net.update_prior()
            optimizer, params = self.decoder_optimizer, net.decoder.parameters()
            nll, kl = self.decoder_nll(x), torch.zeros((), device=x.device)
        loss = nll + kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if c.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, c.grad_clip)
        optimizer.step()
        return {"loss": loss.detach(), "nll": nll.detach(), "kl": kl.detach(),
                "encoder_phase": float(phase == "encoder")}

    def forward_scores(self, history: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        check_history(self.name, history, self.n_items)
        return self.network.scores(binarize(history))

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        with weights_must_match(self.name):
            super().load_state_dict(state)
