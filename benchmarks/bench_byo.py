"""Bring-your-own splits, default commands, an outside evaluator: the way users measure us.

For each dataset a split is made here with pandas (not by recsys, and with other seeds and
protocols than the README's tables), written as train.csv / test.csv, and then only the public
commands run, with no --config:

    recsys prepare --train-file train.csv --test-file test.csv --implicit-threshold 4 --out P
    recsys train MODEL --data P --out RUN --no-track
    recsys recommend RUN --data P --users test_users.csv --k 100 --out lists.csv

The lists are scored by `score_lists` below (plain pandas, nothing from recsys.evaluation)
against test.csv, and RecBole 1.2.1's same model (the `bench` extra, its default settings) is fitted
on the same parts (benchmarks/peers.py ``recbole_fit``: our train / validation carve / test).
`recsys evaluate`'s NDCG@100 is shown beside the outside figure: they must agree.

Splits:
- ml-100k: ratings >= 4, users with >= 5 of them, per-user random 80/20, seed 7.
- ml-latest-small: ratings >= 4, users with >= 5 of them, per-user temporal: each user's latest
  20% by timestamp is the test file.

    RECSYS_MIRROR=/path/to/zips python benchmarks/bench_byo.py [--models multvae,multdae,recvae]
        [--datasets ml-100k,ml-latest-small] [--threads 1] [--no-recbole]

I-AutoRec (``--only autorec``): ml-100k's u1..u5 files given as bring-your-own CSV files, against
the same folds through ``--split ml100k-uN``, both with default commands:

    recsys prepare --train-file u1.base.csv --test-file u1.test.csv --out P
    recsys train autorec --data P --out RUN --no-track     # P: or ml-100k --split ml100k-u1
    recsys predict RUN --pairs u1.test.csv --out pred.csv  # RMSE computed here

The RMSE is computed here over every rating of the test file (items unseen in training get the
model's fallback), beside `recsys evaluate`'s (which leaves those ~30 a fold out).

Results: a Markdown table on stdout and benchmarks/out/byo/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from measure import importable, machine_info  # noqa: E402
from peers import recbole_fit  # noqa: E402
from render import rows_markdown  # noqa: E402

K = 100
RECBOLE_NAMES = {"multvae": "MultiVAE", "multdae": "MultiDAE", "recvae": "RecVAE",
                 "ease": "EASE"}
ENV: dict[str, str] = {}


def recsys(*args: str) -> None:
    """One public CLI call (a subprocess, as a user runs it); a failure stops the benchmark."""
    print("$ recsys " + " ".join(args), file=sys.stderr, flush=True)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", **ENV}
    done = subprocess.run([sys.executable, "-m", "recsys.cli", *args], cwd=REPO, env=env,
                          stdout=sys.stderr, stderr=sys.stderr)
    if done.returncode != 0:
        sys.exit(f"bench_byo: `recsys {' '.join(args)}` failed (exit {done.returncode})")


# -- the splits, made without recsys -------------------------------------------------------------


def ratings(name: str, mirror: str | None) -> pd.DataFrame:
    """user,item,rating,timestamp of a MovieLens set: ml-latest-small from the repo, ml-100k's
    u.data from the mirror's zip."""
    if name == "ml-latest-small":
        frame = pd.read_csv(REPO / "data" / "ml-latest-small" / "ratings.csv")
        return frame.rename(columns={"userId": "user", "movieId": "item"})
    import zipfile

    if not mirror:
        sys.exit("bench_byo: ml-100k needs the mirror (RECSYS_MIRROR or --mirror)")
    with zipfile.ZipFile(Path(mirror) / "ml-100k.zip") as z, z.open("ml-100k/u.data") as f:
        return pd.read_csv(f, sep="\t", names=["user", "item", "rating", "timestamp"])


def make_split(name: str, frame: pd.DataFrame, folder: Path) -> dict[str, Any]:
    """Positives (rating >= 4) of users with >= 5 of them, split per user: random 80/20 with
    seed 7 (ml-100k) or each user's latest 20% (ml-latest-small). The files keep every rating
    (the threshold is applied by `recsys prepare --implicit-threshold 4`, as a user would)."""
    pos = frame[frame["rating"] >= 4]
    counts = pos.groupby("user")["item"].transform("size")
    pos = pos[counts >= 5].copy()
    if name == "ml-100k":
        protocol = "per-user random 80/20, seed 7"
        rng = np.random.default_rng(7)
        pos["key"] = rng.random(len(pos))
    else:
        protocol = "per-user temporal: latest 20% of each user's positives"
        pos["key"] = pos["timestamp"].rank(method="first")
    pos = pos.sort_values(["user", "key"])
    rank = pos.groupby("user").cumcount()
    size = pos.groupby("user")["item"].transform("size")
    n_test = np.maximum(1, np.round(0.2 * size).astype(int))
    is_test = rank >= size - n_test
    folder.mkdir(parents=True, exist_ok=True)
    cols = ["user", "item", "rating", "timestamp"]
    pos.loc[~is_test, cols].to_csv(folder / "train.csv", index=False)
    pos.loc[is_test, cols].to_csv(folder / "test.csv", index=False)
    return {"protocol": protocol, "train_rows": int((~is_test).sum()),
            "test_rows": int(is_test.sum()), "users": int(pos["user"].nunique())}


