"""Workers that the suite (benchmarks/run.py) runs each in its own process, so that their peak
memory is their own:

    python benchmarks/workers.py vae-epoch --scale 0.05 --device cpu --repeat 3 --json F
    python benchmarks/workers.py recbole --model MultiVAE --data DIR --work DIR --json F

``vae-epoch`` times Mult-VAE training epochs (batch 500, I-600-200-600-I) on ML-20M-shaped
synthetic data through the real training engine (`recsys.training`); ``recbole`` fits one RecBole
1.2.1 model on a prepared split (its train/valid/test parts as RecBole benchmark files) and
reports its test metrics and timings. Both print one JSON line (and write it to --json).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from flops import (
    ML20M_ITEMS,
    ML20M_NNZ,
    ML20M_USERS,
    VAE_BATCH,
    VAE_HIDDEN,
    VAE_LATENT,
    vae_train_bytes,
    vae_train_flops,
)
from measure import BENCH, median, peak_rss_mb
from peers import recbole_fit

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
