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
        [--set KEY=VALUE ...]   # cvae settings, e.g. --set cold_rate=0.5 (choose on --part valid)

Results: a Markdown table on stdout and OUT/results.json (default benchmarks/out/cold).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import zipfile
from pathlib import Path

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


def score(lists: pd.DataFrame, target: pd.DataFrame) -> dict[str, float]:
    """Mean metrics of the lists against ``target`` (user,item), every target user counted
    (a user without a list scores 0)."""
    users = np.sort(target["user"].unique())
    row = pd.Series(np.arange(len(users)), index=users)
    lists = lists[lists["user"].isin(users) & (lists["rank"] <= K)]
    hits = lists.merge(target.assign(hit=1.0), on=["user", "item"], how="left")
    matrix = np.zeros((len(users), K))
    matrix[row[hits["user"]].to_numpy(), hits["rank"].to_numpy() - 1] = hits["hit"].fillna(0)
    n_rel = torch.as_tensor(target.groupby("user").size().reindex(users).to_numpy().copy())
    values = ranking_metrics(torch.as_tensor(matrix), n_rel, METRICS)
    return {m: float(v.mean()) for m, v in values.items()} | {"users": len(users)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("valid", "test"), default="test")
    parser.add_argument("--seed", type=int, default=98765, help="the strong split's seed")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a cvae setting (recsys train --set)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "cold")
    parser.add_argument("--mirror", default=os.environ.get("RECSYS_MIRROR"))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if not args.mirror:
        sys.exit("bench_cold: ml-100k needs the mirror (RECSYS_MIRROR or --mirror)")
    bench_byo.ENV.update({"RECSYS_MIRROR": args.mirror, "OMP_NUM_THREADS": "1"})
    out = args.out.resolve()
    prep = out / f"prep-{args.seed}"
    if not (prep / "metadata.json").is_file():
        recsys("prepare", "ml-100k", "--split", "strong", "--seed", str(args.seed),
               "--implicit-threshold", "4", "--min-user-interactions", "5", "--out", str(prep),
               "--quiet")
    tag = "-".join(s.replace("=", "") for s in args.set) or "defaults"
    runs = {"pop": out / "runs" / "pop", "multvae": out / "runs" / "multvae",
            "cvae": out / "runs" / f"cvae-{tag}"}
    for model, run in runs.items():
        if not (run / "model" / "model.json").is_file():
            extra = [a for s in args.set for a in ("--set", s)] if model == "cvae" else []
            seed = [] if model == "pop" else ["--seed", "0"]
            recsys("train", model, "--data", str(prep), "--out", str(run), "--no-track",
                   "--device", args.device, "--quiet", *seed, *extra)

    data = Dataset.load(prep)
    target = part_frame(data, args.part)
    history = part_frame(data, f"{args.part}_history")
    everything = pd.concat([history, target], ignore_index=True)
    lists_dir = out / f"lists-{args.part}-{tag}"
    lists_dir.mkdir(parents=True, exist_ok=True)
    h_file, f_file = lists_dir / "histories.csv", lists_dir / "features.csv"
    history.to_csv(h_file, index=False)
    user_features(args.mirror, target["user"].unique()).to_csv(f_file, index=False)

    cases = [  # (row, run, history given, features given)
        ("popularity, no history", "pop", False, True),
        ("cvae, no history (features)", "cvae", False, True),
        ("popularity, 80% history", "pop", True, False),
        ("Mult-VAE, 80% history", "multvae", True, False),
        ("cvae, 80% history, no features", "cvae", True, False),
        ("cvae, 80% history + features", "cvae", True, True),
    ]
    rows = []
    for label, run, with_history, with_features in cases:
        path = lists_dir / f"{run}-{int(with_history)}{int(with_features)}.csv"
        recsys("recommend", str(runs[run]), "--data", str(prep), "--k", str(K), "--out",
               str(path), "--device", args.device, "--quiet",
               *(["--histories", str(h_file)] if with_history else []),
               *(["--user-features", str(f_file)] if with_features else []))
        lists = pd.read_csv(path)
        rows.append({"row": label, **score(lists, target)})
        if not with_history:  # nothing masked: the fold-in items can be found too
            rows[-1]["ndcg@100, all items"] = score(lists, everything)["ndcg@100"]

    by = {r["row"]: r["ndcg@100"] for r in rows}
    cold_gain = by["cvae, no history (features)"] / by["popularity, no history"] - 1
    warm_gap = by["cvae, 80% history + features"] - by["Mult-VAE, 80% history"]
    print(f"ml-100k strong split (seed {args.seed}), part {args.part}, "
          f"{rows[0]['users']} users; cvae settings: {tag}\n")
    print(rows_markdown(rows, ["row", *METRICS, "ndcg@100, all items"]))
    print(f"\ncvae without history vs popularity: {cold_gain:+.1%} NDCG@100 (target "
          f"+{COLD_GAIN:.0%}: {'met' if cold_gain >= COLD_GAIN else 'NOT met'}); with 80% "
          f"history vs Mult-VAE: {warm_gap:+.4f} ({'met' if warm_gap >= 0 else 'NOT met'})")
    results = {"part": args.part, "seed": args.seed, "cvae_settings": args.set, "rows": rows,
               "cold_gain": cold_gain, "warm_gap": warm_gap, "machine": machine_info()}
    (out / f"results-{args.part}-{tag}.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
