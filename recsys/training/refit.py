"""The final fit: on train, choices made on valid, then a refit on train + valid.

Validation serves two choices: `--tune` picks hyper-parameters and early stopping picks a neural
model's epoch. Once they are made, the interactions held out for them are training data like any
other, so by default the final model is fitted again on train + valid with the chosen settings
(`fit_final`; `--no-refit` keeps the model fitted on train alone):

- neural models train for the best epoch of the first fit, from scratch, with no validation and
  no early stopping (``FitContext.refit_epochs``), checkpointing into a folder of their own
  (`recsys.training.checkpoint.refit_checkpoint_dir`), so that a kill during the refit resumes
  the refit, and the first fit's checkpoints (what says the fit is finished) are left as they are;
- baselines have no epochs to choose: they are fitted once, on train + valid directly (their
  fit on train alone would be thrown away).

The training matrix gains the valid part's interactions. In the per-user protocols valid is
carved from each user's training interactions, so the rows (users, or items for item-based
models) keep their count: the same number of epochs sees proportionally more data per epoch in
as many steps, and a schedule by steps (Mult-VAE's KL annealing) sees the same steps.

Strong generalisation (`--split strong`): valid_history and valid are the rows of held-out
validation users, who have no training rows. They are not test users, so the refit adds them as
training rows (valid_history + valid: their whole history). That adds rows: an epoch then takes
proportionally more steps (the share of validation users, 1/8 with the defaults), so the chosen
epoch count sees that much more data and a schedule by steps runs that much further; epochs, not
steps, are what early stopping measured. Test users (test_history, test) never train.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, replace
from typing import Any

from recsys.data.interactions import Dataset, EvalSplit, Interactions
from recsys.errors import RecsysError
from recsys.models.base import FitContext, Recommender
from recsys.training.api import FitCallbacks

# The parts a refit trains on, in `Dataset.history` order: everything known before the test
# users' own history (`Dataset.history("test_history")`).
REFIT_PARTS = ("train", "valid_history", "valid")
# Per-epoch metrics of the refit reach the tracker under this prefix: the first fit's curves
# (loss, valid_ndcg@100, ...) keep their keys and steps.
REFIT_PREFIX = "refit_"


@dataclass
class FinalFit:
    """How the final model was fitted; ``record()`` is what run.json keeps."""

    seconds: float  # all fitting: the fit on train and the refit
    refit: dict[str, Any] | None = None  # {"epochs", "seconds", "parts"}; None when not done
    skipped: str | None = None  # why there was no refit
    # A neural fit on train: the epochs run, the best epoch restored and its validation value,
    # whether it stopped early or ran out of epochs still improving (`training_record`).
    training: dict[str, Any] | None = None

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"fit_seconds": self.seconds, "refit": self.refit,
                               "training": self.training}
        if self.skipped is not None:
            out["refit_skipped"] = self.skipped
        return out

    def summary(self) -> str | None:
        """The line that says what the refit did (None without one)."""
        if self.refit is None:
            return None
        epochs = self.refit["epochs"]
        done = f"{epochs} epoch{'s' if epochs != 1 else ''}, " if epochs is not None else ""
        return f"refit on {'+'.join(self.refit['parts'])}: {done}{self.refit['seconds']:.1f} s"


def refit_skipped(dataset: Dataset, enabled: bool = True) -> str | None:
    """Why the final model is not refitted on train + valid (None: it is)."""
    if not enabled:
        return "--no-refit"
    if not dataset.has("valid"):
        return "no validation part"
    return None


def refit_parts(dataset: Dataset) -> list[str]:
    return [part for part in REFIT_PARTS if dataset.has(part)]


def refit_data(dataset: Dataset) -> Interactions:
    """train + valid_history + valid as one training `Interactions` over the same users and
    items (no timestamps: no model reads them, and a sum of parts has no order to keep)."""
    return dataset.train.with_matrix(dataset.history("test_history"))


def fit_final(model: Recommender, dataset: Dataset, valid: EvalSplit | None,
              ctx: FitContext, *, refit: bool = True) -> FinalFit:
    """Fit ``model`` for good: on train with ``valid`` (early stopping), then, unless
    `refit_skipped`, refit on train + valid (see the module docstring). Under torchrun every
    rank calls this, and trains, alike."""
    from recsys.models.neural import NeuralRecommender

    skipped = refit_skipped(dataset, refit)
    neural = isinstance(model, NeuralRecommender)
    started = time.perf_counter()
    if neural or skipped is not None:
        model.fit(dataset.train, valid, ctx)
    training = training_record(model) if neural else None
    record = None
    if skipped is None:
        tick = time.perf_counter()
        epochs = _refit_neural(model, dataset, ctx) if neural else _refit_other(model, dataset,
                                                                                 ctx)
        record = {"epochs": epochs, "seconds": time.perf_counter() - tick,
                  "parts": refit_parts(dataset)}
        if epochs is not None:  # not "refit_seconds": that is each refit epoch's own time
            ctx.callbacks.on_fit_end({f"{REFIT_PREFIX}epochs": epochs})
    return FinalFit(time.perf_counter() - started, record, skipped, training)


def training_record(model: Any) -> dict[str, Any] | None:
    """What the fit on train did, for run.json (None when the model has no train result)."""
    from recsys.training.trainer import still_improving

    result = getattr(model, "train_result_", None)
    if result is None:
        return None
    return {"epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
            "metric": result.metric, "best_value": result.best_value,
            "stopped_early": result.stopped_early,
            "still_improving": still_improving(
                result, int(getattr(model.config, "epochs", result.epochs_run)))}


def _refit_other(model: Recommender, dataset: Dataset, ctx: FitContext) -> None:
    model.fit(refit_data(dataset), None, ctx)


def _refit_neural(model: Any, dataset: Dataset, ctx: FitContext) -> int:
    """Train ``model`` again from scratch on train + valid for the first fit's best epoch; the
    model keeps the first fit's ``history_`` and ``train_result_`` (the curves with validation),
    the refit's are ``refit_history_`` and ``refit_result_``."""
    first, history = model.train_result_, model.history_
    epochs = int(first.best_epoch)
    if ctx.run_dir is not None:
        _drop_other_refits(ctx.run_dir, epochs, model.config.model_dump())
    refit_ctx = replace(ctx, callbacks=RefitCallbacks(ctx.callbacks), refit_epochs=epochs)
    model.fit(refit_data(dataset), None, refit_ctx)
    model.refit_result_, model.refit_history_ = model.train_result_, model.history_
    model.train_result_, model.history_ = first, history
    return epochs


