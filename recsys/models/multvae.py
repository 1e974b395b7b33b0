"""Mult-VAE (Liang, Krishnan, Hoffman, Jebara: "Variational Autoencoders for Collaborative
Filtering", WWW 2018).

A user's 0/1 history x is L2-normalised, dropped out (p = 0.5 by default) and encoded by a tanh
MLP into the mean and log-variance of a Gaussian posterior over z (default I-600-200); a tanh MLP
decodes z back to logits over the catalogue (200-600-I). The loss is the multinomial negative
log-likelihood plus beta * KL(q(z|x) || N(0, I)), with beta annealed as a plain function of the
global step (`kl_beta`). The ramp is set in epochs (``anneal_epochs``: beta would reach 1 after
that many epochs, capped at ``anneal_cap``) so that it means the same share of training on
ml-100k as on ML-20M; ``total_anneal_steps`` gives the paper's absolute step count instead.
Training samples z = mu + sigma * eps; scoring uses z = mu.

Optional (``flow_layers > 0``): a richer posterior, RealNVP-style affine coupling layers applied
to the Gaussian sample. The KL term is then the single-sample Monte-Carlo estimate
``log q(z_K|x) - log N(z_K; 0, I)`` and scoring passes mu through the flow.

The layers, initialisation, likelihood and input checks it shares with Mult-DAE, CDAE and
RecVAE live in `recsys.models.nn` (`mlp`, `init_like_multvae`, `multinomial_nll`, ...); this file
is only Mult-VAE (its KL weight `kl_beta` and flow included).
"""

from __future__ import annotations

from typing import Any

import scipy.sparse as sp
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from recsys.config import TrainConfig
from recsys.data.interactions import Interactions
from recsys.models.base import FitContext
from recsys.models.neural import NEURAL_SPACE, Batch, NeuralRecommender
from recsys.models.nn import (
    PositiveInt,
    binarize,
    check_dims,
    check_history,
    init_like_multvae,
    log_normal_pdf,
    mlp,
    multinomial_nll,
    weights_must_match,
)
from recsys.training.api import batches_per_epoch as api_batches_per_epoch
from recsys.training.api import trained_rows

# -- the KL term -------------------------------------------------------------------------------


