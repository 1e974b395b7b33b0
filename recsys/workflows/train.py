"""Train one model into a run directory: the use case `recsys train` and `recsys compare` share.

`train_run` fits the model for good (`recsys.training.refit.fit_final`: early stopping on the
validation part, then the refit on train + valid), writes RUN_DIR (model, config.yaml, run.json),
evaluates it on the test part when the data has one (metrics.json, run.json's ``metrics``) and
records it all in the tracker (`recsys.tracking.records`). Tuning, output checks and what is
printed stay with the caller.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recsys.data.interactions import Dataset, EvalSplit
from recsys.evaluation.evaluate import EvalResult, evaluate
from recsys.models.base import FitContext, Recommender
from recsys.tracking.base import Tracker
from recsys.tracking.callbacks import TrackerCallbacks
from recsys.tracking.setup import DEFAULT_ALIAS

EVAL_BATCH_SIZE = 2048


@dataclass
class RunOutcome:
    run_dir: Path
    fit_seconds: float
    evaluation: EvalResult | None  # None where the data has no test part (or not rank 0)
    model_uri: str | None  # the logged model's URI (None untracked or not logged)
    final: Any  # the `FinalFit` record


def train_run(model: Recommender, dataset: Dataset, data_dir: str | Path, run_dir: str | Path,
              *, tracker: Tracker, valid: EvalSplit | None, metrics: list[str],
              record: dict[str, Any] | None = None, device: str | None = "auto",
              resume: bool = False, refit: bool = True, quiet: bool = True,
              register: str | None = None, alias: str = DEFAULT_ALIAS, is_main: bool = True,
              log: Callable[[str], None] = lambda line: None) -> RunOutcome:
    """Fit ``model`` (already configured, and tuned where asked) on ``dataset`` into
    ``run_dir`` and evaluate and log it. ``record``: extra run.json fields. ``is_main``: False
    on the ranks other than 0 of a torchrun launch, which train alike and write nothing."""
    from recsys.data.io import write_json
    from recsys.rundir import data_record, save_run, update_run
    from recsys.tracking.records import log_training_end, log_training_start
    from recsys.training.refit import fit_final

    data_dir, run_dir = Path(data_dir), Path(run_dir)
    log_training_start(tracker, model=model, data_dir=data_dir)
    ctx = FitContext(run_dir=run_dir, resume=resume, quiet=quiet, data_meta=dict(dataset.meta),
                     features=dataset.features, callbacks=TrackerCallbacks(tracker))
    # The fit on train (early stopping on valid), then the refit on train + valid; every rank
    # of a distributed run trains both.
    final = fit_final(model, dataset, valid, ctx, refit=refit)
    if not is_main:
        return RunOutcome(run_dir, final.seconds, None, None, final)
    log(f"fitted {model.name} in {final.seconds:.1f} s")
    save_run(run_dir, model, {**data_record(data_dir, dataset), **(record or {}),
                              **final.record()})
    evaluation = None
    if dataset.has("test"):
        evaluation = evaluate(model, dataset.eval_split("test"), metrics,
                              batch_size=EVAL_BATCH_SIZE, device=device,
                              rating_scale=dataset.rating_scale)
        write_json(run_dir / "metrics.json", evaluation.summary)
        update_run(run_dir, metrics=evaluation.summary,
                   eval_test={"users": evaluation.n_users,
                              "skipped_users": evaluation.skipped_users,
                              "data": str(data_dir.resolve())})
    # MLflow: test metrics, learning curve, per-user table, top-K sample, config, pyfunc model
    # (and the registration); each piece logged on its own, a failure never stops the run.
    uri = log_training_end(tracker, model=model, run_dir=run_dir, data_dir=data_dir,
                           dataset=dataset,
                           summary=evaluation.summary if evaluation else None,
                           per_user=evaluation.per_user if evaluation else None,
                           register=register, alias=alias)
    return RunOutcome(run_dir, final.seconds, evaluation, uri, final)