# -- the outside evaluator ----------------------------------------------------------------------


def score_lists(lists: pd.DataFrame, train: pd.DataFrame, test: pd.DataFrame, k: int = K
                ) -> dict[str, float]:
    """NDCG@k and recall@k of top-k lists against the test file, in plain pandas.

    Test items never seen in training cannot be ranked by any model and are left out (as every
    harness does); a user is scored when they have training rows and test items left.
    NDCG = DCG / IDCG, DCG = sum over hits of 1 / log2(rank + 1), IDCG over min(|test|, k)
    hits; recall = hits / min(|test|, k).
    """
    catalogue = set(train["item"])
    test = test[test["item"].isin(catalogue) & test["user"].isin(set(train["user"]))]
    relevant = test.groupby("user")["item"].apply(set)
    top = lists[lists["rank"] <= k]
    hits = top.merge(test[["user", "item"]], on=["user", "item"])
    gains = (1.0 / np.log2(hits["rank"] + 1.0)).groupby(hits["user"]).sum()
    n_rel = relevant.map(len).clip(upper=k)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = n_rel.map(lambda n: discounts[:n].sum())
    dcg = gains.reindex(relevant.index, fill_value=0.0)
    found = hits.groupby("user").size().reindex(relevant.index, fill_value=0)
    return {f"ndcg@{k}": float((dcg / ideal).mean()),
            f"recall@{k}": float((found / n_rel).mean()), "users": int(len(relevant))}


# -- one dataset ----------------------------------------------------------------------------------


def run_dataset(name: str, models: list[str], out: Path, mirror: str | None,
                recbole: bool, table: dict[str, Any], save: Callable[[], None]) -> None:
    """Fill ``table`` with the split and one row per fitted model, calling ``save`` after each
    row, so that a long run that is stopped keeps the rows it has."""
    folder = out / name
    split = make_split(name, ratings(name, mirror), folder / "files")
    prep = folder / "prepared"
    recsys("prepare", "--train-file", str(folder / "files" / "train.csv"),
           "--test-file", str(folder / "files" / "test.csv"), "--implicit-threshold", "4",
           "--out", str(prep), "--quiet")
    train = pd.read_csv(folder / "files" / "train.csv")
    train = train[train["rating"] >= 4]
    test = pd.read_csv(folder / "files" / "test.csv")
    users = folder / "test_users.csv"
    pd.DataFrame({"user": sorted(test["user"].unique())}).to_csv(users, index=False)
    rows: list[dict[str, Any]] = []
    table.update({"split": split, "rows": rows})
    for model in models:
        run = folder / "runs" / model
        started = time.perf_counter()
        recsys("train", model, "--data", str(prep), "--out", str(run), "--no-track",
               "--overwrite", "--quiet")
        seconds = time.perf_counter() - started
        lists_path = folder / f"lists-{model}.csv"
        recsys("recommend", str(run), "--data", str(prep), "--users", str(users), "--k", str(K),
               "--out", str(lists_path), "--quiet")
        outside = score_lists(pd.read_csv(lists_path), train, test)
        info = json.loads((run / "run.json").read_text())
        rows.append({"dataset": name, "model": f"recsys {model} (defaults)", **outside,
                     "recsys evaluate ndcg@100": float(info["metrics"]["ndcg@100"]),
                     "train_seconds": seconds,
                     "refit": (info.get("refit") or {}).get("epochs")})
        save()
        peer = RECBOLE_NAMES.get(model)
        if recbole and peer:
            result = recbole_fit(peer, prep, folder / "recbole" / model)
            rows.append({"dataset": name, "model": result["model"],
                         "ndcg@100": result["ndcg@100"], "train_seconds": result["fit_seconds"],
                         "note": "RecBole recall@100 divides by |test|: not shown"})
            save()


