"""Scale on CPU: full-ranking evaluation and top-100 of every user, time per user count and
memory per batch size (issue 21, "scale past ML-20M on one machine": the local engine only).

Synthetic power-law data shaped like 10x ML-20M per user (20,108 items, ~73 interactions per
user; recsys.data.synthetic via bench_eval), a dot-product scorer (64 factors) so that the time
is the harness's. Each (users, batch size) point runs in a fresh process: its peak RSS minus its
RSS once the data and the model are built (the high-water mark is reset there, Linux) is what
the evaluation and the top-K add, which the batch size bounds. `recsys prepare` of the 100M-row
CSV is bench_prepare.py's (``--rows 100000000 --users 1366770 --items 20108``).

``--engines local,spark`` also times `recsys recommend --k 100` of every user, the local engine
beside ``--engine spark`` (local mode, ``--spark-master``), on the same run and data at each of
``--spark-users``: a ratings.csv of that many users drawn like the rest (20,108 items, the raw
rows per user of 10x ML-20M's 100M), `recsys prepare`, a small Mult-VAE trained one epoch (the
scoring is what is timed, not the model's quality), then each engine in a fresh process: wall,
CPU, users/s, and the marginal users/s between two sizes (which cancels fixed costs such as
Spark's JVM start). Peak RSS there is the driver process's only (Spark's JVM and Python workers
are processes of their own).

    python benchmarks/bench_scale.py --users 13667,41000,136677 --batch-sizes 1024,4096
    python benchmarks/bench_scale.py --users 0 --engines local,spark --spark-users 5000,20000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ITEMS = 20_108
PER_USER = 100_000_000 / 1_366_770  # 10x ML-20M: ~100M interactions over 1.37M users
RAW_PER_USER = PER_USER  # ratings.csv rows per user for the engines (bench_prepare's 100M rows)


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


# The model the engines score (small: the scoring is timed, not its quality); the prepare
# arguments are bench_prepare's.
SPARK_MODEL = ["multvae", "--set", "epochs=1", "--set", "hidden_dims=[200]", "--set",
               "latent_dim=64"]


def engines(n_users: int, engine_names: list[str], master: str, work: Path,
            env: dict[str, str]) -> list[dict]:
    """`recsys recommend --k 100` of every user of an ``n_users``-user synthetic dataset with
    each engine (fresh processes, measure.measure), after prepare and a one-epoch fit."""
    sys.path.insert(0, str(HERE))
    from bench_prepare import PREPARE_ARGS, run_measured

    from recsys.data.synthetic import synthetic_ratings, write_ml20m_csv

    raw = work / f"raw-{n_users}"
    raw.mkdir(parents=True, exist_ok=True)
    write_ml20m_csv(raw / "ratings.csv", synthetic_ratings(
        n_users, ITEMS, int(n_users * RAW_PER_USER), seed=0))
    data, run, log = work / f"data-{n_users}", work / f"run-{n_users}", work / "engines.log"
    run_measured(["prepare", "ml-20m", "--path", str(raw), *PREPARE_ARGS, "--out", str(data),
                  "--quiet"], log, env)
    run_measured(["train", *SPARK_MODEL, "--data", str(data), "--out", str(run), "--device",
                  "cpu", "--no-track", "--quiet"], log, env)
    rows = []
    for engine in engine_names:
        out = work / f"lists-{n_users}-{engine}.parquet"
        extra = ["--engine", engine] + (["--spark-master", master] if engine == "spark" else [])
        done = run_measured(["recommend", str(run), "--data", str(data), "--users", "all",
                             "--k", "100", "--out", str(out), "--quiet", *extra], log, env)
        listed = _rows(out)
        rows.append({"engine": engine, "master": master if engine == "spark" else "-",
                     "users": n_users, "rows": listed, "seconds": round(done.wall, 2),
                     "cpu_s": round(done.cpu, 2), "users_per_s": round(n_users / done.wall),
                     "driver_peak_rss_mb": round(done.peak_mb)})
        print(rows[-1], flush=True)
    return rows


def _rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetDataset(path).read(columns=["rank"]).num_rows


def marginal(rows: list[dict]) -> dict[str, float]:
    """Per engine, users/s between its smallest and largest size: fixed costs cancel."""
    out = {}
    for engine in dict.fromkeys(r["engine"] for r in rows):
        mine = sorted((r for r in rows if r["engine"] == engine), key=lambda r: r["users"])
        if len(mine) > 1 and mine[-1]["seconds"] > mine[0]["seconds"]:
            out[engine] = round((mine[-1]["users"] - mine[0]["users"])
                                / (mine[-1]["seconds"] - mine[0]["seconds"]))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", default="13667,41000,136677", help="user counts, comma-separated")
    p.add_argument("--batch-sizes", default="1024,4096", help="users per scoring batch")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--engines", default="local",
                   help="local, or local,spark: also time `recsys recommend` with each engine "
                        "at --spark-users")
    p.add_argument("--spark-users", default="5000,20000",
                   help="user counts of the engine comparison, comma-separated")
    p.add_argument("--spark-master", default="local[2]", help="Spark master of --engine spark")
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
    for n_users in (int(u) for u in args.users.split(",") if int(u) > 0):
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
    if rows:
        print(table(["users", "batch", "eval s", "eval s / 1k users", "top-100 s",
                     "top-100 s / 1k users", "peak RSS MB", "added by the harness MB"],
                    [[r[k] for k in keys] for r in rows]))
    names = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = set(names) - {"local", "spark"}
    if unknown:
        p.error(f"--engines: unknown {sorted(unknown)} (local, spark)")
    engine_rows: list[dict] = []
    if "spark" in names:
        with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
            for n_users in (int(u) for u in args.spark_users.split(",")):
                engine_rows += engines(n_users, names, args.spark_master, Path(tmp), env)
        print(table(["engine", "users", "rows", "wall s", "CPU s", "users/s"],
                    [[r["engine"], r["users"], r["rows"], r["seconds"], r["cpu_s"],
                      r["users_per_s"]] for r in engine_rows]))
        print("marginal users/s:", marginal(engine_rows))
    elif names != ["local"]:
        p.error("--engines: the local engine alone is the scale rows; add spark to compare")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"rows": rows, "engines": engine_rows, "marginal_users_per_s": marginal(engine_rows),
             "threads": args.threads}, indent=2) + "\n")


if __name__ == "__main__":
    main()
