"""Cold users scored from their features (issue 19): cvae against popularity and Mult-VAE on
ml-100k's strong-generalisation split, through the public commands only.

    recsys prepare ml-100k --split strong --seed 98765 --implicit-threshold 4 \\
        --min-user-interactions 5 --out P          # 94 validation + 94 test users, held out
    recsys train pop|multvae|cvae --data P --out RUN --no-track
    recsys recommend RUN --data P --user-features F.csv --k 100 --out L.csv   # no history
    recsys recommend RUN --data P --histories H.csv [--user-features F.csv] --k 100 --out L.csv

The held-out users of the part scored (``--part test``, or ``valid`` for choosing settings) are
given to `recsys recommend` as new users: F.csv holds their age, gender and occupation from
u.user (the columns the prepared data's user features were made from), H.csv their fold-in
part (80% of their positives). "no history": only F, every user cold; "80% history": H (and F
for cvae). NDCG@100 and recall@20/50 are computed from the written lists against the part's
scored 20% with `recsys.evaluation.metrics.ranking_metrics` (the fold-in items are not targets
in either case, so that every row is scored against the same items).

    RECSYS_MIRROR=/path/to/zips python benchmarks/bench_cold.py [--part valid|test]
        [--folds N]             # N strong splits, seeds --seed, --seed + 1, ...
        [--set KEY=VALUE ...]   # cvae settings, e.g. --set cold_rate=0.5 (choose on --part valid)

``--folds N`` repeats the whole measurement on N strong splits drawn with consecutive seeds (each
its own held-out users, training users and trained models) and pools the scored users of all of
them: with 94 users a split, one split cannot tell a 10% gain from noise. Each target is then
decided on the pooled (split, user) pairs: the no-history one by the per-pair margin
cvae - 1.1 x popularity, the 80%-history one by cvae - Mult-VAE; both with their mean, paired
standard error (`recsys.evaluation.stats.paired_gain`) and a percentile bootstrap 95% interval
over the pairs (`bootstrap_ci`). A user may be held out in more than one split (the splits are
drawn independently, not as disjoint folds: `prepare --split strong` has no fold option); each
time counts as one pair. The splits' own figures are printed beside the pooled ones.

Results: Markdown tables on stdout and OUT/results-PART-SETTINGS-foldsN.json (default
benchmarks/out/cold).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_byo  # noqa: E402
from bench_byo import recsys  # noqa: E402
from measure import machine_info  # noqa: E402
from render import rows_markdown  # noqa: E402

from recsys.data.interactions import Dataset  # noqa: E402
from recsys.evaluation.metrics import ranking_metrics  # noqa: E402
from recsys.evaluation.stats import bootstrap_ci, paired_gain  # noqa: E402

K = 100
METRICS = ["ndcg@100", "recall@20", "recall@50"]
# The targets: cvae without history >= 1.1 x popularity; with 80%: >= Mult-VAE's.
COLD_GAIN = 0.10


def user_features(mirror: str, users: np.ndarray) -> pd.DataFrame:
    """age, gender, occupation of ``users`` from the zip's u.user (what prepare encoded)."""
    with zipfile.ZipFile(Path(mirror) / "ml-100k.zip") as z, z.open("ml-100k/u.user") as f:
        frame = pd.read_csv(f, sep="|", names=["user", "age", "gender", "occupation", "zip"])
    return frame[frame["user"].isin(users)][["user", "age", "gender", "occupation"]]


def part_frame(data: Dataset, name: str) -> pd.DataFrame:
    """user,item rows (external ids) of one part."""
    coo = data.parts[name].matrix.tocoo()
    return pd.DataFrame({"user": data.users.ids[coo.row], "item": data.items.ids[coo.col]})


CASES = [  # (row, run, history given, features given)
    ("popularity, no history", "pop", False, True),
    ("cvae, no history (features)", "cvae", False, True),
    ("popularity, 80% history", "pop", True, False),
    ("Mult-VAE, 80% history", "multvae", True, False),
    ("cvae, 80% history, no features", "cvae", True, False),
    ("cvae, 80% history + features", "cvae", True, True),
]
COLD_ROWS = ("cvae, no history (features)", "popularity, no history")
WARM_ROWS = ("cvae, 80% history + features", "Mult-VAE, 80% history")
ALL_ITEMS = "ndcg@100, all items"


