"""`recsys compare CONFIG.yaml`: several models on one prepared split, side by side (the use
case: `recsys.workflows.compare`; here, reading and checking the file, and the printed table).

Every model (optionally tuned on the validation part) is trained, evaluated on the test part and
logged as a child MLflow run of one parent run. The result is a table of every metric with
bootstrap 95% confidence intervals and, for each model, whether it differs significantly from the
best one (paired Wilcoxon signed-rank test over users, or the paired t-test); the parent run gets
the table and a comparison figure. ``--register NAME`` registers the best model.

The YAML file (unknown keys are errors)::

    name: ml-latest-small              # parent run name (default: the file's stem)
    data: data/prepared/ml-latest-small
    prepare:                           # optional: how to build `data` when it does not exist,
      dataset: ml-latest-small         # as `recsys prepare` flags (dashes or underscores)
      implicit_threshold: 3.5
    out: runs/compare-ml-latest-small  # one run directory per model
    metrics: [recall@20, ndcg@100]
    primary: ndcg@100                  # ranks the models; "best" is best on it
    models:
      - model: pop
      - model: itemknn
        tune: default                  # the model's default grid (recsys.models.tuning)
      - model: ease
        tune: {lambda_: [100, 500]}    # grid searched on the validation part (never test)
      - model: multdae
        tune: {trials: 30}             # an Optuna study (`recsys train --tune --trials 30`):
                                       # the same budget for every model; optional timeout
                                       # (seconds) and search_space (a --search-space file)
      - model: multvae
        label: multvae-e20
        config: multvae.yaml           # a model config file, relative to this file
        params: {epochs: 20}           # ... with these keys overridden
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from recsys.commands.common import add_tracking_args, tracking_options
from recsys.config import load_yaml, validate_config
from recsys.errors import RecsysError
from recsys.evaluation.metrics import lower_is_better
from recsys.workflows.compare import (
    TABLE_COLUMNS,
    CompareConfig,
    CompareResult,
    StudySpec,
    compare,
)

# -- CLI ----------------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("compare", help="train, evaluate and compare several models",
                              description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("config", metavar="CONFIG.yaml", help="comparison file (see configs/)")
    p.add_argument("--out", default=None, metavar="DIR", help="override `out` of the file")
    p.add_argument("--data", default=None, metavar="DIR", help="override `data` of the file")
    p.add_argument("--only", default=None, metavar="LABELS",
                   help="comma-separated subset of the file's model labels")
    p.add_argument("--device", default=None, help="override `device` (auto, cpu, cuda, ...)")
    p.add_argument("--table", default=None, metavar="FILE.csv",
                   help="also write the comparison table (long format) here")
    add_tracking_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    spec = load_compare_config(args.config, out=args.out, data=args.data, device=args.device,
                               only=args.only)
    if args.table and Path(args.table).suffix.lower() != ".csv":
        raise RecsysError(f"--table {args.table}: use a .csv file name")
    if args.table:
        from recsys.data.io import check_replaceable_file, has_columns

        check_replaceable_file(args.table, flag="--table", what="comparison table",
                               ours=has_columns(*TABLE_COLUMNS))
    result = compare(spec, tracking_options(args), config_path=Path(args.config),
                     quiet=args.quiet, prepare=ensure_data)
    print_table(result, spec)
    if args.table:
        from recsys.data.io import atomic_path

        with atomic_path(args.table) as tmp:
            result.table.to_csv(tmp, index=False)
    return 0


def load_compare_config(path: str | Path, *, out: str | None = None, data: str | None = None,
                        device: str | None = None, only: str | None = None) -> CompareConfig:
    raw = load_yaml(path)
    raw.setdefault("name", Path(path).stem)
    for key, value in (("out", out), ("data", data), ("device", device)):
        if value is not None:
            raw[key] = value
    spec = validate_config(CompareConfig, raw, where=str(path))
    if spec.prepare is not None:
        check_prepare(spec.prepare, spec.data, where=str(path))
    from recsys.evaluation.metrics import parse_metrics

    try:
        spec.metrics = parse_metrics(spec.metrics)
        if spec.tune_metric:
            parse_metrics([spec.tune_metric])
    except RecsysError as exc:
        raise RecsysError(f"{path}: {exc}") from None
    from recsys.models.registry import get_model_class

    for m in spec.models:
        cls = get_model_class(m.model)
        if m.config is not None:
            config_file = Path(m.config)
            if not config_file.is_absolute():
                config_file = Path(path).parent / config_file
            from_file = load_yaml(config_file)
            grid = from_file.pop("tune", None)
            m.params = {**from_file, **m.params}
            m.config = str(config_file)
            if m.tune == "config":
                if not grid:
                    raise RecsysError(f"{path}: model '{m.name}': `tune: config` but "
                                      f"{config_file} has no `tune:` section")
                m.tune = grid
        elif m.tune == "config":
            raise RecsysError(f"{path}: model '{m.name}': `tune: config` needs `config: FILE`")
        validate_config(cls.Config, m.params, where=f"{path}: model '{m.name}'")
        if m.tune == "default":
            from recsys.models.tuning import default_grid

            if not default_grid(m.model):
                raise RecsysError(f"{path}: model '{m.name}': `tune: default` but '{m.model}' "
                                  "has no default grid; give one as {key: [values]}")
        elif isinstance(m.tune, StudySpec):
            from recsys.models.tuning import default_space
            from recsys.training.search import check_space

            where = f"{path}: model '{m.name}' tune"
            space = default_space(m.model)
            if m.tune.search_space is not None:
                space_file = Path(m.tune.search_space)
                if not space_file.is_absolute():
                    space_file = Path(path).parent / space_file
                m.tune.search_space = str(space_file)
                where = str(space_file)
                space = load_yaml(space_file)
            check_space(cls(**m.params), space, where=where)
        elif m.tune:
            from recsys.models.tuning import check_grid

            check_grid(cls(**m.params), m.tune, where=f"{path}: model '{m.name}' tune")
    if only:
        wanted = [x.strip() for x in only.split(",") if x.strip()]
        known = [m.name for m in spec.models]
        for label in wanted:
            if label not in known:
                from recsys.errors import closest

                raise RecsysError(f"--only {label}: no such model label in {path}"
                                  f"{closest(label, known)} (labels: {', '.join(known)})")
        spec.models = [m for m in spec.models if m.name in wanted]
    return spec


# -- the comparison ------------------------------------------------------------------------------


def ensure_data(spec: CompareConfig) -> Path:
    """The prepared data directory, built with `recsys prepare` from ``prepare`` if missing."""
    data_dir = Path(spec.data)
    if (data_dir / "metadata.json").is_file():
        return data_dir
    if not spec.prepare:
        raise RecsysError(f"{data_dir} is not a prepared dataset and the comparison file has no "
                          "`prepare` section; run `recsys prepare ... --out "
                          f"{data_dir}` first")
    argv = ["prepare", *prepare_argv(spec.prepare), "--out", str(data_dir)]
    args = _prepare_parser().parse_args(argv)  # checked by load_compare_config already
    print(f"preparing {data_dir}: recsys {' '.join(argv)}", file=sys.stderr)
    # The command itself rather than the console script: its RecsysError reaches the user as
    # the one line it is, not as a second "failed" line after it.
    code = args.func(args)
    if code:
        raise RecsysError(f"`recsys {' '.join(argv)}` failed (exit {code})")
    return data_dir


class _PrepareOptionError(Exception):
    """argparse's complaint about a `prepare:` option (raised instead of exiting)."""


