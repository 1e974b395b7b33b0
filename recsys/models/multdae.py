"""Mult-DAE (Liang et al., WWW 2018): the denoising counterpart of Mult-VAE.

Same input path (L2-normalised 0/1 history, input dropout) and multinomial likelihood, but a
deterministic tanh encoder and no KL term: default I-200-I. Regularisation is the paper's
weight decay, ``l2 * sum ||W||^2`` over the weight matrices (biases excluded) added to each
batch's loss (``l2 = 0.01`` in the authors' code; TensorFlow's ``l2_regularizer(lam)`` is
``lam * ||W||^2 / 2`` and their loss adds it twice).

``contractive`` (off by default) adds a contractive autoencoder's penalty (Rifai et al., ICML
2011): ``contractive * ||J||_F^2`` averaged over the batch, as the likelihood is, J the Jacobian
of the tanh encoder with respect to its input (the normalised, dropped-out row the encoder
reads), in closed form per layer (`recsys.models.nn.contractive_encode`).
"""

from __future__ import annotations

from typing import Any

import scipy.sparse as sp
import torch
from pydantic import Field
from torch import nn

from recsys.config import TrainConfig
from recsys.data.interactions import Interactions
from recsys.models.neural import NEURAL_SPACE, Batch, NeuralRecommender
from recsys.models.nn import (
    PositiveInt,
    binarize,
    check_dims,
    check_history,
    contractive_encode,
    init_like_multvae,
    l2_penalty,
    layers_of,
    mlp,
    multinomial_nll,
    weights_must_match,
)


class MultDAENetwork(nn.Module):
    def __init__(self, n_items: int, hidden_dims: list[int], dropout: float) -> None:
        super().__init__()
        dims = [n_items, *hidden_dims]
        # Encoder layers all end in tanh (the code is hidden_dims[-1] wide); the decoder mirrors.
        self.encoder = mlp(dims, last_activation=True)
        self.decoder = mlp(list(reversed(dims)), last_activation=False)
        self.dropout = nn.Dropout(dropout)
        init_like_multvae(self)

    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(torch.nn.functional.normalize(x, dim=-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(self.encoder_input(x)))

    def forward_contractive(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits and each row's contractive penalty."""
        code, penalty = contractive_encode(layers_of(self.encoder), self.encoder_input(x))
        return self.decoder(code), penalty

    def weights(self) -> list[nn.Linear]:
        return [m for m in self.modules() if isinstance(m, nn.Linear)]


class MultDAEConfig(TrainConfig):
    hidden_dims: list[PositiveInt] = [200]  # pydantic copies mutable defaults
    dropout: float = Field(0.5, ge=0, lt=1)
    # The paper's 0.01 was for ML-20M; ml-100k's validation part prefers 0.001 (see the YAML).
    l2: float = Field(0.001, ge=0)
    # Weight of the contractive penalty ||J_encoder||_F^2 (a batch mean); 0 is off.
    contractive: float = Field(0.0, ge=0)
    # The shared engine's keys, with the values validation chose (configs/multdae.yaml).
    batch_size: int = Field(128, ge=1)
    epochs: int = Field(300, ge=1)


class MultDAE(NeuralRecommender):
    """Mult-DAE; ``score`` folds in any user from their history vector (no retraining)."""

    name = "multdae"
    family = "autoencoder"
    cuda_graph_safe = True
    Config = MultDAEConfig
    config: MultDAEConfig
    # What --tune searches: the grid, and the Optuna study's space (`recsys.models.tuning`).
    tune_grid = {"l2": [0.0001, 0.001, 0.01]}
    search_space = {
        **NEURAL_SPACE,
        "dropout": {"low": 0.0, "high": 0.8},
        "hidden_dims": {"choices": [[100], [200], [600]]},
        "l2": {"low": 1e-05, "high": 0.1, "log": True},
    }

    def build(self, n_users: int, n_items: int) -> None:
        c = self.config
        check_dims(self.name, list(c.hidden_dims), n_items, "hidden_dims")
        self.n_users, self.n_items = n_users, n_items
        self.network = MultDAENetwork(n_items, list(c.hidden_dims), c.dropout)

    def training_matrix(self, train: Interactions) -> sp.csr_matrix:
        return train.binary()

    def training_step(self, batch: Batch, step: int) -> dict[str, Any]:
        x = batch.rows
        c = self.config
        if c.contractive > 0:
            logits, rows_penalty = self.network.forward_contractive(x)
        else:
            logits = self.network(x)
        nll = multinomial_nll(logits, x)
        reg = c.l2 * l2_penalty(self.network.weights())
        parts = {"nll": nll.detach(), "l2": reg.detach()}
        loss = nll + reg
        if c.contractive > 0:
            contraction = c.contractive * rows_penalty.mean()
            loss = loss + contraction
            parts["contractive"] = contraction.detach()
        return {"loss": loss, **parts}

    def forward_scores(self, history: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        check_history(self.name, history, self.n_items)
        return self.network(binarize(history))

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        with weights_must_match(self.name):
            super().load_state_dict(state)
