"""Tuned baselines on ml-100k through the public CLI, against the peer table in PROTOCOLS.md.

Runs, each in a fresh process, exactly what a user would type:

    recsys prepare ml-100k --split random --implicit-threshold 4 --min-user-interactions 5 \
        --test-fraction 0.2 --valid-fraction 0.1 --seed 0 --out DATA
    recsys train MODEL --data DATA --out RUNS/MODEL --tune --no-track \
        --metrics recall@20,ndcg@100            (for MODEL in pop, itemknn, ease, als, bpr)

and `als:untuned`, ALS with its defaults (64 factors) and no --tune, the setting of the peer row.

then reads each run.json and prints one table: model, the hyper-parameters `--tune` chose on the
validation part, test recall@20 and NDCG@100, the final fit's seconds and the whole tuning's
seconds. The table is also written to OUT/baselines.md and OUT/baselines.json.

    RECSYS_MIRROR=../shared/datasets python benchmarks/bench_baselines.py
    python benchmarks/bench_baselines.py --data /tmp/ml100k-implicit --models ease,als
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

PREPARE = ["prepare", "ml-100k", "--split", "random", "--implicit-threshold", "4",
           "--min-user-interactions", "5", "--test-fraction", "0.2", "--valid-fraction", "0.1",
           "--seed", "0"]
METRICS = ["recall@20", "ndcg@100"]
# PROTOCOLS.md, "Peers measured here" (their own split; ours differs by seed).
PEERS = {"pop": (0.206, 0.268), "als:untuned": (0.314, 0.357), "ease": (0.395, 0.449)}


def recsys(*args: str) -> None:
    """Run one CLI command in a fresh interpreter; stop the benchmark if it fails."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}  # implicit's request, before numpy loads
    command = [sys.executable, "-m", "recsys.cli", *args]
    print("$ recsys " + " ".join(args), flush=True)
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"failed (exit {done.returncode}):\n{done.stderr.strip()}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/out/baselines", help="working directory")
    p.add_argument("--data", help="an already prepared ml-100k directory (skips prepare)")
    p.add_argument("--mirror", help="dataset mirror (default $RECSYS_MIRROR)")
    p.add_argument("--models", default="pop,itemknn,ease,als,als:untuned,bpr",
                   help="registry names; NAME:untuned trains with the defaults, no --tune")
    args = p.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data) if args.data else out / "ml100k-implicit"
    if not args.data:
        mirror = ["--mirror", args.mirror] if args.mirror else []
        recsys(*PREPARE, *mirror, "--quiet", "--out", str(data))

    rows = []
    for spec in [m.strip() for m in args.models.split(",") if m.strip()]:
        name, _, variant = spec.partition(":")
        run_dir = out / "runs" / spec.replace(":", "-")
        tune = [] if variant == "untuned" else ["--tune"]
        started = time.perf_counter()
        recsys("train", name, "--data", str(data), "--out", str(run_dir), *tune, "--quiet",
               "--no-track", "--overwrite", "--metrics", ",".join(METRICS))
        wall = time.perf_counter() - started
        info = json.loads((run_dir / "run.json").read_text())
        tuned = info["tuned"] or {}
        rows.append({"model": spec, "tuned": tuned.get("params"),
                     "valid_score": tuned.get("score"),
                     **{m: info["metrics"][m] for m in METRICS},
                     "fit_seconds": info["fit_seconds"], "tune_seconds": info["tune_seconds"],
                     "candidates": len(tuned.get("candidates", [])), "wall_seconds": wall})

    head = ("model", "tuned on validation", "recall@20", "ndcg@100", "fit s", "tune s (grid)",
            "peer recall@20 / ndcg@100")
    table = [head]
    for r in rows:
        if r["tuned"] is None:
            tuned, tuning = "(not tuned: defaults)", "-"
        else:
            tuned = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                              for k, v in r["tuned"].items()) or "(nothing to tune)"
            tuning = f"{r['tune_seconds']:.1f} ({r['candidates']})"
        peer = PEERS.get(r["model"])
        table.append((r["model"], tuned, f"{r['recall@20']:.3f}", f"{r['ndcg@100']:.3f}",
                      f"{r['fit_seconds']:.2f}", tuning,
                      f"{peer[0]:.3f} / {peer[1]:.3f}" if peer else ""))
    lines = ["| " + " | ".join(row) + " |" for row in table]
    lines.insert(1, "|" + "|".join("---" for _ in head) + "|")
    text = "\n".join(lines)
    print(f"\nml-100k, ratings >= 4, users >= 5 positives, per-user random 80/20 (seed 0), "
          f"10% of train as validation; test part, full catalogue, seen items masked "
          f"({os.cpu_count()} CPU cores):\n{text}")
    (out / "baselines.md").write_text(text + "\n")
    (out / "baselines.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