def per_user(lists: pd.DataFrame, target: pd.DataFrame) -> pd.DataFrame:
    """Each target user's metrics of the lists against ``target`` (user,item), one row a user in
    id order (a user without a list scores 0)."""
    users = np.sort(target["user"].unique())
    row = pd.Series(np.arange(len(users)), index=users)
    lists = lists[lists["user"].isin(users) & (lists["rank"] <= K)]
    hits = lists.merge(target.assign(hit=1.0), on=["user", "item"], how="left")
    matrix = np.zeros((len(users), K))
    matrix[row[hits["user"]].to_numpy(), hits["rank"].to_numpy() - 1] = hits["hit"].fillna(0)
    n_rel = torch.as_tensor(target.groupby("user").size().reindex(users).to_numpy().copy())
    values = ranking_metrics(torch.as_tensor(matrix), n_rel, METRICS)
    return pd.DataFrame({"user": users, **{m: v.numpy() for m, v in values.items()}})


def run_split(args: argparse.Namespace, seed: int, out: Path, tag: str
              ) -> dict[str, pd.DataFrame]:
    """One strong split (``seed``): prepare, train pop, Mult-VAE and cvae (kept when already
    there), recommend every case; each case's per-user table on ``args.part``."""
    prep = out / f"prep-{seed}"
    if not (prep / "metadata.json").is_file():
        recsys("prepare", "ml-100k", "--split", "strong", "--seed", str(seed),
               "--implicit-threshold", "4", "--min-user-interactions", "5", "--out", str(prep),
               "--quiet")
    runs = {"pop": out / f"runs-{seed}" / "pop", "multvae": out / f"runs-{seed}" / "multvae",
            "cvae": out / f"runs-{seed}" / f"cvae-{tag}"}
    for model, run in runs.items():
        if not (run / "model" / "model.json").is_file():
            extra = [a for s in args.set for a in ("--set", s)] if model == "cvae" else []
            train_seed = [] if model == "pop" else ["--seed", "0"]
            recsys("train", model, "--data", str(prep), "--out", str(run), "--no-track",
                   "--device", args.device, "--quiet", *train_seed, *extra)

    data = Dataset.load(prep)
    target = part_frame(data, args.part)
    history = part_frame(data, f"{args.part}_history")
    everything = pd.concat([history, target], ignore_index=True)
    lists_dir = out / f"lists-{seed}-{args.part}-{tag}"
    lists_dir.mkdir(parents=True, exist_ok=True)
    h_file, f_file = lists_dir / "histories.csv", lists_dir / "features.csv"
    history.to_csv(h_file, index=False)
    user_features(args.mirror, target["user"].unique()).to_csv(f_file, index=False)
    tables = {}
    for label, run, with_history, with_features in CASES:
        path = lists_dir / f"{run}-{int(with_history)}{int(with_features)}.csv"
        recsys("recommend", str(runs[run]), "--data", str(prep), "--k", str(K), "--out",
               str(path), "--device", args.device, "--quiet",
               *(["--histories", str(h_file)] if with_history else []),
               *(["--user-features", str(f_file)] if with_features else []))
        lists = pd.read_csv(path)
        table = per_user(lists, target)
        if not with_history:  # nothing masked: the fold-in items can be found too
            table[ALL_ITEMS] = per_user(lists, everything)["ndcg@100"].to_numpy()
        tables[label] = table
    return tables


def summary(tables: dict[str, pd.DataFrame]) -> dict[str, Any]:
    """Mean rows and both targets' margins over the (split, user) pairs of ``tables`` (each
    case's rows aligned: the same pairs in the same order)."""
    rows = [{"row": label, **{c: float(t[c].mean()) for c in t.columns if c != "user"},
             "users": len(t)} for label, t in tables.items()]
    ndcg = {label: t["ndcg@100"].to_numpy() for label, t in tables.items()}
    cvae, pop = (ndcg[r] for r in COLD_ROWS)
    warm_cvae, multvae = (ndcg[r] for r in WARM_ROWS)
    targets = {}
    # cvae >= 1.1 x popularity on the mean is mean(cvae - 1.1 x pop) >= 0: a per-pair margin,
    # so its paired SE and interval decide the ratio target too.
    for name, a, b in (("cold_margin", cvae, (1 + COLD_GAIN) * pop),
                       ("warm_gap", warm_cvae, multvae)):
        mean, se, n = paired_gain(a, b)
        low, high = bootstrap_ci(pd.DataFrame({name: a - b}), [name])[name]
        targets[name] = {"mean": mean, "se": se, "pairs": n, "ci95": [low, high]}
    targets["cold_gain"] = float(cvae.mean() / pop.mean() - 1)
    return {"rows": rows, "targets": targets}