def autorec_folds(out: Path, mirror: str | None, folds: list[int]) -> dict[str, Any]:
    """I-AutoRec with default commands on each fold, as files and as the built-in split."""
    import zipfile

    if not mirror:
        sys.exit("bench_byo: ml-100k needs the mirror (RECSYS_MIRROR or --mirror)")
    names = ["user", "item", "rating", "timestamp"]
    rows = []
    for fold in folds:
        folder = out / "autorec" / f"u{fold}"
        folder.mkdir(parents=True, exist_ok=True)
        files = {}
        with zipfile.ZipFile(Path(mirror) / "ml-100k.zip") as z:
            for part in ("base", "test"):
                with z.open(f"ml-100k/u{fold}.{part}") as f:
                    files[part] = pd.read_csv(f, sep="\t", names=names)
                files[part].to_csv(folder / f"u{fold}.{part}.csv", index=False)
        test = files["test"]
        for how in ("files", "split"):
            prep, run = folder / f"prepared-{how}", folder / f"run-{how}"
            source = (["--train-file", str(folder / f"u{fold}.base.csv"),
                       "--test-file", str(folder / f"u{fold}.test.csv")] if how == "files"
                      else ["ml-100k", "--split", f"ml100k-u{fold}"]
                      + (["--mirror", mirror] if mirror else []))
            recsys("prepare", *source, "--out", str(prep), "--quiet")
            started = time.perf_counter()
            recsys("train", "autorec", "--data", str(prep), "--out", str(run), "--no-track",
                   "--overwrite", "--quiet")
            seconds = time.perf_counter() - started
            pred_path = folder / f"pred-{how}.csv"
            recsys("predict", str(run), "--pairs", str(folder / f"u{fold}.test.csv"),
                   "--out", str(pred_path), "--quiet")
            pred = pd.read_csv(pred_path)
            merged = test.merge(pred, on=["user", "item"], validate="one_to_one")
            info = json.loads((run / "run.json").read_text())
            rows.append({"fold": f"u{fold}", "how": how,
                         "rmse": float(np.sqrt(((merged["prediction"] - merged["rating"]) ** 2)
                                               .mean())),
                         "recsys evaluate rmse": float(info["metrics"]["rmse"]),
                         "train_seconds": seconds,
                         "refit": (info.get("refit") or {}).get("epochs")})
    means = {how: {"rmse": float(np.mean([r["rmse"] for r in rows if r["how"] == how])),
                   "train_seconds": float(np.mean([r["train_seconds"] for r in rows
                                                   if r["how"] == how]))}
             for how in ("files", "split")}
    return {"rows": rows, "mean": means}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("topn", "autorec"), default=None,
                        help="run only one of the two sections (default both)")
    parser.add_argument("--folds", default="1,2,3,4,5", help="autorec: ml-100k folds")
    parser.add_argument("--models", default="multvae,multdae,recvae")
    parser.add_argument("--datasets", default="ml-100k,ml-latest-small")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "byo"))
    parser.add_argument("--mirror", default=os.environ.get("RECSYS_MIRROR"))
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads of every call (OMP_NUM_THREADS)")
    parser.add_argument("--no-recbole", action="store_true", help="skip the RecBole rows")
    args = parser.parse_args(argv)
    if args.threads is not None:
        ENV["OMP_NUM_THREADS"] = str(args.threads)
        import torch

        torch.set_num_threads(args.threads)
    recbole = not args.no_recbole and args.only != "autorec"
    if recbole and not importable("recbole"):
        sys.exit("bench_byo: RecBole is not importable; `pip install recbole==1.2.1` (the bench "
                 "extra) or pass --no-recbole")
    out = Path(args.out)
    models = args.models.split(",")
    results: dict[str, Any] = {"machine": machine_info(), "datasets": {}}
    out.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "autorec"):
        results["autorec"] = autorec_folds(out, args.mirror,
                                           [int(f) for f in args.folds.split(",")])
        (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
        print("\n## I-AutoRec, ml-100k folds: bring-your-own files vs --split ml100k-uN "
              "(default commands; RMSE over every test rating)\n")
        print(rows_markdown(results["autorec"]["rows"],
                            ["fold", "how", "rmse", "recsys evaluate rmse", "refit",
                             "train_seconds"]))
        print("\nmean: " + ", ".join(f"{how} {m['rmse']:.4f} ({m['train_seconds']:.1f} s a fold)"
                                     for how, m in results["autorec"]["mean"].items()))
    for name in args.datasets.split(",") if args.only in (None, "topn") else []:
        results["datasets"][name] = {}
        run_dataset(name, models, out, args.mirror, recbole, results["datasets"][name],
                    lambda: (out / "results.json").write_text(
                        json.dumps(results, indent=2, default=str)))
    for name, table in results["datasets"].items():
        print(f"\n## {name}: {table['split']['protocol']} (bring-your-own files, default "
              "commands, lists scored outside recsys)\n")
        print(rows_markdown(table["rows"], ["model", "ndcg@100", "recall@100",
                                            "recsys evaluate ndcg@100", "refit",
                                            "train_seconds"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
