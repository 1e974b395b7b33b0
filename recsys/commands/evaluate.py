"""`recsys evaluate RUN_DIR --data DIR`: full-catalogue metrics of a trained run.

Prints a table (with bootstrap 95% intervals), optionally writes the metrics as JSON (metric name
-> number) and the per-user table, and records the metrics in the run directory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from recsys.commands.common import add_data_arg, add_force_arg, resolve_data
from recsys.data.interactions import Dataset
from recsys.data.io import atomic_path, check_replaceable_file, read_json, table_columns, write_json
from recsys.errors import RecsysError
from recsys.evaluation.metrics import RANKING_DEFAULT, RATING_DEFAULT, default_metrics


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("evaluate", help="full-ranking metrics of a trained run",
                              description=__doc__.splitlines()[0])
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory written by `recsys train`")
    add_data_arg(p)
    p.add_argument("--part", choices=("test", "valid"), default="test",
                   help="held-out part to evaluate (default: test)")
    p.add_argument("--metrics", default=None, metavar="LIST",
                   help=f"comma-separated, e.g. ndcg@100,recall@20 (default: {RANKING_DEFAULT}, "
                        f"plus {RATING_DEFAULT} for rating models); beyond accuracy: novelty@K, "
                        "ild@K, arp@K, popbias@K per user, gini@K (like coverage@K) one value "
                        "over all lists, without a CI")
    p.add_argument("--json", default=None, metavar="FILE", help="write {metric: value} as JSON")
    p.add_argument("--per-user", default=None, metavar="FILE",
                   help="write the per-user metric table (.csv or .parquet)")
    p.add_argument("--batch-size", type=int, default=2048, metavar="N",
                   help="users scored per batch (default: 2048)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--no-ci", action="store_true", help="skip the bootstrap confidence intervals")
    add_force_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from recsys.evaluation.evaluate import evaluate, format_table
    from recsys.evaluation.metrics import parse_metrics
    from recsys.evaluation.stats import bootstrap_ci
    from recsys.rundir import check_run_data, load_run, read_run, update_run

    resolve_data(args)
    if args.batch_size < 1:
        raise RecsysError(f"--batch-size must be at least 1 (got {args.batch_size})")
    read_run(args.run_dir)  # not a run: one line, before anything slow
    # An existing output is replaced only when it is one recsys wrote.
    if args.json:
        check_replaceable_file(args.json, flag="--json", what="metrics file",
                               ours=_is_metrics_json)
    if args.per_user:
        check_replaceable_file(args.per_user, flag="--per-user", what="per-user table",
                               ours=_is_per_user_table)
    if args.per_user and Path(args.per_user).suffix.lower() not in (".csv", ".parquet"):
        raise RecsysError(f"--per-user {args.per_user}: use a .csv or .parquet file name")
    if args.metrics is not None:
        names = parse_metrics(args.metrics)
    model, info = load_run(args.run_dir)
    explicit = bool(getattr(model, "explicit", False))
    if args.metrics is None:
        names = parse_metrics(default_metrics(explicit))
    data = Dataset.load(args.data)
    if not data.has(args.part):  # e.g. `prepare --split none`: production data, no test part
        hint = ("; use --part valid" if args.part != "valid" and data.has("valid")
                else "; prepare a split that holds one out")
        raise RecsysError(f"--data {args.data}: no {args.part} part to evaluate (split "
                          f"'{data.meta.get('split', {}).get('split', '?')}'){hint}")
    check_run_data(args.run_dir, info, model, data, args.data, force=args.force)
    split = data.eval_split(args.part)

    result = evaluate(model, split, names, batch_size=args.batch_size, device=args.device,
                      rating_scale=data.rating_scale)
    ci = None if args.no_ci else bootstrap_ci(result.per_user)
    title = (f"{info.get('model', getattr(model, 'name', '?'))} on {args.data} ({args.part}): "
             f"{result.n_users} users evaluated, {result.skipped_users} skipped (no history), "
             f"{result.seconds:.2f} s")
    print(format_table(result.summary, ci=ci, title=title))

    if args.json:
        write_json(args.json, result.summary)
    if args.per_user:
        table = result.per_user.copy()
        table["user"] = data.users.lookup(table["user"].to_numpy())
        with atomic_path(args.per_user) as tmp:
            if args.per_user.lower().endswith(".parquet"):
                table.to_parquet(tmp, index=False)
            else:
                table.to_csv(tmp, index=False)
    record = {"metrics" if args.part == "test" else f"metrics_{args.part}": result.summary,
              f"eval_{args.part}": {"users": result.n_users, "skipped_users": result.skipped_users,
                                    "data": str(Path(args.data).resolve()),
                                    "ci95": {k: list(v) for k, v in (ci or {}).items()}}}
    if args.part == "test":
        previous = read_run(args.run_dir).get("metrics")
        if isinstance(previous, dict):  # keep metrics computed earlier under other names
            record["metrics"] = {**previous, **result.summary}
        write_json(Path(args.run_dir) / "metrics.json", record["metrics"])
    update_run(args.run_dir, **record)
    if result.skipped_users:
        print(f"note: {result.skipped_users} users with held-out items but no history were "
              "skipped", file=sys.stderr)
    return 0


def _is_metrics_json(path: Path) -> bool:
    """What --json writes: a JSON object of metric name -> number (null for NaN)."""
    try:
        record = read_json(path)
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and all(
        isinstance(v, int | float) or v is None for v in record.values())


def _is_per_user_table(path: Path) -> bool:
    """What --per-user writes: a `user` column, then metric columns."""
    from recsys.evaluation.metrics import parse_metrics

    columns = table_columns(path)
    if not columns or columns[0] != "user" or len(columns) < 2:
        return False
    try:
        return parse_metrics(columns[1:]) == columns[1:]
    except RecsysError:
        return False
