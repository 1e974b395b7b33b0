"""Base class for neural recommenders trained by the shared engine (recsys.training).

The model owns its network, its loss and its training step; the trainer owns the loop (batches,
optimiser, LR schedule, gradient clipping, bf16 autocast, validation, early stopping with the best
weights restored, checkpoints and resume, seeds, devices, progress, NaN guard, tracker) and knows
nothing model-specific. ``NeuralRecommender.fit`` hands the model to the engine through the
training protocol (`recsys.training.api`: `Batch`, `FitContext`, `FitCallbacks`), the one part
of `recsys.training` a model imports.

A subclass sets ``name``, ``Config`` (a subclass of `TrainConfig`, so every engine option is a
config key) and implements:

- ``build(n_users, n_items)``: create ``self.network`` (an ``nn.Module``) of the right shape,
  on the CPU (the trainer moves it to ``self.device``). Statistics learned from the data (means,
  rating scale, ...) live in the network's buffers, so ``load_state_dict`` can rebuild the model
  from its config and shape alone. Called again by ``load_state_dict``: keep it deterministic
  given the torch seed and free of data access.
- ``setup(train, ctx)`` (optional): called once per fit after ``build`` and before training, with
  the training `Interactions` and the `FitContext`: check the data suits the model (raise
  `RecsysError` with one line), fill data-derived buffers (``ctx.data_meta`` holds the dataset's
  metadata, e.g. ``rating_scale`` and ``implicit``).
- ``training_matrix(train)``: the CSR whose *rows* are batched (users x items by default;
  item-based models return the transpose). Rows without any entry are skipped unless
  ``train_on_empty_rows = True``.
- ``training_step(batch, step)``: the loss for one `Batch` (``batch.rows``: dense float32 rows of
  the training matrix on the device; ``batch.index``: their row ids). Return a dict with at least
  ``"loss"`` (a scalar tensor the trainer back-propagates and checks for NaN/Inf) and any other
  parts to log (floats or scalar tensors, e.g. ``"kl"``, ``"beta"``); the trainer logs per-epoch
  means of every key. ``step`` is the global step (batches since the start, resume-safe):
  schedules such as KL annealing are plain functions of it, never hidden counters.
- ``cuda_graph_safe = True`` (opt-in): ``training_step`` can be captured as a CUDA graph: no
  host sync or Python branch on tensor values, fixed shapes for a fixed batch size, and ``step``
  may arrive as a 0-dim int64 device tensor (schedules then use tensor ops, see
  `recsys.models.multvae.kl_beta`). The trainer then replays full batches as one graph on CUDA.
- Models with several optimisers (GANs) set ``manual_optimization = True``, create them in
  ``configure_optimizers`` (from ``self.config``: ``lr``, ``weight_decay``, ``grad_clip``) and
  zero/backward/clip/step them inside ``training_step``; the trainer then only reads the returned
  dict (``"loss"`` still required: a detached scalar it checks and logs). The trainer
  checkpoints and schedules every optimiser returned.
- ``forward_scores(history, users)``: scores ``(batch, n_items)`` from a dense users x items
  history batch on ``self.device``; called in eval mode under ``torch.no_grad()``.

The trainer fills ``self.device``, ``self.n_users``/``self.n_items``, ``self.history_`` (one dict
per epoch: ``epoch``, ``loss`` and the other step outputs, ``lr``, ``seconds``,
``valid_<metric>`` on validated epochs) and ``self.train_result_`` (a `TrainResult`). After a
refit on train + valid (`recsys.training.refit`) these stay the first fit's (the curves with
validation) and the refit's are ``self.refit_history_`` / ``self.refit_result_``.
``score`` (the `Recommender` protocol) densifies the CSR history on the device and calls
``forward_scores``; ``to(device)`` moves the model (evaluation and scoring call it; override it,
calling ``super().to``, if the model keeps other tensors on the device).

Randomness inside a step (dropout, noise, sampling) must come from torch's global RNG (or
``torch.randn(..., device=...)`` and friends): the trainer seeds and checkpoints it, which is what
makes a resumed run equal an uninterrupted one.
"""

from __future__ import annotations

from typing import Any, ClassVar, Self

import numpy as np
import scipy.sparse as sp
import torch

from recsys.config import TrainConfig
from recsys.data.interactions import EvalSplit, Interactions
from recsys.models.base import FitContext, Recommender, csr_to_dense
from recsys.training.api import Batch, TrainResult
from recsys.training.api import fit as train_with_engine

__all__ = ["NEURAL_SPACE", "Batch", "NeuralRecommender"]

# The engine's keys every neural model's search space starts from: learning rates vary over
# orders of magnitude (log-uniform); weight decay is a few fixed strengths, 0 among them.
NEURAL_SPACE: dict[str, dict[str, Any]] = {
    "lr": {"low": 1e-4, "high": 1e-2, "log": True},
    "weight_decay": {"choices": [0.0, 1e-6, 1e-5, 1e-4]},
}


class NeuralRecommender(Recommender):
    Config: ClassVar[type[TrainConfig]] = TrainConfig
    family: ClassVar[str] = "autoencoder"
    manual_optimization: ClassVar[bool] = False
    train_on_empty_rows: ClassVar[bool] = False
    cuda_graph_safe: ClassVar[bool] = False
    # How ``training_step``'s loss combines the batch's rows: "mean" (a per-row average) or "sum".
    # Distributed training reads it so that the gradient over all ranks equals one process's
    # gradient on the global batch (DDP averages gradients; a summed loss needs their sum).
    loss_reduction: ClassVar[str] = "mean"

    network: torch.nn.Module
    device: torch.device = torch.device("cpu")
    train_result_: TrainResult

    # -- to implement ---------------------------------------------------------------------------

    def build(self, n_users: int, n_items: int) -> None:
        raise NotImplementedError

    def setup(self, train: Interactions, ctx: FitContext) -> None:
        """Check the data and fill data-derived buffers (after ``build``, before training)."""

    def training_matrix(self, train: Interactions) -> sp.csr_matrix:
        return train.matrix

    def training_step(self, batch: Batch, step: int) -> dict[str, Any]:
        raise NotImplementedError

    def forward_scores(self, history: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def on_epoch_end(self, epoch: int, record: dict[str, float]) -> None:
        """Called by the engine after each epoch with its record (loss parts, lr, seconds,
        ``valid_<metric>``): a model that watches its own training (CFGAN's collapse check)
        looks here rather than at ``history_``."""

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """Only for ``manual_optimization``; otherwise the trainer builds one from the config."""
        return []

    # -- shared behaviour -----------------------------------------------------------------------

    def fit(self, train: Interactions, valid: EvalSplit | None = None,
            ctx: FitContext | None = None) -> Self:
        train_with_engine(self, train, valid, ctx)
        return self

    def score(self, users: np.ndarray, history: sp.csr_matrix) -> torch.Tensor:
        self.network.eval()
        with torch.no_grad():
            dense = csr_to_dense(history, self.device)
            ids = torch.as_tensor(np.asarray(users, dtype=np.int64), device=self.device)
            return self.forward_scores(dense, ids).float()

    def to(self, device: torch.device | str) -> Self:
        """Move the network (and anything else the model keeps on the device) to ``device``."""
        self.device = torch.device(device)
        self.network.to(self.device)
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.network.state_dict())

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.build(self.n_users, self.n_items)
        self.network.load_state_dict(state)
        self.network.to(self.device)
        self.network.eval()