def verdict(mean: float, low: float, high: float) -> str:
    """met / NOT met by the point estimate, and whether the interval settles it."""
    word = "met" if mean >= 0 else "NOT met"
    settled = low >= 0 or high < 0
    return f"{word}{'' if settled else ', the 95% interval spans 0'}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("valid", "test"), default="test")
    parser.add_argument("--seed", type=int, default=98765,
                        help="the (first) strong split's seed")
    parser.add_argument("--folds", type=int, default=1,
                        help="strong splits to pool, seeds --seed .. --seed + N - 1 (default 1)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a cvae setting (recsys train --set)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "cold")
    parser.add_argument("--mirror", default=os.environ.get("RECSYS_MIRROR"))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if not args.mirror:
        sys.exit("bench_cold: ml-100k needs the mirror (RECSYS_MIRROR or --mirror)")
    if args.folds < 1:
        sys.exit(f"bench_cold: --folds {args.folds}: need at least 1")
    bench_byo.ENV.update({"RECSYS_MIRROR": args.mirror, "OMP_NUM_THREADS": "1"})
    out = args.out.resolve()
    tag = "-".join(s.replace("=", "") for s in args.set) or "defaults"
    seeds = [args.seed + i for i in range(args.folds)]
    splits = {seed: run_split(args, seed, out, tag) for seed in seeds}
    per_split = {seed: summary(tables) for seed, tables in splits.items()}
    pooled = summary({label: pd.concat([splits[s][label] for s in seeds], ignore_index=True)
                      for label, *_ in CASES})
    distinct = len(np.unique(np.concatenate(
        [splits[s][COLD_ROWS[1]]["user"].to_numpy() for s in seeds])))

    pairs = pooled["rows"][0]["users"]
    print(f"ml-100k strong splits (seeds {seeds[0]}..{seeds[-1]}), part {args.part}: {pairs} "
          f"(split, user) pairs, {distinct} distinct users; cvae settings: {tag}\n")
    print(rows_markdown(pooled["rows"], ["row", *METRICS, ALL_ITEMS, "users"]))
    if len(seeds) > 1:
        print("\nper split (NDCG@100):\n")
        print(rows_markdown([
            {"seed": seed, "users": r["rows"][0]["users"],
             **{label: row["ndcg@100"] for label, row in
                zip((c[0] for c in CASES), r["rows"], strict=True)},
             "cold gain": r["targets"]["cold_gain"], "warm gap": r["targets"]["warm_gap"]["mean"]}
            for seed, r in per_split.items()],
            ["seed", "users", *COLD_ROWS[::-1], *WARM_ROWS[::-1], "cold gain", "warm gap"]))
    t = pooled["targets"]
    cold, warm = t["cold_margin"], t["warm_gap"]
    print(f"\ncvae without history vs popularity: {t['cold_gain']:+.1%} NDCG@100 (target "
          f"+{COLD_GAIN:.0%}); margin cvae - {1 + COLD_GAIN:.1f} x pop {cold['mean']:+.4f} "
          f"(SE {cold['se']:.4f}, 95% CI {cold['ci95'][0]:+.4f} .. {cold['ci95'][1]:+.4f}): "
          f"{verdict(cold['mean'], *cold['ci95'])}")
    print(f"cvae with 80% history vs Mult-VAE: {warm['mean']:+.4f} (SE {warm['se']:.4f}, 95% CI "
          f"{warm['ci95'][0]:+.4f} .. {warm['ci95'][1]:+.4f}): "
          f"{verdict(warm['mean'], *warm['ci95'])}")
    results = {"part": args.part, "seeds": seeds, "cvae_settings": args.set,
               "distinct_users": distinct, "pooled": pooled,
               "splits": {str(s): r for s, r in per_split.items()}, "machine": machine_info()}
    path = out / f"results-{args.part}-{tag}-folds{args.folds}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