class _RaisingParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _PrepareOptionError(message)


def _prepare_parser() -> argparse.ArgumentParser:
    """The `recsys prepare` parser on its own, raising instead of printing and exiting."""
    from recsys.cli import _add_common
    from recsys.commands.data import register as register_data

    parser = _RaisingParser(prog="recsys", add_help=False)
    sub = parser.add_subparsers(dest="command", parser_class=_RaisingParser)
    register_data(sub)
    _add_common(sub.choices["prepare"], default=False)  # --quiet, as `recsys prepare` has it
    return parser


def prepare_keys() -> list[str]:
    """The keys a `prepare:` section accepts: the `recsys prepare` options (underscored), less
    ``out`` (that is `data`)."""
    sub = next(a for a in _prepare_parser()._actions
               if isinstance(a, argparse._SubParsersAction))
    return [a.dest for a in sub.choices["prepare"]._actions
            if a.dest not in ("help", "out") and a.dest != argparse.SUPPRESS]


def check_prepare(options: dict[str, Any], data: str, *, where: str) -> None:
    """Refuse a `prepare:` section `recsys prepare` would refuse, in one line, before anything
    runs: an unknown key (with the closest valid one), then a value its flag does not take."""
    from recsys.errors import closest

    valid = prepare_keys()
    for key in options:
        name = str(key).replace("-", "_")
        if name not in valid:
            raise RecsysError(f"{where}: prepare: unknown key '{key}'{closest(name, valid)}")
    from recsys.commands.data import check_flags

    argv = ["prepare", *prepare_argv(options), "--out", str(data)]
    try:
        check_flags(_prepare_parser().parse_args(argv))  # a flag moot where given, too
    except (_PrepareOptionError, RecsysError) as exc:
        raise RecsysError(f"{where}: prepare: {exc} (as `recsys {' '.join(argv)}`)") from None


def prepare_argv(options: dict[str, Any]) -> list[str]:
    """``{dataset: x, implicit_threshold: 3.5, kcore: true}`` -> ``x --implicit-threshold 3.5
    --kcore`` (the `recsys prepare` flags)."""
    opts = {str(k).replace("-", "_"): v for k, v in options.items()}
    argv = [str(opts.pop("dataset"))] if "dataset" in opts else []
    for key, value in opts.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is False or value is None:
            continue
        else:
            argv += [flag, str(value)]
    return argv


def print_table(result: CompareResult, spec: CompareConfig) -> None:
    from rich.console import Console
    from rich.table import Table

    test = "Wilcoxon signed-rank" if spec.test == "wilcoxon" else "paired t-test"
    t = Table(title=f"{spec.name}: test metrics, bootstrap 95% CI; * = differs from the best "
                    f"({test}, p < {spec.alpha})")
    t.add_column("model")
    for metric in spec.metrics:
        t.add_column(metric, justify="right")
    t.add_column(f"p vs best ({spec.primary})", justify="right")
    order = (result.table[result.table["metric"] == spec.primary]
             .sort_values("mean", ascending=lower_is_better(spec.primary),
                          na_position="last")["model"])
    for label in order:
        cells = []
        rows = result.table[result.table["model"] == label].set_index("metric")
        for metric in spec.metrics:
            r = rows.loc[metric]
            text = f"{r['mean']:.4f}"
            if math.isfinite(r["low"]):
                text += f"\n[{r['low']:.4f}, {r['high']:.4f}]"
            if r["best"]:
                text = f"[bold]{text}[/bold]"
            elif r["significant"]:
                text += " *"
            cells.append(text)
        p = rows.loc[spec.primary, "p_value"]
        cells.append("best" if label == result.best else (f"{p:.2g}" if math.isfinite(p)
                                                          else "-"))
        t.add_row(label, *cells)
    Console(width=max(120, 24 * (len(spec.metrics) + 2))).print(t)
    if result.registered:
        name, version = result.registered
        print(f"registered {result.best} as {name} version {version}")