def _drop_other_refits(run_dir: Any, epochs: int, config: dict[str, Any]) -> None:
    """Remove refit checkpoints a resume must not continue from: those of a refit of another
    length (the first fit chose another epoch), and those of a config with another ``epochs``
    (a cosine LR schedule spans it, so the refit's steps differ). Rank 0 removes, then every rank
    waits for it, so that no rank lists a folder while rank 0 removes it."""
    import torch.distributed as dist

    from recsys.training.checkpoint import latest_checkpoint, load_checkpoint, refit_checkpoint_dir
    from recsys.training.distributed import is_distributed

    distributed = is_distributed()
    keep = refit_checkpoint_dir(run_dir, epochs)
    if not distributed or dist.get_rank() == 0:
        for folder in sorted(keep.parent.glob("refit-*")):
            stale = folder != keep
            if not stale:
                path = latest_checkpoint(folder)
                try:
                    stale = (path is not None
                             and load_checkpoint(path)["config"].get("epochs") != config["epochs"])
                except RecsysError:  # an unsound refit checkpoint: redo the refit from its start
                    stale = True
            if stale and folder.is_dir():
                shutil.rmtree(folder)
    if distributed:
        dist.barrier()


class RefitCallbacks(FitCallbacks):
    """The run's callbacks as a refit sees them: per-epoch records under ``refit_`` keys (the
    first fit's learning curves stay as they were) and no params (the run's are the first
    fit's, which the refit shares)."""

    def __init__(self, inner: FitCallbacks) -> None:
        self.inner = inner

    def on_epoch_end(self, epoch: int, record: dict[str, float]) -> None:
        self.inner.on_epoch_end(epoch, _prefixed(record))

    def on_resumed(self, history: list[dict[str, float]]) -> None:
        """A resumed refit's epochs checkpointed but never logged (see `MlflowTracker`)."""
        self.inner.on_resumed([_prefixed(record) for record in history])

    def on_fit_end(self, metrics: dict[str, float]) -> None:
        self.inner.on_fit_end(metrics)


def _prefixed(metrics: dict[str, float]) -> dict[str, float]:
    return {f"{REFIT_PREFIX}{k}": v for k, v in metrics.items()}
