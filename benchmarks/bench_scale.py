"""Scale on CPU: full-ranking evaluation and top-100 of every user, time per user count and
memory per batch size (issue 21, "scale past ML-20M on one machine": the local engine only).

Synthetic power-law data shaped like 10x ML-20M per user (20,108 items, ~73 interactions per
user; recsys.data.synthetic via bench_eval), a dot-product scorer (64 factors) so that the time
is the harness's. Each (users, batch size) point runs in a fresh process: its peak RSS minus its
RSS once the data and the model are built (the high-water mark is reset there, Linux) is what
the evaluation and the top-K add, which the batch size bounds. Not covered here: `recsys
prepare` of the 100M-row CSV and `--engine spark`.

    python benchmarks/bench_scale.py --users 13667,41000,136677 --batch-sizes 1024,4096
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ITEMS = 20_108
PER_USER = 100_000_000 / 1_366_770  # 10x ML-20M: ~100M interactions over 1.37M users


def _high_water_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def child(n_users: int, batch_size: int) -> dict:
    import psutil
    import torch

    sys.path.insert(0, str(HERE))
    from bench_eval import DotScorer, holdout, synthetic_matrix

    from recsys.evaluation.evaluate import evaluate
    from recsys.evaluation.metrics import RANKING_DEFAULT
    from recsys.scoring.topk import topk

    split = holdout(synthetic_matrix(n_users, ITEMS, int(n_users * PER_USER)))
    model = DotScorer(n_users, ITEMS, factors=64).to(torch.device("cpu"))
    base_mb = psutil.Process().memory_info().rss / 2**20
    # Forget the high-water mark of building the data (Linux: "5" resets VmHWM), so that the
    # peak read below is the evaluation's and the top-K's.
    Path("/proc/self/clear_refs").write_text("5")
    start = time.perf_counter()
    result = evaluate(model, split, RANKING_DEFAULT, batch_size=batch_size, device="cpu")
    eval_s = time.perf_counter() - start
    start = time.perf_counter()
    listed = sum(len(u) for u, _, _ in topk(model, split.users, split.history, 100,
                                             batch_size=batch_size, device="cpu"))
    topk_s = time.perf_counter() - start
    peak_mb = _high_water_mb()
    return {"users": int(result.n_users), "batch_size": batch_size,
            "interactions": int(split.history.nnz + split.target.nnz),
            "eval_s": round(eval_s, 2), "eval_s_per_1k": round(eval_s / result.n_users * 1e3, 3),
            "topk_users": listed, "topk_s": round(topk_s, 2),
            "topk_s_per_1k": round(topk_s / listed * 1e3, 3),
            "base_rss_mb": round(base_mb), "peak_rss_mb": round(peak_mb),
            "added_mb": round(peak_mb - base_mb), "torch_threads": torch.get_num_threads()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", default="13667,41000,136677", help="user counts, comma-separated")
    p.add_argument("--batch-sizes", default="1024,4096", help="users per scoring batch")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--json", default=None, help="write the result rows here")
    p.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(child(*args.child)))
        return
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads),
           "OPENBLAS_NUM_THREADS": str(args.threads)}
    rows = []
    for n_users in (int(u) for u in args.users.split(",")):
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            out = subprocess.run([sys.executable, __file__, "--threads", str(args.threads),
                                  "--child", str(n_users), str(batch)], env=env, check=True,
                                 capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    sys.path.insert(0, str(HERE))
    from render import table  # the suite's one Markdown table (and number format)

    keys = ["users", "batch_size", "eval_s", "eval_s_per_1k", "topk_s", "topk_s_per_1k",
            "peak_rss_mb", "added_mb"]
    print(table(["users", "batch", "eval s", "eval s / 1k users", "top-100 s",
                 "top-100 s / 1k users", "peak RSS MB", "added by the harness MB"],
                [[r[k] for k in keys] for r in rows]))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
