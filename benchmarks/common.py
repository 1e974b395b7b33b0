"""Shared pieces of the benchmark suite (benchmarks/run.py): the machine and versions, measured
child processes, cited peer figures, the cost models behind TFLOP/s and GB/s, and two workers
that run in their own process so that their peak memory is their own:

    python benchmarks/common.py vae-epoch --scale 0.05 --device cpu --repeat 3 --json F
    python benchmarks/common.py recbole --model MultiVAE --data DIR --work DIR --json F

``vae-epoch`` times Mult-VAE training epochs (batch 500, I-600-200-600-I) on ML-20M-shaped
synthetic data through the real training engine (`recsys.training`); ``recbole`` fits one RecBole
1.2.1 model on a prepared split (its train/valid/test parts as RecBole benchmark files) and
reports its test metrics and timings. Both print one JSON line (and write it to --json).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"

# ML-20M after the usual filters (PROTOCOLS.md): users x items, interactions; and the raw file.
ML20M_USERS, ML20M_ITEMS, ML20M_NNZ = 136_677, 20_108, 10_000_000
ML20M_RAW_ROWS = 20_000_263

# Figures to compare against when a peer is not installed here, each with where it comes from.
# PROTOCOLS.md "Peers measured here": ml-100k, ratings >= 4, users >= 5 positives, per-user random
# 80/20 (their seed), full catalogue, seen items masked, 2 CPU cores.
CITED_RANKING = {
    "RecBole MultiVAE": {"recall@20": 0.372, "ndcg@100": 0.428, "fit_seconds": 40.0},
    "RecBole MultiDAE": {"recall@20": 0.377, "ndcg@100": 0.435, "fit_seconds": 46.0},
    "RecBole RecVAE": {"recall@20": 0.380, "ndcg@100": 0.432, "fit_seconds": 82.0},
    # PROTOCOLS.md lists EASE as "lambda 200, numpy" (not RecBole's); the closest cited figure.
    "RecBole EASE": {"recall@20": 0.395, "ndcg@100": 0.449, "fit_seconds": 0.3},
    "implicit ALS (untuned, 64 factors)": {"recall@20": 0.314, "ndcg@100": 0.357,
                                           "fit_seconds": 0.3},
}
CITED_RANKING_SOURCE = ("../shared/PROTOCOLS.md, 'Peers measured here' (same protocol, their "
                        "own seed; EASE there is a numpy EASE with lambda 200)")
# Surprise's README benchmark table: SVD with defaults, ml-100k, random 5-fold CV (not u1..u5).
CITED_SVD = {"rmse": 0.934, "mae": 0.737}
CITED_SVD_SOURCE = "Surprise README, ml-100k 5-fold CV with default SVD (not the u1..u5 folds)"
# PROTOCOLS.md, one H100: RecBole MultiVAE at ML-20M shape (8.4M interactions).
CITED_H100 = {"recbole_epoch_s": (1.4, 1.6), "recbole_eval_s": 4.0, "recbole_build_s": 46.0,
              "plain_loop_epoch_s": 1.0, "plain_topk_s": 0.37}
# NVIDIA H100 SXM5 datasheet, dense (no sparsity): FP32 67 TFLOP/s, TF32 tensor 495 TFLOP/s,
# BF16 tensor 989 TFLOP/s; HBM3 3.35 TB/s.
H100_SXM = {"fp32_tflops": 67.0, "tf32_tflops": 495.0, "bf16_tflops": 989.0, "hbm_tb_s": 3.35}

# Mult-VAE as the paper sets it for ML-20M: I-600-200-600-I, batch 500.
VAE_HIDDEN, VAE_LATENT, VAE_BATCH = 600, 200, 500


# -- small helpers -------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    values = sorted(v for v in values if v is not None and not math.isnan(v))
    if not values:
        return float("nan")
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def now_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def peak_rss_mb() -> float:
    """This process's high-water mark (VmHWM, not inherited across fork/exec like ru_maxrss)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


# -- the machine and the versions ----------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """CPU model, cores, RAM, GPU (if any), OS: what a reader needs to weigh the figures."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gib = float("nan")
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gib = int(line.split()[1]) / 2**20
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu, "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "ram_gib": round(ram_gib, 1), "os": f"{platform.system()} {platform.release()}",
        "gpu": None,
    }
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": props.name, "count": torch.cuda.device_count(),
                       "memory_gib": round(props.total_memory / 2**30, 1),
                       "cuda": torch.version.cuda}
    return info


def _version(dist: str, module: str | None = None) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        pass
    if module and importable(module):
        return getattr(__import__(module), "__version__", "installed")
    return None


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" (with uncommitted changes)" if dirty else "")


