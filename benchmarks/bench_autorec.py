"""AutoRec on ml-100k's canonical folds u1..u5: test RMSE per fold, beside simple and peer models.

For each fold the training ratings are u{k}.base, read through `recsys.data.prepare` (the same
path as `recsys prepare ml-100k --split ml100k-u{k}`); a random share of them (--valid-fraction,
default 5%) is held out as the validation part that early stopping watches. The test file is
never seen before the final prediction, and every one of its 20,000 ratings is scored, including
the ~30 per fold whose item never occurs in u{k}.base (AutoRec predicts those by its fallback, the
user's mean; the count is printed).

Rows: I-AutoRec and U-AutoRec with configs/autorec.yaml (U-AutoRec: `based: user`), the global
mean of the training ratings, and Surprise's SVD with its defaults when `surprise` is importable
(the optional `bench` extra: pip install scikit-surprise; not a dependency). Seconds are one fit
each (for AutoRec including its per-epoch validation).

    RECSYS_MIRROR=../shared/datasets python benchmarks/bench_autorec.py
    python benchmarks/bench_autorec.py --folds 1 --models iautorec,mean
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from targets import AUTOREC_RMSE as TARGET  # noqa: E402

from recsys.config import load_yaml  # noqa: E402
from recsys.data.interactions import EvalSplit, Interactions  # noqa: E402
from recsys.data.prepare import PrepareOptions, prepare_movielens  # noqa: E402
from recsys.models.autorec import AutoRec  # noqa: E402
from recsys.models.base import FitContext  # noqa: E402

MODELS = ("iautorec", "uautorec", "mean", "svd")
LABELS = {"iautorec": "I-AutoRec", "uautorec": "U-AutoRec", "mean": "global mean",
          "svd": "Surprise SVD"}


def carve_validation(train: Interactions, fraction: float, seed: int
                     ) -> tuple[Interactions, EvalSplit]:
    """Move a random ``fraction`` of the training ratings to a validation part (every user keeps
    at least one training rating)."""
    m = train.matrix.tocsr()
    rng = np.random.default_rng(seed)
    held = rng.random(m.nnz) < fraction
    counts = np.diff(m.indptr)
    rows = np.repeat(np.arange(m.shape[0]), counts)
    held_per_user = np.bincount(rows, weights=held, minlength=m.shape[0])
    emptied = np.flatnonzero((held_per_user == counts) & (counts > 0))
    held[m.indptr[emptied]] = False  # give such a user its first rating back

    def part(mask: np.ndarray) -> sp.csr_matrix:
        return sp.csr_matrix((m.data[mask], (rows[mask], m.indices[mask])), shape=m.shape)

    kept, valid = part(~held), part(held)
    users = np.flatnonzero(np.diff(valid.indptr) > 0)
    return train.with_matrix(kept), EvalSplit(kept, valid, users)


def read_test(folder: Path, fold: int) -> pd.DataFrame:
    return pd.read_csv(folder / f"u{fold}.test", sep="\t",
                       names=["user", "item", "rating", "timestamp"])


def rmse(pred: np.ndarray, actual: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(pred, np.float64) - actual) ** 2)))


def run_autorec(params: dict, train: Interactions, valid: EvalSplit, meta: dict,
                users: np.ndarray, items: np.ndarray, actual: np.ndarray) -> dict:
    model = AutoRec(**params)
    started = time.perf_counter()
    model.fit(train, valid, FitContext(quiet=True, data_meta=meta))
    seconds = time.perf_counter() - started
    pred, why = model.predict_with_fallback(users, items)
    result = model.train_result_
    return {"rmse": rmse(pred, actual), "seconds": seconds, "best_epoch": result.best_epoch,
            "valid_rmse": result.best_value, "fallbacks": int((why != "").sum())}


def run_svd(base: pd.DataFrame, test: pd.DataFrame) -> dict:
    from surprise import SVD, Reader
    from surprise import Dataset as SurpriseData

    data = SurpriseData.load_from_df(base[["user", "item", "rating"]], Reader(rating_scale=(1, 5)))
    algo = SVD(random_state=0)
    started = time.perf_counter()
    algo.fit(data.build_full_trainset())
    seconds = time.perf_counter() - started
    triples = list(test[["user", "item", "rating"]].itertuples(index=False, name=None))
    pred = np.array([p.est for p in algo.test(triples)])
    return {"rmse": rmse(pred, test["rating"].to_numpy()), "seconds": seconds}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folds", default="1,2,3,4,5", help="comma-separated fold numbers")
    p.add_argument("--models", default=",".join(MODELS), help=f"subset of {','.join(MODELS)}")
    p.add_argument("--config", default=str(REPO / "configs" / "autorec.yaml"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override an AutoRec config key (both variants)")
    p.add_argument("--valid-fraction", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0, help="validation carve-out and model seed")
    p.add_argument("--mirror", help="dataset mirror (default $RECSYS_MIRROR)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "autorec"))
    args = p.parse_args()

    from recsys.config import parse_set_options
    from recsys.data import movielens

    if args.threads:
        torch.set_num_threads(args.threads)
    models = [m for m in args.models.split(",") if m]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        sys.exit(f"unknown model(s) {unknown}; choose from {','.join(MODELS)}")
    if "svd" in models:
        try:
            import surprise  # noqa: F401
        except ImportError:
            print("note: surprise is not installed (pip install scikit-surprise): no SVD row",
                  file=sys.stderr)
            models.remove("svd")
    config = load_yaml(args.config)
    for section in ("tune", "search"):  # for `recsys train --tune`, not the model's settings
        config.pop(section, None)
    config.update(parse_set_options(args.set))
    config["seed"] = args.seed
    variants = {"iautorec": {**config, "based": "item"}, "uautorec": {**config, "based": "user"}}
    _, folder = movielens.resolve("ml-100k", mirror=args.mirror, progress=False)

    rows = []
    for fold in [int(f) for f in args.folds.split(",")]:
        # valid_fraction=0: prepare would otherwise carve its own 10% validation from the base
        # file, and carve_validation below another 5%, training on ~85% of u{k}.base.
        ds = prepare_movielens("ml-100k", PrepareOptions(split=f"ml100k-u{fold}",
                                                         valid_fraction=0.0),
                               mirror=args.mirror, progress=False)
        train, valid = carve_validation(ds.train, args.valid_fraction, args.seed)
        test = read_test(folder, fold)
        users = ds.users.index(test["user"].to_numpy())
        items = ds.items.index(test["item"].to_numpy())
        actual = test["rating"].to_numpy(np.float64)
        meta = dict(ds.meta)
        row: dict = {"fold": f"u{fold}", "test_ratings": len(test),
                     "unseen_test_items": int((items < 0).sum())}
        for name in models:
            if name in variants:
                row[name] = run_autorec(variants[name], train, valid, meta, users, items, actual)
            elif name == "mean":
                started = time.perf_counter()
                mean = float(ds.train.matrix.data.mean())
                row[name] = {"rmse": rmse(np.full(len(actual), mean), actual),
                             "seconds": time.perf_counter() - started}
            elif name == "svd":
                base = ds.train.to_frame()
                base["user"] = ds.users.lookup(base["user"].to_numpy())
                base["item"] = ds.items.lookup(base["item"].to_numpy())
                row[name] = run_svd(base, test)
        rows.append(row)
        print(f"u{fold}: " + "  ".join(f"{LABELS[m]} {row[m]['rmse']:.4f} "
                                        f"({row[m]['seconds']:.1f}s)" for m in models), flush=True)

    table = format_table(rows, models)
    print("\n" + table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "autorec.md").write_text(table + "\n")
    (out / "autorec.json").write_text(json.dumps({"config": config, "rows": rows}, indent=2))
    if "iautorec" in models and len(rows) == 5:
        mean = np.mean([r["iautorec"]["rmse"] for r in rows])
        verdict = "meets" if mean <= TARGET else "misses"
        print(f"\nI-AutoRec mean RMSE over u1..u5: {mean:.4f} ({verdict} the target {TARGET})")
    return 0


def format_table(rows: list[dict], models: list[str]) -> str:
    head = ["fold"] + [f"{LABELS[m]} RMSE" for m in models] + [f"{LABELS[m]} s" for m in models]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["fold"]] + [f"{r[m]['rmse']:.4f}" for m in models] + \
                [f"{r[m]['seconds']:.1f}" for m in models]
        lines.append("| " + " | ".join(cells) + " |")
    if len(rows) > 1:
        cells = ["mean"] + [f"{np.mean([r[m]['rmse'] for r in rows]):.4f}" for m in models] + \
                [f"{np.mean([r[m]['seconds'] for r in rows]):.1f}" for m in models]
        lines.append("| " + " | ".join(f"**{c}**" for c in cells) + " |")
    notes = []
    for m in ("iautorec", "uautorec"):
        if m in models:
            epochs = ", ".join(str(r[m]["best_epoch"]) for r in rows)
            notes.append(f"{LABELS[m]} best epochs (validation RMSE): {epochs}")
    unseen = ", ".join(str(r["unseen_test_items"]) for r in rows)
    notes.append(f"test ratings whose item is not in the base file (AutoRec: user-mean "
                 f"fallback): {unseen}")
    return "\n".join(lines + [""] + notes)


if __name__ == "__main__":
    sys.exit(main())
