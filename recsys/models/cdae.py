"""CDAE (Wu, DuBois, Zheng, Ester: "Collaborative Denoising Auto-Encoders for Top-N
Recommender Systems", WSDM 2016).

A denoising autoencoder over the user's 0/1 history with one extra input node per user: the
hidden layer is ``h(W x~ + V_u + b)``, where ``x~`` is the history corrupted by unbiased dropout
(ratio ``corruption``, kept entries scaled by 1 / (1 - corruption)) and ``V_u`` a learned user
vector; the output is ``f(W' h + b')``. ``h`` and ``f`` are configurable (sigmoid, identity, tanh,
relu / identity, sigmoid) and the loss is logistic (binary cross-entropy on the logits, the
paper's choice for ranking) or square.

Differences from the paper, on purpose: the loss sums over the whole catalogue instead of
sampling negatives (the batch is dense anyway), and the user vectors start at zero.

Users unknown to the model (id -1, folded in from a history) get the zero user vector, so their
score depends on their history only. User vectors start at zero and only a user's own training
row gives theirs a gradient; the trainer skips empty rows, so a user with no training
interactions (a held-out user of strong generalisation) keeps exactly the zero vector too and is
scored the same whether passed by id or as -1.
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
    activation_function,
    binarize,
    check_dims,
    check_history,
    weights_must_match,
)


class CDAENetwork(nn.Module):
    def __init__(self, n_users: int, n_items: int, hidden_dim: int, hidden_activation: str,
                 corruption: float) -> None:
        super().__init__()
        self.encoder = nn.Linear(n_items, hidden_dim)
        self.decoder = nn.Linear(hidden_dim, n_items)
        self.user_embedding = nn.Embedding(n_users, hidden_dim)
        nn.init.zeros_(self.user_embedding.weight)
        self.activation = activation_function(hidden_activation)
        self.corruption = corruption

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        """V_u for known users, zeros for -1 (unknown, folded in from a history)."""
        known = users >= 0
        vectors = self.user_embedding(users.clamp(min=0))
        return vectors * known.unsqueeze(-1).to(vectors.dtype)

    def forward(self, x: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """Logits (pre-activation outputs); corruption applies in training mode only."""
        x = F.dropout(x, p=self.corruption, training=self.training)
        hidden = self.activation(self.encoder(x) + self.user_vectors(users))
        return self.decoder(hidden)


class CDAEConfig(TrainConfig):
    hidden_dim: int = Field(200, ge=1)
    corruption: float = Field(0.5, ge=0, lt=1)
    hidden_activation: Literal["sigmoid", "identity", "tanh", "relu"] = "sigmoid"
    output_activation: Literal["sigmoid", "identity"] = "sigmoid"
    loss: Literal["logistic", "square"] = "logistic"
    l2: float = Field(1e-4, ge=0)
    # The shared engine's keys, with the values validation chose (configs/cdae.yaml).
    batch_size: int = Field(128, ge=1)
    epochs: int = Field(300, ge=1)


def cdae_loss(logits: torch.Tensor, x: torch.Tensor, loss: str, output_activation: str
              ) -> torch.Tensor:
    """Per-user sum over the catalogue, averaged over the batch."""
    if loss == "logistic":
        # The logistic loss needs probabilities: it always reads the logits through a sigmoid.
        per_entry = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    else:
        out = torch.sigmoid(logits) if output_activation == "sigmoid" else logits
        per_entry = (out - x).pow(2)
    return per_entry.sum(dim=-1).mean()


class CDAE(NeuralRecommender):
    """CDAE; users unknown to the model (-1) are folded in with a zero user vector."""

    name = "cdae"
    family = "autoencoder"
    Config = CDAEConfig
    config: CDAEConfig
    # What --tune searches: the grid, and the Optuna study's space (`recsys.models.tuning`).
    tune_grid = {"corruption": [0.2, 0.5, 0.8]}
    search_space = {
        **NEURAL_SPACE,
        "corruption": {"low": 0.0, "high": 0.9},
        "hidden_dim": {"low": 50, "high": 600, "step": 50},
        "l2": {"low": 1e-06, "high": 0.01, "log": True},
    }

    def build(self, n_users: int, n_items: int) -> None:
        c = self.config
        check_dims(self.name, [c.hidden_dim], n_items, "hidden_dim")
        self.n_users, self.n_items = n_users, n_items
        self.network = CDAENetwork(n_users, n_items, c.hidden_dim, c.hidden_activation,
                                   c.corruption)

    def training_matrix(self, train: Interactions) -> sp.csr_matrix:
        # Rows stay aligned with user ids, so batch.index picks the user vectors. The trainer
        # skips empty rows: a user without training data gets no gradient (see the docstring).
        return train.binary()

    def training_step(self, batch: Batch, step: int) -> dict[str, Any]:
        c = self.config
        x = batch.rows
        users = batch.index
        logits = self.network(x, users)
        loss = cdae_loss(logits, x, c.loss, c.output_activation)
        net = self.network
        reg = c.l2 * (net.encoder.weight.pow(2).sum() + net.decoder.weight.pow(2).sum()
                      + net.user_embedding(users).pow(2).sum())
        return {"loss": loss + reg, "recon": loss.detach(), "l2": reg.detach()}

    def forward_scores(self, history: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        check_history(self.name, history, self.n_items)
        users = torch.where(users < self.n_users, users, torch.full_like(users, -1))
        return self.network(binarize(history), users)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        with weights_must_match(self.name):
            super().load_state_dict(state)