def versions() -> dict[str, str | None]:
    import recsys

    return {"python": platform.python_version(), "torch": _version("torch"),
            "numpy": _version("numpy"), "scipy": _version("scipy"), "pandas": _version("pandas"),
            "implicit": _version("implicit"), "mlflow": _version("mlflow"),
            "recsys": recsys.__version__, "git commit": git_commit(),
            "recbole": _version("recbole"), "scikit-surprise": _version("scikit-surprise")}


# -- children measured from outside -------------------------------------------------------------

# Runs a module or a script and reports its own high-water mark at exit (see peak_rss_mb):
# python -c CHILD module|script TARGET ARGS...
CHILD = """
import atexit, runpy, sys
def _report():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    sys.stderr.write("__VMHWM_KB__ " + line.split()[1] + "\\n")
    except OSError:
        pass
atexit.register(_report)
kind, target = sys.argv[1], sys.argv[2]
sys.argv = [target, *sys.argv[3:]]
if kind == "module":
    runpy.run_module(target, run_name="__main__", alter_sys=True)
else:
    sys.path.insert(0, __import__("os").path.dirname(target))
    runpy.run_path(target, run_name="__main__")
"""


@dataclass
class Measured:
    """One child process: wall and CPU seconds (user + system, all threads), peak RSS."""

    returncode: int
    wall: float
    cpu: float
    peak_mb: float
    log: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(t for t in text[-lines:] if not t.startswith("__VMHWM_KB__"))


