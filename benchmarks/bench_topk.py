"""Batch top-K scoring at ML-20M shape: users/s, and peak memory as the user count grows.

Top-100 for every user of ML-20M-shaped synthetic data (136,677 x 20,108, ~10M interactions),
seen items masked, through the code `recsys recommend` runs (recsys.scoring.topk.topk_chunk ->
export.lists_table -> export.ChunkedWriter, Parquet row groups) with a dot-product scorer, and
the scoring alone (recsys.scoring.topk.topk). Each measurement runs in a fresh process so that
its peak RSS is its own. "10x users" scores the user list ten times over (the same history
matrix, so the data size is constant and only the stream of users grows): bounded memory
means the same peak at 1x and 10x.

    python benchmarks/bench_topk.py                  # full shape, 1x and 10x users
    python benchmarks/bench_topk.py --scale 0.05     # quick check
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_eval import (  # noqa: E402
    ML20M_EVAL_SHAPE,
    DotScorer,
    devices,
    peak_rss_mb,
    sync,
    synthetic_matrix,
    threads_note,
)


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(args: argparse.Namespace) -> dict:
    from recsys.scoring.export import ChunkedWriter, lists_schema, lists_table
    from recsys.scoring.topk import item_mask, place_model, topk, topk_chunk

    if args.threads:
        torch.set_num_threads(args.threads)
    with np.load(args.matrix) as z:
        history = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=tuple(z["shape"]))
    n_users, n_items = history.shape
    device = torch.device(args.device)
    model = DotScorer(n_users, n_items, factors=args.factors)
    place_model(model, device)
    users = np.tile(np.arange(n_users, dtype=np.int64), args.mult)
    # warm-up outside the timing (kernels, allocator, CUDA context)
    next(topk(model, users[:256], history, args.k, device=device))
    baseline = current_rss_mb()
    sync(device)
    start = time.perf_counter()
    if args.mode == "scoring":
        n_rows = 0
        for _users, items, _ in topk(model, users, history, args.k, batch_size=args.batch_size,
                                    device=device):
            n_rows += int((items >= 0).sum())
        sync(device)
    else:
        out = Path(args.out)
        item_ids = np.arange(n_items, dtype=np.int64)
        writer = ChunkedWriter(out, {"bench": True})
        schema = lists_schema(users, item_ids)
        pop = torch.from_numpy(np.diff(history.tocsc().indptr).astype(np.float32)).to(device)
        banned = item_mask(n_items, None, None, device)
        n_rows = 0
        for c, lo in enumerate(range(0, len(users), args.chunk_size)):
            chunk = users[lo:lo + args.chunk_size]
            items, scores, cold = topk_chunk(model, chunk, history[chunk], args.k, device=device,
                                             banned=banned, cold_scores=pop,
                                             batch_size=args.batch_size)
            table = lists_table(chunk, items, scores, cold, item_ids)
            writer.write(c, table.cast(schema))
            n_rows += table.num_rows
        writer.finish(schema)
    seconds = time.perf_counter() - start
    out = {"mode": args.mode, "device": device.type, "users": len(users), "rows": n_rows,
           "seconds": round(seconds, 3), "users_per_s": round(len(users) / seconds),
           "rss_after_load_mb": round(baseline), "peak_rss_mb": round(peak_rss_mb())}
    if device.type == "cuda":
        out["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", type=float, default=1.0, help="fraction of ML-20M's users")
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--mults", default="1,10", help="user-count multipliers to compare")
    p.add_argument("--modes", default="scoring,recommend")
    p.add_argument("--devices", default="auto")
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--chunk-size", type=int, default=10000)
    p.add_argument("--factors", type=int, default=64)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    p.add_argument("--repeat", type=int, default=1,
                   help="fresh-process runs of each measurement (the median time is kept)")
    # internal: one measurement in this process
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--matrix", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--mult", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--device", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    print(threads_note(), flush=True)
    n_users = max(1000, int(ML20M_EVAL_SHAPE[0] * args.scale))
    n_inter = int(ML20M_EVAL_SHAPE[2] * n_users / ML20M_EVAL_SHAPE[0])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        m = synthetic_matrix(n_users, ML20M_EVAL_SHAPE[1], n_inter)
        matrix = Path(tmp) / "history.npz"
        np.savez(matrix, data=m.data, indices=m.indices, indptr=m.indptr,
                 shape=np.asarray(m.shape))
        print(f"synthetic {n_users} x {m.shape[1]}, {m.nnz} interactions; top-{args.k}",
              flush=True)
        del m
        for device in devices(args.devices):
            for mode in args.modes.split(","):
                for mult in map(int, args.mults.split(",")):
                    cmd = [sys.executable, __file__, "--worker", "--matrix", str(matrix),
                           "--mode", mode, "--mult", str(mult), "--device", device.type,
                           "--k", str(args.k), "--batch-size", str(args.batch_size),
                           "--chunk-size", str(args.chunk_size), "--factors", str(args.factors),
                           "--out", str(Path(tmp) / f"out-{mode}-{mult}.parquet")]
                    if args.threads:
                        cmd += ["--threads", str(args.threads)]
                    runs = []
                    for _ in range(max(1, args.repeat)):
                        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
                        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
                    # The run with the median time: shared cores make single runs noisy.
                    runs.sort(key=lambda r: r["seconds"])
                    row = dict(runs[(len(runs) - 1) // 2])
                    row["seconds_all"] = [r["seconds"] for r in runs]
                    row["users_x"] = mult
                    rows.append(row)
                    print(row, flush=True)
                    (Path(tmp) / f"out-{mode}-{mult}.parquet").unlink(missing_ok=True)
    print()
    print("| mode | device | users | rows | seconds | users/s | RSS after load MB | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['device']} | {r['users']:,} ({r['users_x']}x) | "
              f"{r['rows']:,} | {r['seconds']} | {r['users_per_s']:,} | "
              f"{r['rss_after_load_mb']} | {r['peak_rss_mb']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
