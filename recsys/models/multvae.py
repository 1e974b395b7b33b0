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

Optional (``item_features = True``): item cold start on the decoder side. The output layer's item
vectors and biases are built from the item's feature vector f_i (`recsys.data.features`) as well as
a free embedding: logit_i = h . (m_i w_i + A f_i) + m_i b_i + a . f_i, with h the decoder's last
hidden layer, (w_i, b_i) the free part and m_i = 1 for an item with training interactions, 0 for
one without. Such an item (a new one, or the cold-items split's held-out items) gets its score
from its features alone, and stays out of the training softmax: having no interaction is not
evidence against it, only the absence of any. The feature matrix and the trained-items mask are
network buffers, so that a saved model, the pyfunc model and a resumed run carry them. Off by
default, which builds exactly the network (and weights) of the plain model.

The layers, initialisation, likelihood and input checks it shares with Mult-DAE, CDAE and
RecVAE live in `recsys.models.nn` (`mlp`, `init_like_multvae`, `multinomial_nll`, ...); this file
is only Mult-VAE (its KL weight `kl_beta` and flow included) and the feature-aware decoder
end (`ItemDecoder`, `FeatureItemOutput`) and ELBO (`MultVAE.elbo`) that CVAE reuses.
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from recsys.config import TrainConfig
from recsys.data.interactions import EvalSplit, Interactions
from recsys.errors import RecsysError
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


# -- item vectors from features ----------------------------------------------------------------

ITEM_FEATURES = "item_output.item_features"  # state_dict keys of the option's buffers
TRAINED_ITEMS = "item_output.trained_items"


class FeatureItemOutput(nn.Module):
    """The output layer with item vectors built from item features as well as a free embedding:
    ``logits = m * (h W^T + b) + (h A + a) F^T`` for decoder states h (batch x d), the free
    part (W, b) = ``free``, the feature map (A, a) = ``from_features`` and the item feature
    matrix F (items x features); m (``trained_items``) is 1 for items with training
    interactions and 0 for the others, whose scores come from F alone."""

    def __init__(self, in_dim: int, item_features: torch.Tensor) -> None:
        super().__init__()
        n_items, n_features = item_features.shape
        self.free = nn.Linear(in_dim, n_items)
        # h A + a, then times F^T: (h . A f_i) + (a . f_i) without an items x d matrix.
        self.from_features = nn.Linear(in_dim, n_features)
        self.register_buffer("item_features", item_features.to(torch.float32).clone())
        # 1.0 / 0.0 per item (float, as DDP broadcasts buffers); every item counts as trained
        # until setup() sees the training data.
        self.register_buffer("trained_items", torch.ones(n_items))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        free = self.free(h) * self.trained_items.to(h.dtype)
        return free + self.from_features(h) @ self.item_features.to(h.dtype).T

    def training_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` with the items that have no training interaction taken out of the softmax
        (a finite floor, not -inf: their zero counts times it stay 0, not NaN)."""
        floor = torch.finfo(logits.dtype).min / 2
        return logits.masked_fill(self.trained_items == 0, floor)


# -- the network --------------------------------------------------------------------------------


class ItemDecoder(nn.Module):
    """A network whose decoder ends in logits over the catalogue: the plain tanh MLP, or (given
    item features) its hidden layers followed by `FeatureItemOutput`. Mult-VAE's and CVAE's
    networks are built on it, so that the item cold-start option is one piece for both."""

    decoder: nn.Sequential
    item_output: FeatureItemOutput | None

    def build_decoder(self, in_dim: int, hidden_dims: list[int], n_items: int,
                      item_features: torch.Tensor | None) -> None:
        """``in_dim -> reversed(hidden_dims) -> n_items``; the option changes only the output
        layer, so that without it the modules (and a seeded draw of their weights) are the
        plain model's."""
        self.item_output = None
        if item_features is None:
            self.decoder = mlp([in_dim, *reversed(hidden_dims), n_items], last_activation=False)
            return
        # The decoder's hidden layers as in the plain model, then the feature-aware output.
        self.decoder = mlp([in_dim, *reversed(hidden_dims)], last_activation=True)
        self.item_output = FeatureItemOutput(hidden_dims[0] if hidden_dims else in_dim,
                                             item_features)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = self.decoder(z)
        return h if self.item_output is None else self.item_output(h)


class MultVAENetwork(ItemDecoder):
    def __init__(self, n_items: int, hidden_dims: list[int], latent_dim: int, dropout: float,
                 flow_layers: int = 0, item_features: torch.Tensor | None = None) -> None:
        super().__init__()
        enc = [n_items, *hidden_dims]
        # The encoder's last layer outputs mean and log-variance side by side.
        self.encoder = mlp([*enc, 2 * latent_dim], last_activation=False)
        self.build_decoder(latent_dim, hidden_dims, n_items, item_features)
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
            return self.decode(z0), kl_standard_normal(mu, logvar)
        z, log_det = self.flow(z0)
        log_q = log_normal_pdf(z0, mu, logvar).sum(-1) - log_det
        log_p = log_normal_pdf(z, torch.zeros_like(z), torch.zeros_like(z)).sum(-1)
        return self.decode(z), (log_q - log_p).mean()

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Inference: decode the posterior mean (pushed through the flow, if any)."""
        mu, _ = self.encode(x)
        if self.flows:
            mu, _ = self.flow(mu)
        return self.decode(mu)


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
    # Item vectors of the output layer built from item features as well as a free embedding,
    # so that items without training interactions are ranked from their features (needs data
    # with item features: `prepare --item-features FILE`, or MovieLens' genres and year).
    item_features: bool = False

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

    item_features_: torch.Tensor | None = None  # with ``item_features``: from fit or the weights

    def fit(self, train: Interactions, valid: EvalSplit | None = None,
            ctx: FitContext | None = None) -> Self:
        if self.config.item_features:
            self.item_features_ = item_feature_matrix(self.name, ctx, train)
        return super().fit(train, valid, ctx)

    def build(self, n_users: int, n_items: int) -> None:
        c = self.config
        check_dims(self.name, [*c.hidden_dims, c.latent_dim], n_items, "latent_dim")
        self.n_users, self.n_items = n_users, n_items
        self.network = MultVAENetwork(n_items, list(c.hidden_dims), c.latent_dim, c.dropout,
                                      c.flow_layers, self._item_features(n_items))

    def _item_features(self, n_items: int) -> torch.Tensor | None:
        if not self.config.item_features:
            return None
        if self.item_features_ is None:
            raise RecsysError(f"{self.name}: item_features=true and no item features to build "
                              "the network with (fit it on data with item features, or load a "
                              "saved model)")
        return self.item_features_

    def setup(self, train: Interactions, ctx: FitContext) -> None:
        # The epoch ramp becomes a step count once the data fixes the batches per epoch; a
        # resume or a refit recomputes it from its own training data.
        self.steps_per_epoch_ = batches_per_epoch(self, train)
        if not self.config.item_features:
            return
        # A subclass whose network is not an `ItemDecoder` has no feature-aware output layer:
        # the option is refused there rather than ignored.
        output = self.network.item_output if isinstance(self.network, ItemDecoder) else None
        if output is None:
            raise RecsysError(f"{self.name}: item_features=true is not available for this "
                              "model's network; drop it")
        # Which items this fit has interactions for (a refit on train + valid may add some).
        counts = np.bincount(self.training_matrix(train).indices, minlength=self.n_items)
        output.trained_items.copy_(torch.from_numpy((counts > 0).astype(np.float32)))

    def training_matrix(self, train: Interactions) -> sp.csr_matrix:
        return train.binary()

    def training_step(self, batch: Batch, step: int) -> dict[str, Any]:
        logits, kl = self.network(batch.rows)
        return self.elbo(logits, kl, batch.rows, step)

    def elbo(self, logits: torch.Tensor, kl: torch.Tensor, x: torch.Tensor,
             step: int | torch.Tensor) -> dict[str, Any]:
        """The step's loss, multinomial NLL of ``x`` + beta * ``kl`` with the annealed beta,
        and its parts; the items without training interactions (``item_features``) are left
        out of the softmax."""
        if self.network.item_output is not None:
            logits = self.network.item_output.training_logits(logits)
        nll = multinomial_nll(logits, x)
        # The ramp's length is a Python float: a device-tensor step (a CUDA-graph replay) stays
        # on the device.
        beta = kl_beta(step, self.config.anneal_cap, self._anneal_steps())
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
        if self.config.item_features:
            table = state.get(ITEM_FEATURES)
            if table is None or table.ndim != 2 or table.shape[0] != self.n_items:
                raise RecsysError(f"{self.name}: the saved weights hold no {self.n_items}-row "
                                  f"'{ITEM_FEATURES}' matrix; the saved model is damaged")
            self.item_features_ = table.to(torch.float32)
        with weights_must_match(self.name):
            super().load_state_dict(state)


def item_feature_matrix(model: str, ctx: FitContext | None, train: Interactions
                        ) -> torch.Tensor:
    """The data's item features as a float32 tensor in catalogue order, for a model fitted with
    ``item_features``; one line when the data has none or they do not match the catalogue."""
    table = (ctx or FitContext()).features.item
    if table is None:
        raise RecsysError(f"{model}: item_features=true needs item features and the data has "
                          "none; prepare it with --item-features FILE (MovieLens brings genres "
                          "and year)")
    if table.values.shape[0] != train.n_items:
        raise RecsysError(f"{model}: {table.values.shape[0]:,} rows of item features for "
                          f"{train.n_items:,} items; prepare the data again")
    return torch.from_numpy(table.values.copy())