def kl_beta(step: int | torch.Tensor, anneal_cap: float, total_anneal_steps: float
            ) -> float | torch.Tensor:
    """KL weight at global step ``step``: ``min(anneal_cap, step / total_anneal_steps)``.

    ``total_anneal_steps = 0`` means no annealing (beta = anneal_cap from the first step). A
    0-dim tensor ``step`` (a CUDA-graph replay) gives a tensor, computed on its device.
    """
    if total_anneal_steps <= 0:
        return float(anneal_cap)
    if isinstance(step, torch.Tensor):
        return torch.clamp(step / total_anneal_steps, max=anneal_cap)
    return float(min(anneal_cap, step / total_anneal_steps))


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) in closed form, per-user sum averaged."""
    return (0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar)).sum(dim=-1).mean()


# -- a RealNVP-style flow on z -----------------------------------------------------------------


class AffineCoupling(nn.Module):
    """z_b <- z_b * exp(s(z_a)) + t(z_a), with z_a the masked half; log|det| = sum(s)."""

    def __init__(self, dim: int, hidden: int, parity: int) -> None:
        super().__init__()
        mask = (torch.arange(dim) % 2 == parity).to(torch.float32)
        self.register_buffer("mask", mask)
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 2 * dim))
        # Start as the identity map so that flow_layers > 0 begins exactly as the plain VAE.
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kept = z * self.mask
        s, t = self.net(kept).chunk(2, dim=-1)
        s = torch.tanh(s) * (1 - self.mask)  # bounded scales keep exp(s) stable
        t = t * (1 - self.mask)
        return kept + (1 - self.mask) * (z * torch.exp(s) + t), s.sum(dim=-1)


# -- the network --------------------------------------------------------------------------------


class MultVAENetwork(nn.Module):
    def __init__(self, n_items: int, hidden_dims: list[int], latent_dim: int, dropout: float,
                 flow_layers: int = 0) -> None:
        super().__init__()
        enc = [n_items, *hidden_dims]
        # The encoder's last layer outputs mean and log-variance side by side.
        self.encoder = mlp([*enc, 2 * latent_dim], last_activation=False)
        self.decoder = mlp([latent_dim, *reversed(hidden_dims), n_items], last_activation=False)
        self.dropout = nn.Dropout(dropout)
        self.latent_dim = latent_dim
        init_like_multvae(self)
        self.flows = nn.ModuleList(
            AffineCoupling(latent_dim, 2 * latent_dim, i % 2) for i in range(flow_layers))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.dropout(F.normalize(x, dim=-1))
        mu, logvar = self.encoder(h).chunk(2, dim=-1)
        return mu, logvar

    def flow(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_det = torch.zeros(z.shape[0], device=z.device, dtype=z.dtype)
        for layer in self.flows:
            z, ld = layer(z)
            log_det = log_det + ld
        return z, log_det

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training pass: (logits, KL estimate) with a reparameterised sample of z."""
        mu, logvar = self.encode(x)
        z0 = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        if not self.flows:
            return self.decoder(z0), kl_standard_normal(mu, logvar)
        z, log_det = self.flow(z0)
        log_q = log_normal_pdf(z0, mu, logvar).sum(-1) - log_det
        log_p = log_normal_pdf(z, torch.zeros_like(z), torch.zeros_like(z)).sum(-1)
        return self.decoder(z), (log_q - log_p).mean()

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Inference: decode the posterior mean (pushed through the flow, if any)."""
        mu, _ = self.encode(x)
        if self.flows:
            mu, _ = self.flow(mu)
        return self.decoder(mu)


def batches_per_epoch(model: NeuralRecommender, train: Interactions) -> int:
    """Steps in one epoch of the trainer on ``train``: its empty rows skipped (unless the model
    trains on them), the last partial batch kept (the engine's rule, `recsys.training.api`).
    Under torchrun ``batch_size`` is the global batch, so this is the count of global steps."""
    matrix = model.training_matrix(train).tocsr()
    rows = trained_rows(matrix, model.train_on_empty_rows)
    return max(1, api_batches_per_epoch(len(rows), model.config.batch_size))


class MultVAEConfig(TrainConfig):
    hidden_dims: list[PositiveInt] = [600]  # pydantic copies mutable defaults
    latent_dim: int = Field(200, ge=1)
    dropout: float = Field(0.5, ge=0, lt=1)
    anneal_cap: float = Field(0.2, ge=0)
    # KL ramp in epochs: beta = min(anneal_cap, epochs_done / anneal_epochs), epochs_done = global
    # step / batches per epoch (0: no annealing). Counting epochs, not steps, makes the schedule
    # independent of the data size: 125 reaches the cap of 0.2 after 25 epochs on any data.
    anneal_epochs: float | None = Field(125.0, ge=0)
    # The paper's absolute form, beta = min(anneal_cap, step / total_anneal_steps) (200000 on
    # ML-20M at batch 500); giving it replaces anneal_epochs (only one of them may be set).
    total_anneal_steps: int | None = Field(None, ge=0)
    epochs: int = Field(300, ge=1)
    batch_size: int = Field(128, ge=1)
    flow_layers: int = Field(0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _steps_replace_epochs(cls, data: Any) -> Any:
        # A config that gives the paper's step count without an epoch ramp means the steps: the
        # epoch ramp's default then yields (a saved config from before anneal_epochs reads so).
        if (isinstance(data, dict) and data.get("total_anneal_steps") is not None
                and "anneal_epochs" not in data):
            data = {**data, "anneal_epochs": None}
        return data

    @model_validator(mode="after")
    def _one_schedule(self) -> MultVAEConfig:
        if (self.anneal_epochs is None) == (self.total_anneal_steps is None):
            both = self.anneal_epochs is not None
            shown = "null" if not both else None
            raise ValueError(
                f"anneal_epochs={shown or self.anneal_epochs} and total_anneal_steps="
                f"{shown or self.total_anneal_steps}: " + (
                    "set only one (anneal_epochs=null to use the paper's step count)" if both
                    else "set one of them (0 means no annealing)"))
        return self

    def anneal_steps(self, steps_per_epoch: int) -> float:
        """The step count of the ramp (``kl_beta``'s ``total_anneal_steps``; 0: none)."""
        if self.total_anneal_steps is not None:
            return float(self.total_anneal_steps)
        return float(self.anneal_epochs or 0.0) * steps_per_epoch


class MultVAE(NeuralRecommender):
    """Mult-VAE; ``score`` folds in any user from their history vector (no retraining)."""

    name = "multvae"
    family = "vae"
    cuda_graph_safe = True
    Config = MultVAEConfig
    config: MultVAEConfig
    # What --tune searches: the grid, and the Optuna study's space (`recsys.models.tuning`).
    tune_grid = {"anneal_cap": [0.1, 0.2, 0.5]}
    search_space = {
        **NEURAL_SPACE,
        "dropout": {"low": 0.0, "high": 0.8},
        "latent_dim": {"low": 50, "high": 400, "step": 50},
        "hidden_dims": {"choices": [[200], [600], [600, 400]]},
        "anneal_cap": {"low": 0.05, "high": 1.0},
        "anneal_epochs": {"low": 10.0, "high": 300.0, "log": True},
    }

    def build(self, n_users: int, n_items: int) -> None:
        c = self.config
        check_dims(self.name, [*c.hidden_dims, c.latent_dim], n_items, "latent_dim")
        self.n_users, self.n_items = n_users, n_items
        self.network = MultVAENetwork(n_items, list(c.hidden_dims), c.latent_dim, c.dropout,
                                      c.flow_layers)

    def setup(self, train: Interactions, ctx: FitContext) -> None:
        # The epoch ramp becomes a step count once the data fixes the batches per epoch; a
        # resume or a refit recomputes it from its own training data.
        self.steps_per_epoch_ = batches_per_epoch(self, train)

    def training_matrix(self, train: Interactions) -> sp.csr_matrix:
        return train.binary()

    def training_step(self, batch: Batch, step: int) -> dict[str, Any]:
        c = self.config
        x = batch.rows
        logits, kl = self.network(x)
        nll = multinomial_nll(logits, x)
        # The ramp's length is a Python float: a device-tensor step (a CUDA-graph replay) stays
        # on the device.
        beta = kl_beta(step, c.anneal_cap, self._anneal_steps())
        return {"loss": nll + beta * kl, "nll": nll.detach(), "kl": kl.detach(), "beta": beta}

    def _anneal_steps(self) -> float:
        c = self.config
        if c.total_anneal_steps is not None or not c.anneal_epochs:
            return c.anneal_steps(0)
        spe = getattr(self, "steps_per_epoch_", None)
        if spe is None:
            raise RuntimeError("multvae: anneal_epochs needs the batches per epoch, which "
                               "setup() computes from the training data; call it first")
        return c.anneal_steps(spe)

    def forward_scores(self, history: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        check_history(self.name, history, self.n_items)
        return self.network.scores(binarize(history))

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        with weights_must_match(self.name):
            super().load_state_dict(state)
