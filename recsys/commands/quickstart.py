"""`recsys quickstart`: the main job on the embedded ml-latest-small, end to end.

Prepares the data, trains a few models (baselines beside autoencoders), evaluates each on the
held-out test part, writes top-10 lists and prints one comparison table. Every step is one of
the public commands, so the quickstart doubles as a tour of the CLI (each command is printed).
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path

from recsys.errors import RecsysError
from recsys.evaluation.metrics import COMPARE_DEFAULT

DEFAULT_MODELS = "pop,itemknn,ease,als,multvae,multdae"
# The shipped configs hold the settings chosen on validation data (early stopping included).
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# The comparison table's metrics (the default columns of `recsys compare`): one home.
METRICS = ",".join(COMPARE_DEFAULT)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quickstart", help="prepare ml-latest-small, train, evaluate, recommend",
                       description=__doc__)
    p.add_argument("--out", default="runs/quickstart",
                   help="working directory (default %(default)s)")
    p.add_argument("--models", default=DEFAULT_MODELS,
                   help="comma-separated registry names (default %(default)s)")
    p.add_argument("--explicit", action="store_true",
                   help="also train I-AutoRec on explicit ratings and report RMSE")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--track", action="store_true",
                   help="log runs to MLflow (sqlite:///mlflow.db by default)")
    p.set_defaults(func=run)


def _call(args: list[str]) -> None:
    from recsys.cli import main

    print(f"\n$ recsys {shlex.join(args)}", flush=True)
    code = main(args)
    if code:
        raise RecsysError(f"quickstart step failed (exit {code}): recsys {shlex.join(args)}")


def _available(names: list[str]) -> list[str]:
    from recsys.models.registry import MODELS, available_models

    unknown = [n for n in names if n not in MODELS]
    if unknown:
        from recsys.models.registry import get_model_class

        get_model_class(unknown[0])  # raises the one-line error with a suggestion
    have = set(available_models())
    return [n for n in names if n in have]


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    if not names:
        raise RecsysError(f"--models {args.models!r}: no model named; give registry names, "
                          f"e.g. --models {DEFAULT_MODELS}")
    models = _available(names)
    track = [] if args.track else ["--no-track"]
    data = out / "data" / "ml-latest-small-implicit"
    started = time.perf_counter()
    # Ratings >= 4 count as positives (Mult-VAE keeps ratings > 3.5: the same on half stars).
    _call(["prepare", "ml-latest-small", "--split", "random", "--implicit-threshold", "4",
           "--min-user-interactions", "5", "--test-fraction", "0.2", "--valid-fraction", "0.1",
           "--seed", str(args.seed), "--out", str(data)])
    results: dict[str, dict[str, float]] = {}
    for name in models:
        run_dir = out / "runs" / name
        _call(["train", name, "--data", str(data), "--out", str(run_dir), "--quiet", "--overwrite",
               "--seed", str(args.seed), *_config(name), *track])
        metrics_file = run_dir / "quickstart-metrics.json"
        _call(["evaluate", str(run_dir), "--data", str(data), "--metrics", METRICS,
               "--json", str(metrics_file)])
        results[name] = json.loads(metrics_file.read_text())
    if models:
        best = max(results, key=lambda m: results[m].get("ndcg@100", float("-inf")))
        top10 = out / f"top10-{best}.csv"
        _call(["recommend", str(out / "runs" / best), "--data", str(data), "--k", "10",
               "--out", str(top10)])
        _show_one_user(top10, data, best)
    if args.explicit and "autorec" in _available(["autorec"]):
        explicit = out / "data" / "ml-latest-small-explicit"
        _call(["prepare", "ml-latest-small", "--split", "random", "--test-fraction", "0.1",
               "--valid-fraction", "0.1", "--seed", str(args.seed), "--out", str(explicit)])
        run_dir = out / "runs" / "autorec"
        _call(["train", "autorec", "--data", str(explicit), "--out", str(run_dir), "--quiet",
               "--overwrite",
               "--seed", str(args.seed), *_config("autorec"), *track])
        metrics_file = run_dir / "quickstart-metrics.json"
        _call(["evaluate", str(run_dir), "--data", str(explicit), "--metrics", "rmse,mae",
               "--json", str(metrics_file)])
        results["autorec (explicit)"] = json.loads(metrics_file.read_text())
    _print_summary(results, time.perf_counter() - started, out)
    return 0


def _config(name: str) -> list[str]:
    config = CONFIGS / f"{name}.yaml"
    return ["--config", str(config)] if config.is_file() else []


def _show_one_user(top10: Path, data: Path, model: str) -> None:
    """Print the first user's list with movie titles: what the numbers mean in practice."""
    import pandas as pd

    from recsys.data.interactions import Dataset

    lists = pd.read_csv(top10)
    user = lists["user"].iloc[0]
    mine = lists[lists["user"] == user]
    info = Dataset.load(data).item_info
    if info is not None and "title" in info:
        mine = mine.merge(info[["item", "title"]], on="item", how="left")
    print(f"\nTop 10 of {model} for user {user}:")
    for row in mine.itertuples():
        print(f"  {row.rank:>2}. {getattr(row, 'title', row.item)}")


def _print_summary(results: dict[str, dict[str, float]], seconds: float, out: Path) -> None:
    columns = sorted({k for r in results.values() for k in r if isinstance(r[k], (int, float))})
    print("\nml-latest-small, per-user random 80/20 (ratings >= 4), test part:")
    header = f"{'model':<20}" + "".join(f"{c:>14}" for c in columns)
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        cells = "".join(f"{r[c]:>14.4f}" if c in r else f"{'':>14}" for c in columns)
        print(f"{name:<20}{cells}")
    print(f"\nDone in {seconds:.0f} s. Runs, top-10 lists and data are under {out}/")
