"""The shared training engine for neural models (see `recsys.training.trainer`)."""

from recsys.training.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from recsys.training.trainer import (
    DeviceRows,
    RowSampler,
    Trainer,
    TrainingDiverged,
    TrainResult,
    configure_determinism,
    fit,
    lower_is_better,
    seed_everything,
)

__all__ = [
    "CheckpointError",
    "DeviceRows",
    "RowSampler",
    "TrainResult",
    "Trainer",
    "TrainingDiverged",
    "configure_determinism",
    "fit",
    "latest_checkpoint",
    "load_checkpoint",
    "lower_is_better",
    "save_checkpoint",
    "seed_everything",
]
