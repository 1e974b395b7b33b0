"""Peers: the figures cited for a peer that is not installed here (each with its source), and
RecBole 1.2.1 fitted on our own prepared split, so that a peer row is measured like ours."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

from measure import peak_rss_mb

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


