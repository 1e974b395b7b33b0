"""`recsys train MODEL --data DIR --out RUN_DIR`: fit any registered model, save it, evaluate it.

DIR is a prepared dataset (`recsys prepare ml-100k --out prep/ml100k`, or your own ratings:
`recsys prepare ratings.csv --out prep/mine`); `recsys config MODEL` lists the model's keys.

    recsys train ease --data prep/ml100k --out runs/ease --tune
    recsys train multvae --data prep/ml100k --config configs/multvae.yaml --set epochs=50 \\
        --out runs/multvae --device cuda --seed 1

The model's config comes from --config (YAML; an optional ``tune:`` section gives the grid for
--tune) overridden by --set key=value. With --tune the key hyper-parameters are chosen on the
validation part by --metric (never on the test part) before the final fit on the training part
(--tune-rule: the defaults stay unless beaten by more than one standard error over the users):
an Optuna study (TPE seeded by --seed, median pruning on the per-epoch validation metric) over the
model's declared space or --search-space FILE when --trials/--timeout/--search-space is given or
the model is neural; else a grid (a ``tune:`` section, or the model's default grid). The chosen
config is written to RUN_DIR/tuned.yaml (usable as --config); each trial is a nested MLflow run.

    recsys train multdae --data DIR --out RUN_DIR --tune --trials 30 \\
        --study-storage sqlite:///study.db --study-name dae   # the same name continues it

Once validation has done its job (tuning, early stopping), the final model is refitted on
train + valid with the chosen settings (neural models: for the best epoch), unless --no-refit.
When the data has a test part, the trained model is evaluated on it and metrics.json written.

Neural models (not RecVAE, CFGAN or AAE) also train data-parallel, one process per GPU, under
torchrun:

    torchrun --nproc_per_node=4 -m recsys.cli train multvae --data DIR --out RUN_DIR

batch_size is then the global batch; rank 0 alone writes RUN_DIR, evaluates and logs to MLflow
(README, "Scale: GPU, distributed training and Spark scoring").
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import sys
from pathlib import Path
from typing import Any

from recsys.commands.common import add_tracking_args, run_location
from recsys.errors import RecsysError

DEFAULT_METRIC = "ndcg@100"
# The flags the printed config is resolved from (build_params); the others only matter to training.
PRINT_CONFIG_INPUTS = ("help", "model", "config", "set", "device", "seed", "metric",
                       "deterministic", "print_config", "search_space")
# The flags of an Optuna study (`--tune` then runs one; see `tune_mode`).
STUDY_FLAGS = (("--trials", "trials"), ("--timeout", "timeout"),
               ("--search-space", "search_space"), ("--study-storage", "study_storage"),
               ("--study-name", "study_name"))
DEFAULT_TRIALS = 20


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="fit a model (optionally tuned on validation), save and evaluate it",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from recsys.models.registry import MODELS  # a dict of names: no model is imported

    p.add_argument("model", metavar="MODEL", help=f"the model: {', '.join(MODELS)}")
    # --data/--out are checked in `run`: --print-config needs neither.
    p.add_argument("--data", metavar="DIR", help="prepared dataset directory (required)")
    p.add_argument("--out", metavar="RUN_DIR", help="run directory to write (required)")
    p.add_argument("--config", metavar="FILE",
                   help="YAML model config (and 'tune:' grid); default: the built-in defaults, "
                        "which configs/MODEL.yaml documents")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key (repeatable), e.g. --set lambda_=300")
    p.add_argument("--tune", action="store_true",
                   help="choose hyper-parameters on the validation part first: an Optuna study "
                        "(neural models, or any model with --trials/--timeout/--search-space), "
                        "else the grid (the config's 'tune:' section or the model's default)")
    p.add_argument("--trials", type=int, default=None, metavar="N",
                   help=f"--tune: trials of the study (default {DEFAULT_TRIALS}, or unbounded "
                        "with --timeout alone)")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="--tune: stop starting new trials after this many seconds")
    p.add_argument("--search-space", default=None, metavar="FILE",
                   help="--tune: YAML search space replacing the model's declared one "
                        "({key: {low, high[, log][, step]}} or {key: {choices: [...]}})")
    p.add_argument("--study-storage", default=None, metavar="URL",
                   help="--tune: keep the study in this Optuna storage (sqlite:///study.db); "
                        "the same --study-name continues it")
    p.add_argument("--study-name", default=None, metavar="NAME",
                   help="--tune: the stored study's name (default recsys-MODEL)")
    p.add_argument("--tune-rule", default=None, metavar="RULE",
                   help="--tune: which candidate is kept: one-se (default) keeps the model's "
                        "defaults unless the best beats them by more than one standard error "
                        "over the validation users; best takes the top validation score")
    p.add_argument("--no-refit", action="store_true",
                   help="keep the model fitted on the training part alone (default: refit it "
                        "on train + valid with the settings validation chose)")
    p.add_argument("--metric", default=None, metavar="NAME",
                   help=f"validation metric for --tune and early stopping (default "
                        f"{DEFAULT_METRIC})")
    p.add_argument("--metrics", default=None, metavar="LIST",
                   help="metrics reported on the test part (default: as `recsys evaluate`)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in RUN_DIR from its last checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in RUN_DIR (what train writes there; a "
                        "folder that is not a run is refused)")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--seed", type=int, default=None, help="random seed (model default if unset)")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic algorithms (slower; neural models)")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config (defaults, then --config, --set, --seed/"
                        "--device/--metric/--deterministic) and the --tune grid as YAML, and "
                        "exit without training")
    add_tracking_args(p)
    # What each training-only flag is when not given: --print-config names those it ignores.
    p.set_defaults(func=run, train_only_defaults={
        a.dest: a.default for a in p._actions if a.dest not in PRINT_CONFIG_INPUTS})


# -- tracking: the spot where MLflow plugs in ---------------------------------------------------


def make_tracker(args: argparse.Namespace, model: Any = None) -> Any:
    """The tracker this run reports to: an MLflow run checked reachable before any training
    (one clear line if not), or the null `Tracker` with --no-track. Its run id is recorded in
    RUN_DIR/tracking.json at once; --resume continues the run recorded there (a new one, with a
    note, when the store no longer has it)."""
    from recsys.commands.common import tracking_options
    from recsys.tracking.base import flatten
    from recsys.tracking.records import default_run_name, training_tags
    from recsys.tracking.setup import make_tracker as make
    from recsys.tracking.setup import record_tracking, recorded_tracking
    from recsys.training.trainer import RESUMABLE_CHANGES

    out = Path(args.out)
    tags = training_tags(model, args.device) if model is not None else None
    recorded = recorded_tracking(out) if args.resume and not args.no_track else None
    # The config is checked against the run's params before training (after --tune it can
    # only be known once tuned: the tracker then keeps a changed value as a tag).
    expected = (flatten({"model": model.name, **model.get_params()})
                if recorded and model is not None and not args.tune else None)
    # --run-name, else MODEL · DATASET/SPLIT (the folder's name says nothing in the runs table).
    name = default_run_name(model.name, args.data) if model is not None else out.name or None
    tracker = make(tracking_options(args), run_name=name, tags=tags,
                   resume_run_id=recorded["run_id"] if recorded else None,
                   expected_params=expected, may_change=RESUMABLE_CHANGES)
    failure = tracker.resume_failure
    if recorded and failure:
        where = recorded.get("tracking_uri")
        print(f"note: --resume: MLflow run {recorded['run_id']}"
              + (f" (recorded at {where})" if where and where != tracker.tracking_uri else "")
              + f" is not at {tracker.tracking_uri} ({failure}); logging to a new run "
              f"{tracker.run_id}", file=sys.stderr)
    record_tracking(out, tracker)
    return tracker


# -- the command ----------------------------------------------------------------------------------


def build_params(model_cls: type, args: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    """Config keys from --config merged with --set and the run options the model's Config has;
    plus the ``tune:`` grid from --config (``None`` when absent). A ``search:`` section (the
    space --print-config shows) is dropped: --search-space FILE gives a study its space."""
    from recsys.config import load_yaml, parse_set_options

    params: dict[str, Any] = load_yaml(args.config) if args.config else {}
    grid = params.pop("tune", None)
    params.pop("search", None)
    params.update(parse_set_options(args.set))
    fields = model_cls.Config.model_fields
    # Run options land in the config only where the model has such a key (neural models'
    # TrainConfig: device, seed, deterministic, metric); a flag left unset keeps the file's value.
    options = {"device": args.device, "seed": args.seed, "metric": args.metric,
               "deterministic": True if args.deterministic else None}
    for key, value in options.items():
        if value is not None and key in fields:
            params[key] = value
    return params, grid


def check_run_flags(model_cls: type, args: argparse.Namespace) -> None:
    """Say which run flags the model has no use for (never drop one silently): --seed and
    --deterministic act only through the config's keys, --metric also through --tune. A note,
    not an error, so that one script can pass the same flags to every model; --device always
    applies (evaluation and scoring run there)."""
    fields = model_cls.Config.model_fields
    unused = [flag for flag, given, key in (("--seed", args.seed is not None, "seed"),
                                            ("--deterministic", args.deterministic,
                                             "deterministic"),
                                            ("--metric", args.metric is not None and not args.tune,
                                             "metric"))
              if given and key not in fields]
    given = [flag for flag, dest in STUDY_FLAGS if getattr(args, dest, None) is not None]
    if given and not args.tune:
        raise RecsysError(f"{', '.join(given)} configure the --tune study; add --tune (or drop "
                          "them)")
    if getattr(args, "tune_rule", None) is not None and not args.tune:
        raise RecsysError("--tune-rule chooses among --tune's candidates; add --tune (or drop it)")
    if unused:
        print(f"note: {', '.join(unused)} changes nothing for '{args.model}' (no random state, "
              "epochs or early stopping to apply it to"
              + ("; --metric chooses only with --tune" if "--metric" in unused else "") + ")",
              file=sys.stderr)


def resolved_config(model_cls: type, args: argparse.Namespace
                    ) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """The validated config a training run would use (class defaults, then --config, then --set,
    then the run flags), the grid --tune would search (the --config's or the default) and the
    space a study would search (--search-space or the model's declared one)."""
    from recsys.config import validate_config
    from recsys.models.tuning import check_grid, default_grid

    params, grid = build_params(model_cls, args)
    where = f"{args.model} config" + (f" ({args.config})" if args.config else "")
    config = validate_config(model_cls.Config, params, where=where)
    model = model_cls(**params)
    if grid is not None:
        grid = check_grid(model, grid, where=f"{args.config}: tune")
    else:
        grid = default_grid(model) or {}
    return config, grid, load_space(model, getattr(args, "search_space", None))


def load_space(model: Any, path: str | None) -> dict[str, Any]:
    """The study's search space: --search-space FILE (validated, one line naming the key) or the
    model's declared space."""
    from recsys.config import load_yaml
    from recsys.models.tuning import default_space
    from recsys.training.search import check_space

    if path is None:
        return check_space(model, default_space(model), where=f"{model.name} search space")
    return check_space(model, load_yaml(path), where=f"{path}")


def tune_mode(model: Any, args: argparse.Namespace, grid: Any) -> str | None:
    """How --tune chooses: ``"study"`` (Optuna) when a study flag is given or the model is
    neural (each fit is costly: TPE and pruning spend the budget better), else ``"grid"`` (the
    closed-form baselines, where a small grid is cheap and exhaustive); a ``tune:`` grid in
    --config is always the grid, and refused beside the study flags. None without --tune."""
    from recsys.models.neural import NeuralRecommender

    if not args.tune:
        return None
    given = [flag for flag, dest in STUDY_FLAGS if getattr(args, dest, None) is not None]
    if grid is not None:
        if given:
            raise RecsysError(f"{args.config}: its 'tune:' grid and {', '.join(given)} are two "
                              "searches; drop the 'tune:' section for a study, or the flags "
                              "for the grid")
        return "grid"
    return "study" if given or isinstance(model, NeuralRecommender) else "grid"


def print_config(args: argparse.Namespace) -> int:
    """--print-config: the resolved config and --tune grid as YAML on stdout; nothing trained."""
    import yaml

    from recsys.config import TrainConfig
    from recsys.models.registry import get_model_class

    model_cls = get_model_class(args.model)
    config, grid, space = resolved_config(model_cls, args)
    defaults = getattr(args, "train_only_defaults", {})
    ignored = [f"--{dest.replace('_', '-')}" for dest, default in defaults.items()
               if getattr(args, dest, default) != default]
    if ignored:
        print(f"note: --print-config trains nothing; ignoring {', '.join(ignored)}",
              file=sys.stderr)
    # Run flags land in the config only where it has the key (build_params): say which did not.
    given = {"seed": args.seed, "metric": args.metric, "device": args.device,
             "deterministic": args.deterministic or None}
    absent = [f"--{k}" for k, v in given.items()
              if v is not None and k not in model_cls.Config.model_fields]
    if absent:
        print(f"note: {args.model}'s config has no key for {', '.join(absent)}; not shown",
              file=sys.stderr)
    dump = config.model_dump()
    # The model's own keys first, then the training engine's.
    own = {k: v for k, v in dump.items() if k not in TrainConfig.model_fields}
    text = yaml.safe_dump({**own, **dump, "tune": grid, "search": space}, sort_keys=False,
                          default_flow_style=None)
    sys.stdout.write(text)
    return 0


def finished_training(out: Path, config: dict[str, Any], data_dir: Path,
                      refit: bool = True) -> str | None:
    """Why the run in ``out`` has nothing left to do (None if it has, or if this resume differs
    from it: the resume then refuses it with its own message). Nothing is left when the run
    completed on the same prepared data: its last checkpoint, of the same config, stopped early
    or reached ``config["epochs"]``; run.json records the refit this resume asks for (``refit``:
    refit on train + valid where the data has a valid part, see `recsys.training.refit`); the
    data's test part, if any, was evaluated (metrics.json); and run.json says the whole job
    completed (``completed``: written after the MLflow run ended, so a kill after the test
    metrics still leaves the model to log and the run to end). A resume finishes whatever is
    missing: the fit and the refit continue from their last checkpoints (no epoch is trained
    twice), then the model is saved, evaluated and logged again. Every rank of a distributed run
    reads the same files, so all agree."""
    from recsys.data.io import read_json, sha256_file
    from recsys.rundir import read_run
    from recsys.training.checkpoint import CHECKPOINT_DIR, list_checkpoints, load_checkpoint
    from recsys.training.trainer import RESUMABLE_CHANGES

    found = list_checkpoints(out / CHECKPOINT_DIR) if (out / "run.json").exists() else []
    meta = data_dir / "metadata.json"
    if not found or not meta.is_file():
        return None
    record = read_run(out)
    if record.get("data_digest") != sha256_file(meta):
        return None
    parts = read_json(meta).get("parts") or {}
    if bool(record.get("refit")) != (refit and "valid" in parts):
        return None  # the refit is missing, or --no-refit asks for the model of train alone
    if "test" in parts and not ((out / "metrics.json").is_file() and "metrics" in record):
        return None  # killed before the test evaluation was written
    if not record.get("completed"):
        return None  # killed before the model was logged or the MLflow run ended
    try:
        payload = load_checkpoint(found[-1][1])
    except RecsysError:
        return None  # the resume itself reports an unsound checkpoint
    if any(payload["config"].get(k) != v for k, v in config.items()
           if k not in RESUMABLE_CHANGES):
        return None
    if payload.get("stopped_early"):
        return f"stopped early at epoch {payload['epoch']}"
    if int(payload["epoch"]) >= config["epochs"]:
        return f"{payload['epoch']} of {config['epochs']} epochs trained"
    return None


def run(args: argparse.Namespace) -> int:
    from recsys.training.distributed import distributed_session, launched_by_torchrun

    if args.print_config:
        return print_config(args)
    for flag, value in (("--data DIR", args.data), ("--out RUN_DIR", args.out)):
        if not value:
            raise RecsysError(f"recsys train {args.model}: {flag} is required (or "
                              "--print-config to only show the config)")
    if not launched_by_torchrun():
        from recsys.data.io import output_lock

        # One `train` at a time writes RUN_DIR (two would mix checkpoints and metrics).
        with output_lock(args.out, "train"):
            return _train(args)
    check_distributable(args)
    with distributed_session(args.device) as dist_info:
        # One device per process (cuda:LOCAL_RANK or cpu): the config, evaluation and scoring
        # of this rank all use it.
        args.device = str(dist_info.device)
        return _train(args, dist_info)


def check_distributable(args: argparse.Namespace) -> None:
    """Under torchrun, before joining the group: what cannot train data-parallel (one line,
    printed by rank 0)."""
    from recsys.models.neural import NeuralRecommender
    from recsys.models.registry import get_model_class
    from recsys.training.distributed import refuse

    try:
        model_cls = get_model_class(args.model)
    except RecsysError as exc:
        refuse(str(exc))
    if not issubclass(model_cls, NeuralRecommender):
        refuse(f"'{args.model}' is not a neural model; only neural models train data-parallel: "
               f"run `recsys train {args.model}` without torchrun")
    if model_cls.manual_optimization:
        refuse(f"'{args.model}' steps its own optimisers (manual_optimization), which "
               "distributed training does not support; train it without torchrun")
    if args.tune:
        refuse("--tune is not distributed: tune in one process, then train the chosen config "
               "under torchrun (--config/--set)")


def _train(args: argparse.Namespace, dist_info: Any = None) -> int:
    """The command; ``dist_info`` (a `DistInfo`) when this process is one rank of a torchrun launch:
    only rank 0 clears/writes RUN_DIR, evaluates, prints and logs to MLflow."""
    import torch

    from recsys.config import validate_config
    from recsys.data.interactions import Dataset
    from recsys.evaluation.evaluate import format_table
    from recsys.evaluation.metrics import default_metrics, parse_metrics
    from recsys.models.registry import get_model_class
    from recsys.rundir import check_out, update_run
    from recsys.tracking.base import flatten
    from recsys.training.trainer import deterministic_threads
    from recsys.workflows.train import train_run

    # Everything cheap and user-caused is checked before the data is read or anything is fitted.
    model_cls = get_model_class(args.model)
    params, grid = build_params(model_cls, args)
    where = f"{args.model} config" + (f" ({args.config})" if args.config else "")
    validate_config(model_cls.Config, params, where=where)
    model = model_cls(**params)
    metric = parse_metrics(args.metric or DEFAULT_METRIC)[0]
    check_run_flags(model_cls, args)  # after the flags' own checks: a bad one is one line
    explicit = bool(getattr(model, "explicit", False))
    report = parse_metrics(args.metrics or default_metrics(explicit))
    main = dist_info is None or dist_info.is_main
    if grid is not None and not args.tune and main:
        print("note: the config's 'tune:' section is used only with --tune", file=sys.stderr)
    mode = tune_mode(model, args, grid)
    if mode == "grid" and grid is not None:
        from recsys.models.tuning import check_grid

        grid = check_grid(model, grid, where=f"{args.config}: tune")
    space = load_space(model, args.search_space) if mode == "study" else None
    if mode == "study" and args.trials is not None and args.trials < 1:
        raise RecsysError(f"--trials must be at least 1 (got {args.trials})")
    if mode == "study" and args.timeout is not None and args.timeout <= 0:
        raise RecsysError(f"--timeout must be positive (got {args.timeout})")
    if args.study_name is not None and args.study_storage is None:
        raise RecsysError("--study-name names a stored study; add --study-storage URL (e.g. "
                          "sqlite:///study.db) to keep and continue it")
    out = Path(args.out)
    from recsys.models.neural import NeuralRecommender

    if dist_info is None:
        check_out(out, args.resume, args.overwrite, model=model.name,
                  checkpoints=isinstance(model, NeuralRecommender))
    else:
        from recsys.training.distributed import share_error

        share_error(check_out, out, args.resume, args.overwrite, model=model.name,
                    checkpoints=True)

    if args.resume and not args.tune and isinstance(model, NeuralRecommender):
        done = finished_training(out, model.config.model_dump(), Path(args.data),
                                 refit=not args.no_refit)
        if done:
            if main:
                print(f"note: --resume: {out} holds a finished run ({done}); nothing to resume. "
                      f"Train further with --set epochs=N above it, or start again with "
                      "--overwrite", file=sys.stderr)
            return 0

    data_dir = Path(args.data)
    dataset = Dataset.load(data_dir)
    if explicit and dataset.implicit:
        raise RecsysError(f"model '{model.name}' predicts ratings but {data_dir} holds implicit "
                          "(0/1) data; prepare the data without --implicit-threshold")
    valid = dataset.eval_split("valid") if dataset.has("valid") else None
    if args.tune and valid is None:
        raise RecsysError(f"--tune needs a validation part, and {data_dir} has none; prepare "
                          "the data with --valid-fraction > 0")
    device = args.device or "auto"
    quiet = args.quiet or not main
    say = (lambda line: None) if quiet else (lambda line: print(line, file=sys.stderr))

    if dist_info is None:
        tracker = make_tracker(args, model)
    else:
        from recsys.tracking.base import Tracker
        from recsys.training.distributed import share_error

        # Rank 0's MLflow run (checked reachable, as ever); the other ranks log nothing.
        tracker = share_error(make_tracker, args, model)  # runs on rank 0 only
        if tracker is None:
            tracker = Tracker()
    # --deterministic: the whole job, the test evaluation included, on one CPU thread, so that
    # its numbers do not depend on the machine's thread count (`deterministic_threads`).
    threads = contextlib.ExitStack()
    threads.enter_context(deterministic_threads(bool(getattr(model.config, "deterministic",
                                                             False))))
    status = "FAILED"
    try:
        tuned = None
        tune_seconds = 0.0
        if args.tune:
            from recsys.commands.common import tracking_options
            from recsys.workflows.tune import tune_model

            search = _search(model, args, mode, grid, space, metric)
            if search.storage:
                print(f"study '{search.study_name}' in {search.storage} (the same "
                      "--study-name continues it)", file=sys.stderr)
            done = tune_model(model, dataset, valid, search, tracker=tracker,
                              tracking=tracking_options(args), run_dir=out, device=device,
                              log=say)
            result, tune_seconds, tuned = done.result, done.seconds, done.record
            if not args.quiet:
                what = "trials" if mode == "study" else "candidates"
                print(f"tuning on the validation part ({len(result.table)} {what}, "
                      f"{tune_seconds:.1f} s):\n{result.format()}")
            chosen = ", ".join(f"{k}={v}" for k, v in result.best_params.items()) or "(nothing)"
            print(f"tuned: {chosen} (valid {metric} {result.best_score:.4f}"
                  f"{kept_note(result.selection)}); config written to {out / 'tuned.yaml'}")

        tracker.log_params(flatten({"model": model.name, **model.get_params()}))
        outcome = train_run(model, dataset, data_dir, out, tracker=tracker, valid=valid,
                            metrics=report, device=device, resume=args.resume,
                            refit=not args.no_refit, quiet=quiet, register=args.register,
                            alias=args.alias, is_main=main, log=say, record={
                                "tuned": tuned, "tune_seconds": tune_seconds,
                                "metric": metric, "seed": args.seed,
                                # What a run's last digits depend on (`deterministic_threads`).
                                "torch_threads": torch.get_num_threads()})
        if not main:
            status = "FINISHED"
            return 0  # rank 0 writes, evaluates and logs the (identical) trained model
        if outcome.final.summary():
            print(outcome.final.summary())
        evaluation = outcome.evaluation
        if evaluation is not None:
            print(format_table(evaluation.summary, title=(
                f"{model.name} on {data_dir} (test): {evaluation.n_users} users evaluated, "
                f"{evaluation.skipped_users} skipped (no history)")))
        print(f"run written to {out}")
        status = "FINISHED"
        where = run_location(tracker, args.alias)
        if where and not args.quiet:
            print(where)
    finally:
        threads.close()
        tracker.close(status)
    # Last: the mark a resume reads as "nothing left to do" (`finished_training`). A kill before
    # it leaves a run that a resume finishes (at worst logging the model to MLflow once more).
    update_run(out, completed=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
    return 0


def kept_note(selection: dict[str, Any] | None) -> str:
    """Why the defaults stayed, when the one-SE rule kept them."""
    if not selection or not selection.get("kept_default"):
        return ""
    return (f"; the defaults, kept: the best candidate's gain {selection['gain']:+.4f} is within "
            f"one standard error ({selection['se']:.4f}) over {selection['users']} users")


def _search(model: Any, args: argparse.Namespace, mode: str | None, grid: Any,
            space: Any, metric: str) -> Any:
    """The search --tune asks for (`recsys.workflows.tune.Search`)."""
    from recsys.models.tuning import DEFAULT_RULE
    from recsys.workflows.tune import Search

    rule = args.tune_rule or DEFAULT_RULE
    if mode == "grid":
        return Search("grid", metric, grid=grid, rule=rule)
    seed = args.seed if args.seed is not None else int(getattr(model.config, "seed", 0))
    trials = args.trials if args.trials is not None or args.timeout is not None \
        else DEFAULT_TRIALS
    return Search("study", metric, space=space, trials=trials, timeout=args.timeout, seed=seed,
                  storage=args.study_storage, rule=rule,
                  study_name=args.study_name or f"recsys-{model.name}")
