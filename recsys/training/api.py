"""The training protocol: what models and the training engine share, and nothing else.

Models import this module (never the engine, `recsys.training.trainer`, nor a tracker): the
`Batch` a step receives, the `FitContext` a fit runs under, the `FitCallbacks` through which a
fit reports (params, per-epoch records, validation values; a tracker or a search's pruner sits
behind them), the `TrainResult` a fit leaves on the model, and the engine's batching rule
(`batches_per_epoch`). `fit` hands a neural model to the engine. This module imports nothing of
recsys but its data types, so that it has no place in an import cycle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
import torch

from recsys.data.features import Features

if TYPE_CHECKING:
    from recsys.data.interactions import EvalSplit, Interactions


@dataclass
class Batch:
    """One training batch: dense rows on the device and their row indices in the matrix."""

    rows: torch.Tensor  # (batch, n_columns) float32, on the training device
    index: torch.Tensor  # (batch,) int64 row ids (user ids, or item ids for item-based models)


class FitCallbacks:
    """What a fit reports, each a no-op here: a tracker (`recsys.tracking.callbacks`) or a
    search's trial (`recsys.training.search`) implements what it listens to.
    ``on_validation`` may end the fit by raising (a pruner)."""

    def on_fit_start(self, params: dict[str, Any]) -> None:
        """The engine's resolved settings, once per fit."""

    def on_epoch_end(self, epoch: int, record: dict[str, float]) -> None:
        """One epoch's record (loss parts, lr, seconds, ``valid_<metric>``)."""

    def on_resumed(self, history: list[dict[str, float]]) -> None:
        """A resumed fit's earlier epochs (epoch i+1 at index i), some perhaps never reported."""

    def on_validation(self, epoch: int, value: float) -> None:
        """The validation metric after an epoch; last in the epoch."""

    def on_fit_end(self, metrics: dict[str, float]) -> None:
        """Figures of the whole fit (e.g. the refit's epoch count)."""


@dataclass
class FitContext:
    """Run-level options a model's ``fit`` may use (the training engine reads them)."""

    run_dir: Path | None = None
    resume: bool = False
    quiet: bool = True
    # Everything the model needs to know about the data beyond the matrix (implicit flag,
    # rating scale), taken from the prepared dataset's metadata.
    data_meta: dict[str, Any] = field(default_factory=dict)
    # The dataset's side information (`Dataset.features`), aligned with the training matrix's
    # user and item vocabularies; a model that uses it keeps what it needs in its own state.
    features: Features = field(default_factory=Features)
    # Set for a refit on train + valid (`recsys.training.refit`): the training engine runs
    # exactly this many epochs, with no validation, and keeps the refit's checkpoints in their own
    # folder (`refit_checkpoint_dir`), apart from those of the fit that chose the epoch count.
    refit_epochs: int | None = None
    callbacks: FitCallbacks = field(default_factory=FitCallbacks)


@dataclass
class TrainResult:
    """What a fit did; also kept on the model as ``train_result_``."""

    epochs_run: int = 0
    global_step: int = 0
    best_epoch: int | None = None
    best_value: float | None = None
    metric: str | None = None
    stopped_early: bool = False
    resumed_from: int | None = None
    seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)


def batches_per_epoch(rows: int, batch_size: int, world_size: int = 1) -> int:
    """The engine's batches per epoch over ``rows`` training rows: the last partial batch kept;
    under DDP each rank's share of the rows, padded to the same count on every rank."""
    return math.ceil(math.ceil(rows / world_size) / batch_size)


def trained_rows(matrix: sp.csr_matrix, on_empty_rows: bool) -> np.ndarray:
    """The rows of a training matrix the engine batches: every row, or (the default) the rows
    with at least one entry."""
    return (np.arange(matrix.shape[0]) if on_empty_rows
            else np.flatnonzero(np.diff(matrix.indptr)))


def fit(model: Any, train: Interactions, valid: EvalSplit | None = None,
        ctx: FitContext | None = None) -> TrainResult:
    """Train a neural model with the shared engine (the data-parallel one under torchrun)."""
    from recsys.training.trainer import fit as engine_fit

    return engine_fit(model, train, valid, ctx)
