"""Base class for neural recommenders trained by the shared engine (recsys.training).

The model owns its network, its loss and its training step; the trainer owns the loop (batches,
optimiser, validation, early stopping, checkpoints, devices) and knows nothing model-specific.

A subclass implements:

- ``build(n_users, n_items)``: create ``self.network`` (an ``nn.Module``) of the right shape.
  Statistics learned from the data (means, ...) live in the network's buffers, so that
  ``load_state_dict`` can rebuild the model from its config and shape alone.
- ``training_matrix(train)``: the CSR whose *rows* are batched (users x items by default;
  item-based models return the transpose).
- ``training_step(batch, step)``: compute the loss for one batch and return a dict with at
  least ``"loss"`` (a scalar tensor the trainer back-propagates) and any other parts to log
  (floats or scalar tensors, e.g. ``"kl"``, ``"beta"``). Schedules such as KL annealing are
  plain functions of ``step`` (the global step), never hidden counters. Models with several
  optimisers (GANs) set ``manual_optimization = True``, create them in ``configure_optimizers``
  and step them inside ``training_step``; the trainer then only reads the returned dict.
- ``forward_scores(history, users)``: scores from a dense history batch (eval mode; the
  trainer/scorer wraps it in ``torch.no_grad()``).

The trainer fills ``self.device``; ``score`` (the `Recommender` protocol) densifies the CSR
history on that device and calls ``forward_scores``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
import torch

from recsys.config import TrainConfig
from recsys.data.interactions import Interactions
from recsys.models.base import Recommender, csr_to_dense


@dataclass
class Batch:
    """One training batch: dense rows on the device and their row indices in the matrix."""

    rows: torch.Tensor  # (batch, n_columns) float32, on the training device
    index: torch.Tensor  # (batch,) int64 row ids (user ids, or item ids for item-based models)


class NeuralRecommender(Recommender):
    Config: ClassVar[type[TrainConfig]] = TrainConfig
    family: ClassVar[str] = "autoencoder"
    manual_optimization: ClassVar[bool] = False

    network: torch.nn.Module
    device: torch.device = torch.device("cpu")

    # -- to implement ---------------------------------------------------------------------------

    def build(self, n_users: int, n_items: int) -> None:
        raise NotImplementedError

    def training_matrix(self, train: Interactions) -> sp.csr_matrix:
        return train.matrix

    def training_step(self, batch: Batch, step: int) -> dict[str, Any]:
        raise NotImplementedError

    def forward_scores(self, history: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """Only for ``manual_optimization``; otherwise the trainer builds one from the config."""
        return []

    # -- shared behaviour -----------------------------------------------------------------------

    def score(self, users: np.ndarray, history: sp.csr_matrix) -> torch.Tensor:
        self.network.eval()
        with torch.no_grad():
            dense = csr_to_dense(history, self.device)
            ids = torch.as_tensor(np.asarray(users, dtype=np.int64), device=self.device)
            return self.forward_scores(dense, ids).float()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.network.state_dict())

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.build(self.n_users, self.n_items)
        self.network.load_state_dict(state)
