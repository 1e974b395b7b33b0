"""`recsys prepare` at ML-20M shape: wall seconds and peak memory against the final arrays.

Writes an ML-20M-format ratings.csv drawn by `recsys.data.synthetic` (20,000,263 rows over
138,493 users x 26,744 items by default; ``--rows`` scales users with it), then times, in a
fresh subprocess, the command a user would run:

    recsys prepare ml-20m --path DIR --split random --implicit-threshold 4 \
        --min-user-interactions 5 --out DIR          (and the same with --input ratings.csv)

(parse, threshold, filter, CSR, per-user random 80/20 split with a 10% validation carve-out,
save). Peak memory is the child's own high-water mark (VmHWM, which the child reports at exit),
set against the bytes of the final CSR arrays (data + indices + indptr of every part; the
aligned timestamps are counted separately), both as is and after subtracting the peak of
`recsys datasets` (the same interpreter and imports, no data), since the interpreter, numpy,
pandas, pyarrow and the other commands' imports are a fixed cost that does not grow with the data.

RecBole 1.2.1's dataset build on the same file is timed beside it when recbole is installed
(the optional ``bench`` extra); otherwise it is skipped with a note.

    python benchmarks/bench_prepare.py              # 20M rows (needs ~3 GB RAM)
    python benchmarks/bench_prepare.py --rows 2000000
    python benchmarks/bench_prepare.py --rows 100000000 --users 1366770 --items 20108 \
        --sources ml-20m --no-recbole --workdir /tmp/big     # 10x ML-20M's users (issue 21)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from measure import CHILD, Measured, measure

from recsys.data.interactions import Dataset
from recsys.data.synthetic import ML20M_SHAPE, synthetic_ratings, write_ml20m_csv

# Ratings > 3.5 are positives as in Liang et al.'s ML-20M protocol (on half stars: >= 4).
PREPARE_ARGS = ["--split", "random", "--implicit-threshold", "4", "--min-user-interactions",
                "5", "--test-fraction", "0.2", "--valid-fraction", "0.1", "--seed", "0"]


# The CLI runs in a child that reports its own high-water mark (VmHWM) when it exits
# (measure.CHILD). ru_maxrss from wait4 is not usable: Linux carries the parent's peak across
# fork+exec into the child's ru_maxrss, so it would show this script's own peak from drawing the
# synthetic data.


def run_measured(args: list[str], log: Path, env: dict[str, str] | None = None) -> Measured:
    """``recsys ARGS`` in a fresh process (measure.measure: wall and CPU seconds, the child's
    own peak RSS; CPU is user + system, a figure that shared cores disturb less than wall)."""
    done = measure("recsys.cli", args, log, env=env)
    if not done.ok:
        raise SystemExit(f"recsys {' '.join(args)} failed ({done.returncode}):\n{done.tail()}")
    if done.peak_mb != done.peak_mb:  # NaN: no VmHWM line
        raise SystemExit("the child did not report its peak memory (needs Linux /proc)")
    return done


def array_bytes(ds: Dataset) -> tuple[int, int]:
    csr = ts = 0
    for part in ds.parts.values():
        m = part.matrix
        csr += m.data.nbytes + m.indices.nbytes + m.indptr.nbytes
        ts += 0 if part.timestamps is None else part.timestamps.nbytes
    return csr, ts


def recbole_build(csv: Path, workdir: Path) -> dict | None:
    """RecBole 1.2.1's dataset build on the same ratings (only if recbole is installed)."""
    try:
        import recbole  # noqa: F401
    except ImportError:
        return None
    import pandas as pd

    data_dir = workdir / "recbole" / "synthetic"
    data_dir.mkdir(parents=True, exist_ok=True)
    frame = pd.read_csv(csv)
    frame.columns = ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
    frame.to_csv(data_dir / "synthetic.inter", sep="\t", index=False)
    del frame
    script = f"""
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
from peers import recbole_shims
recbole_shims()  # NumPy-2 aliases RecBole 1.2.1 still uses
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
config = Config(model="MultiVAE", dataset="synthetic", config_dict={{
    "data_path": {str(workdir / "recbole")!r}, "load_col": {{"inter": ["user_id", "item_id",
    "rating", "timestamp"]}}, "val_interval": {{"rating": "[4,inf)"}},
    "user_inter_num_interval": "[5,inf)", "eval_args": {{"split": {{"RS": [0.7, 0.1, 0.2]}},
    "group_by": "user", "order": "RO", "mode": "full"}}, "show_progress": False}})
dataset = create_dataset(config)
data_preparation(config, dataset)
"""
    script_path = workdir / "recbole_build.py"
    script_path.write_text(script)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, "script", str(script_path)],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode:
        print(f"RecBole build failed:\n{proc.stderr[-2000:]}")
        return None
    kb = [int(x.split()[1]) for x in proc.stderr.splitlines() if x.startswith("__VMHWM_KB__")]
    return {"seconds": seconds, "peak_mb": kb[-1] / 1024 if kb else float("nan")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=ML20M_SHAPE[2])
    p.add_argument("--items", type=int, default=ML20M_SHAPE[1])
    p.add_argument("--users", type=int, default=None,
                   help="users drawn (default: ML-20M's users per row times --rows)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", help="where to write the CSV and the prepared data "
                                     "(default: a temporary folder, removed afterwards)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--repeat", type=int, default=1,
                   help="timed runs of each prepare (the median is kept; the CSV is drawn once)")
    p.add_argument("--sources", default="ml-20m,input",
                   help="which reads to time: ml-20m (`ml-20m --path`), input (`--input`)")
    p.add_argument("--no-recbole", action="store_true",
                   help="skip RecBole's dataset build even when recbole is installed")
    args = p.parse_args()
    sources = {"ml-20m", "input"} & {s.strip() for s in args.sources.split(",")}

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-prepare-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        users = args.users or max(1, round(ML20M_SHAPE[0] * args.rows / ML20M_SHAPE[2]))
        t = time.perf_counter()
        data = synthetic_ratings(users, args.items, args.rows, seed=args.seed)
        csv = write_ml20m_csv(workdir / "ratings.csv", data)
        n_rows = len(data)
        del data
        print(f"synthetic ratings.csv: {n_rows:,} rows, {users:,} users x {args.items:,} items, "
              f"{csv.stat().st_size / 2**20:.0f} MB, written in {time.perf_counter() - t:.1f} s")

        env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
        log = workdir / "prepare.log"
        base_mb = run_measured(["datasets"], log, env).peak_mb
        print(f"baseline: `recsys datasets` (interpreter + imports) peaks at {base_mb:.0f} MB")
        result: dict = {"rows": n_rows, "users_drawn": users, "items_drawn": args.items,
                        "csv_mb": round(csv.stat().st_size / 2**20), "baseline_rss_mb":
                        round(base_mb, 1), "runs": {}}
        # The same file read two ways: as ML-20M (MovieLens has one rating per user and movie,
        # so ratings below the threshold are skipped while parsing) and as a generic rating
        # log (every row kept until duplicates are resolved).
        for key, label, source in (("ml-20m", "ml-20m --path", ["ml-20m", "--path", str(workdir)]),
                                   ("input", "--input", ["--input", str(csv)])):
            if key not in sources:
                continue
            out = workdir / "prepared"
            timings, cpu_s = [], []
            for _ in range(max(1, args.repeat)):
                shutil.rmtree(out, ignore_errors=True)
                done = run_measured(
                    ["prepare", *source, *PREPARE_ARGS, "--out", str(out), "--quiet"], log, env)
                timings.append((done.wall, done.peak_mb))
                cpu_s.append(done.cpu)
            # The median of the repeats: this machine's cores are shared, single runs are noisy.
            seconds = float(np.median([t for t, _ in timings]))
            peak_mb = float(np.median([m for _, m in timings]))
            ds = Dataset.load(out)
            csr, ts = array_bytes(ds)
            nnz = sum(part.nnz for part in ds.parts.values())
            run = {
                "users": len(ds.users), "items": len(ds.items), "nnz": nnz,
                "seconds": round(seconds, 2), "cpu_s": round(float(np.median(cpu_s)), 2),
                "peak_rss_mb": round(peak_mb, 1),
                "seconds_all": [round(t, 2) for t, _ in timings],
                "csr_mb": round(csr / 2**20, 1), "timestamps_mb": round(ts / 2**20, 1),
                "peak_over_csr": round(peak_mb * 2**20 / csr, 2),
                "peak_minus_baseline_over_csr": round((peak_mb - base_mb) * 2**20 / csr, 2),
                "peak_minus_baseline_over_csr_and_timestamps":
                    round((peak_mb - base_mb) * 2**20 / (csr + ts), 2),
            }
            result["runs"][label] = run
            print(f"\nrecsys prepare {label}: {seconds:.1f} s wall ({run['cpu_s']:.1f} s CPU), "
                  f"peak RSS {peak_mb:.0f} MB")
            print(f"  final arrays: {nnz:,} interactions ({len(ds.users):,} users x "
                  f"{len(ds.items):,} items) in {len(ds.parts)} parts: CSR {csr / 2**20:.0f} MB"
                  f" + timestamps {ts / 2**20:.0f} MB")
            print(f"  peak / CSR = {run['peak_over_csr']:.2f}x; (peak - baseline) / CSR = "
                  f"{run['peak_minus_baseline_over_csr']:.2f}x; (peak - baseline) / (CSR + "
                  f"timestamps) = {run['peak_minus_baseline_over_csr_and_timestamps']:.2f}x "
                  "(target: within 3x)")
        first = next(iter(result["runs"].values()), None)
        seconds = first["seconds"] if first else float("nan")
        rb = None if args.no_recbole else recbole_build(csv, workdir)
        if rb is None:
            print("RecBole: not installed, comparison skipped (pip install -e '.[bench]' adds "
                  "recbole==1.2.1)")
        else:
            result["recbole"] = rb
            print(f"RecBole 1.2.1 dataset build: {rb['seconds']:.1f} s, peak RSS "
                  f"{rb['peak_mb']:.0f} MB -> recsys is {rb['seconds'] / seconds:.1f}x faster")
        result["python"] = sys.version.split()[0]
        result["numpy"] = np.__version__
        result["cpus"] = os.cpu_count()
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