def measure(target: str, args: list[str], log: Path, *, module: bool = True,
            env: dict[str, str] | None = None) -> Measured:
    """Run ``python -m TARGET ARGS`` (or the script TARGET) in a fresh process, its output
    appended to ``log``; a failure is returned, not raised, so one broken row does not stop the
    suite."""
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-c", CHILD, "module" if module else "script", target, *args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(log, "a") as out:
        out.write(f"$ {' '.join([target, *args])}\n")
        out.flush()
        done = subprocess.run(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    peak = float("nan")
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if line.startswith("__VMHWM_KB__"):
            peak = int(line.split()[1]) / 1024
            break
    return Measured(done.returncode, wall, cpu, peak, log)


# -- cost models (what TFLOP/s and GB/s are computed from) ---------------------------------------


def vae_layer_dims(n_items: int) -> list[tuple[int, int]]:
    """Mult-VAE's matmuls, (in, out): the encoder's last layer emits mean and log-variance."""
    return [(n_items, VAE_HIDDEN), (VAE_HIDDEN, 2 * VAE_LATENT), (VAE_LATENT, VAE_HIDDEN),
            (VAE_HIDDEN, n_items)]


def vae_train_flops(rows: int, n_items: int) -> float:
    """Matmul FLOPs of one training pass over ``rows`` users: forward 2*m*k*n per layer, backward
    twice that (input and weight gradients), less the input gradient of the first layer, which
    autograd skips (the data needs no gradient). Elementwise work (tanh, softmax, Adam) is left
    out: it is memory traffic, counted by `vae_train_bytes`."""
    forward = sum(2 * a * b for a, b in vae_layer_dims(n_items))
    return float(rows) * (3 * forward - 2 * n_items * VAE_HIDDEN)


def vae_params(n_items: int) -> int:
    return sum(a * b + b for a, b in vae_layer_dims(n_items))


def vae_train_bytes(rows: int, steps: int, n_items: int) -> float:
    """A rough model of one epoch's DRAM traffic in float32: per user row ~16 passes over an
    items-wide vector (dense batch row, normalise, dropout, logits, log-softmax and its
    gradient, the loss product, the first and last layers' reads of their activations), and per
    step ~10 passes over the parameters (forward and backward reads, gradient write, Adam's
    reads of p, g, m, v and writes of p, m, v). A model, not a counter: it says how far the
    epoch is from being bound by memory bandwidth."""
    return 4.0 * (16.0 * rows * n_items + 10.0 * steps * vae_params(n_items))


def ranking_bytes(users: int, n_items: int) -> float:
    """Full-ranking traffic modelled as three float32 passes over the users x items scores
    (write the scores, mask the history in place, read them for top-k)."""
    return 4.0 * 3 * users * n_items


# -- worker: Mult-VAE epochs at ML-20M shape -----------------------------------------------------


def vae_epoch(scale: float, device: str, repeat: int, max_batches: int | None,
              precision: str = "fp32", seed: int = 0) -> dict[str, Any]:
    """Median seconds of a Mult-VAE training epoch (batch 500) through `recsys.training`.

    The first epoch is a warm-up (allocator, kernels). With ``max_batches`` (CPU: a full epoch
    at ML-20M shape takes minutes), the epoch runs over a random subset of ``max_batches * 500``
    users of the same matrix, every batch the real shape, and the epoch time is scaled up by
    batches: this is stated in the result (``extrapolated``).
    """
    import numpy as np
    import torch

    sys.path.insert(0, str(BENCH))
    from bench_eval import synthetic_matrix

    from recsys.data.interactions import Interactions, Vocabulary
    from recsys.models.base import FitContext
    from recsys.models.multvae import MultVAE

    n_users = max(1000, int(ML20M_USERS * scale))
    n_inter = int(ML20M_NNZ * n_users / ML20M_USERS)
    matrix = synthetic_matrix(n_users, ML20M_ITEMS, n_inter, seed=seed)
    rows = np.flatnonzero(np.diff(matrix.indptr))
    full_batches = math.ceil(len(rows) / VAE_BATCH)
    extrapolated = bool(max_batches and max_batches < full_batches)
    if extrapolated:
        keep = np.sort(np.random.default_rng(seed).choice(rows, max_batches * VAE_BATCH,
                                                          replace=False))
        train_matrix = matrix[keep]
    else:
        train_matrix = matrix
    timed_batches = math.ceil(train_matrix.shape[0] / VAE_BATCH)
    train = Interactions(train_matrix.tocsr(), Vocabulary(np.arange(train_matrix.shape[0])),
                         Vocabulary(np.arange(ML20M_ITEMS)))
    model = MultVAE(hidden_dims=[VAE_HIDDEN], latent_dim=VAE_LATENT, dropout=0.5,
                    batch_size=VAE_BATCH, lr=1e-3, anneal_cap=0.2, total_anneal_steps=200_000,
                    epochs=1 + repeat, patience=None, device=device, seed=seed,
                    bf16=precision == "bf16", tf32=precision == "tf32")
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    model.fit(train, None, FitContext(quiet=True))
    epochs = [float(h["seconds"]) for h in model.history_]
    timed = epochs[1:] or epochs
    seconds = median(timed) * (full_batches / timed_batches)
    flops = vae_train_flops(len(rows), ML20M_ITEMS)
    traffic = vae_train_bytes(len(rows), full_batches, ML20M_ITEMS)
    out = {"scale": scale, "users": n_users, "items": ML20M_ITEMS, "nnz": int(matrix.nnz),
           "device": device, "precision": precision, "batches": full_batches,
           "timed_batches": timed_batches, "extrapolated": extrapolated,
           "epoch_seconds": round(seconds, 4),
           "epoch_seconds_all": [round(s * full_batches / timed_batches, 4) for s in timed],
           "warmup_seconds": round(epochs[0], 4), "tflop": round(flops / 1e12, 3),
           "achieved_tflops": round(flops / seconds / 1e12, 4),
           "modelled_gb": round(traffic / 1e9, 2),
           "modelled_gb_s": round(traffic / seconds / 1e9, 1),
           "peak_rss_mb": round(peak_rss_mb()), "torch_threads": torch.get_num_threads()}
    if device.startswith("cuda"):
        out["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
        out["gpu"] = torch.cuda.get_device_name()
    return out


# -- worker: RecBole 1.2.1 on our split ----------------------------------------------------------


def cell(value: Any, digits: int = 4) -> str:
    """A Markdown table cell: floats rounded, dicts as k=v, None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def rows_markdown(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """Rows as a Markdown table over ``columns`` (seconds to 0.1, the rest to 4 digits)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(cell(r.get(c), 1 if c.endswith("seconds") else 4)
                                       for c in columns) + " |")
    return "\n".join(lines)


def training_summary(run: Path, metric: str = "ndcg@100") -> dict[str, Any]:
    """Best and last epoch of a neural fit and its best validation ``metric``, from the run's
    last checkpoint (empty for baselines, which write none)."""
    from recsys.training.checkpoint import CHECKPOINT_DIR, latest_checkpoint, load_checkpoint

    path = latest_checkpoint(run / CHECKPOINT_DIR)
    if path is None:
        return {}
    payload = load_checkpoint(path)
    best = payload.get("best") or {}
    return {"epochs_run": int(payload["epoch"]), "best_epoch": best.get("epoch"),
            f"valid_{metric}": best.get("value")}


def recbole_shims() -> None:
    """RecBole 1.2.1 predates NumPy 2 (np.float etc.) and torch's weights-only torch.load
    default (2.6+), which refuses its checkpoints (they pickle the Config)."""
    import numpy as np

    for name, value in (("float", float), ("int", int), ("bool", bool), ("float_", np.float64),
                        ("complex_", np.complex128), ("unicode_", np.str_)):
        if not hasattr(np, name):
            setattr(np, name, value)
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")


def write_recbole_parts(folder: Path, parts: dict[str, Any]) -> None:
    """RecBole's pre-split atomic files ``bench.{train,valid,test}.inter`` in ``folder`` (its
    dataset "bench", loaded with ``benchmark_filename``): each part is an (n, 2) array of
    (user, item) ids, written as tokens."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    for part, pairs in parts.items():
        np.savetxt(folder / f"bench.{part}.inter", pairs, fmt="%d", delimiter="\t",
                   header="user_id:token\titem_id:token", comments="")


def recbole_fit(model: str, data: Path, work: Path, device: str = "cpu",
                seed: int = 0) -> dict[str, Any]:
    """Fit RecBole's ``model`` on our prepared split, each part written as a RecBole benchmark
    file (train / valid / test), early stopping on validation NDCG@100 as ours does; RecBole
    masks train items when scoring validation and train + valid when scoring test, as we do.

    Avoids ``recbole.quick_start``, which imports ray (ray 2.6 needs ``pkg_resources``, gone
    from current setuptools).
    """
    recbole_shims()
    import numpy as np
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_seed

    from recsys.data.interactions import Dataset

    dataset = Dataset.load(data)
    coos = {part: dataset.parts[part].matrix.tocoo() for part in ("train", "valid", "test")}
    write_recbole_parts(work / "recbole" / "bench",
                        {part: np.column_stack([c.row, c.col]) for part, c in coos.items()})
    config = Config(model=model, dataset="bench", config_dict={
        "data_path": str(work / "recbole"), "benchmark_filename": ["train", "valid", "test"],
        "load_col": {"inter": ["user_id", "item_id"]},
        "eval_args": {"group_by": "user", "order": "RO", "mode": "full",
                      "split": {"RS": [0.8, 0.1, 0.1]}},
        "metrics": ["Recall", "NDCG"], "topk": [20, 50, 100], "valid_metric": "NDCG@100",
        "metric_decimal_place": 6, "use_gpu": device.startswith("cuda"), "seed": seed,
        "reproducibility": True, "show_progress": False,
        "checkpoint_dir": str(work / "recbole" / "saved")})
    init_seed(config["seed"], config["reproducibility"])
    started = time.perf_counter()
    rb_data = create_dataset(config)
    train, valid, test = data_preparation(config, rb_data)
    build = time.perf_counter() - started
    init_seed(config["seed"], config["reproducibility"])
    net = get_model(config["model"])(config, train._dataset).to(config["device"])
    # RecBole's trainer writes log_tensorboard/ into the working directory: keep it in `work`
    # (and give the caller its own directory back: bench_vae calls this in-process).
    with contextlib.chdir(work):
        trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, net)
        started = time.perf_counter()
        trainer.fit(train, valid, verbose=False, saved=True, show_progress=False)
        fit = time.perf_counter() - started
        started = time.perf_counter()
        result = trainer.evaluate(test, load_best_model=True, show_progress=False)
        evaluate = time.perf_counter() - started
    # RecBole's recall divides by |relevant| (ours by min(K, |relevant|)): reported as is.
    return {"model": f"RecBole {model}", "measured": True,
            **{k: float(result[k]) for k in ("recall@20", "recall@50", "ndcg@100")},
            "fit_seconds": fit, "build_seconds": build, "test_eval_seconds": evaluate,
            "epochs_run": len(getattr(trainer, "train_loss_dict", {}) or {}) or None,
            "peak_rss_mb": round(peak_rss_mb())}


# -- command line (the workers) ------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="worker", required=True)
    v = sub.add_parser("vae-epoch", help="Mult-VAE epoch time at ML-20M shape")
    v.add_argument("--scale", type=float, default=1.0, help="fraction of ML-20M's users")
    v.add_argument("--device", default="cpu")
    v.add_argument("--repeat", type=int, default=3, help="timed epochs after one warm-up")
    v.add_argument("--max-batches", type=int, default=None,
                   help="time this many batches per epoch and scale up (CPU)")
    v.add_argument("--precision", choices=("fp32", "tf32", "bf16"), default="fp32")
    v.add_argument("--threads", type=int, default=None)
    v.add_argument("--json", default=None)
    r = sub.add_parser("recbole", help="one RecBole 1.2.1 model on a prepared split")
    r.add_argument("--model", required=True, help="MultiVAE, MultiDAE, RecVAE, EASE, ...")
    r.add_argument("--data", required=True, help="prepared dataset directory (recsys prepare)")
    r.add_argument("--work", required=True, help="scratch folder for RecBole's files")
    r.add_argument("--device", default="cpu")
    r.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.worker == "vae-epoch":
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        out = vae_epoch(args.scale, args.device, args.repeat, args.max_batches, args.precision)
    else:
        out = recbole_fit(args.model, Path(args.data), Path(args.work), args.device)
    text = json.dumps(out)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
