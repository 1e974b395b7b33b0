"""The shared training engine for neural models (see `recsys.training.trainer`).

Names are imported from their modules on first use: a model imports the training protocol
(`recsys.training.api`) without loading the engine, which imports the models.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "CheckpointError": "checkpoint", "latest_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint", "save_checkpoint": "checkpoint",
    "DeviceRows": "trainer", "RowSampler": "trainer", "Trainer": "trainer",
    "TrainingDiverged": "trainer", "configure_determinism": "trainer", "fit": "trainer",
    "lower_is_better": "trainer", "seed_everything": "trainer", "TrainResult": "api",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'recsys.training' has no attribute '{name}'")
    return getattr(importlib.import_module(f"recsys.training.{_HOMES[name]}"), name)
