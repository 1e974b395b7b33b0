"""Full-ranking evaluation speed: ML-20M-shaped synthetic data, ml-100k and ml-latest-small.

Evaluates every user (full catalogue, history masked, the default metric set of `recsys
evaluate`) with a dot-product scorer, so the time is the harness's, on CPU and on the GPU when
there is one; beside it, RecBole's evaluator (its full-sort collector + Recall/NDCG metrics) on
the same scores when recbole is importable (pip install recbole==1.2.1; not a dependency), and
ours again on exactly the metrics RecBole computes (recall and NDCG at 20 and 100). Two RecBole
rows: *recbole* is its whole evaluation path as its users run it (``Trainer.evaluate`` over its
full-sort dataloader, CPU only) scoring as many users per batch as ours, *recbole defaults* the
same with its default ``eval_batch_size`` (small data only), *recbole metrics* only its
collector's core and metric classes fed by our loop (a lower bound of its cost). Every engine
is warmed up first; times are medians.

    python benchmarks/bench_eval.py                 # ML-20M shape: 136,677 x 20,108, ~10M
    python benchmarks/bench_eval.py --scale 0.1     # a tenth of the users (quick check)
    python benchmarks/bench_eval.py --only small    # ml-100k + ml-latest-small only
    python benchmarks/bench_eval.py --breakdown --threads 1   # where each engine's time goes
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from measure import importable, peak_rss_mb  # noqa: E402, F401 - peak_rss_mb re-exported for bench_topk
from peers import recbole_shims, write_recbole_parts  # noqa: E402

from recsys.data.interactions import EvalSplit  # noqa: E402

ML20M_EVAL_SHAPE = (136_677, 20_108, 10_000_000)  # users, items, interactions (PROTOCOLS.md)


def synthetic_matrix(n_users: int, n_items: int, n_interactions: int, seed: int = 0
                     ) -> sp.csr_matrix:
    """Power-law item popularity and log-normal user activity (recsys.data.synthetic)."""
    from recsys.data.synthetic import synthetic_ratings

    r = synthetic_ratings(n_users, n_items, n_interactions, min_per_user=5, seed=seed)
    data = np.ones(len(r), dtype=np.float32)
    return sp.csr_matrix((data, (r.user - 1, r.item - 1)), shape=(n_users, n_items))


def holdout(matrix: sp.csr_matrix, fraction: float = 0.2, seed: int = 0) -> EvalSplit:
    """Per-interaction random holdout: history (80%) and target (20%) over the same users."""
    coo = matrix.tocoo()
    test = np.random.default_rng(seed).random(coo.nnz) < fraction
    shape = matrix.shape
    history = sp.csr_matrix((coo.data[~test], (coo.row[~test], coo.col[~test])), shape=shape)
    target = sp.csr_matrix((coo.data[test], (coo.row[test], coo.col[test])), shape=shape)
    has_t, has_h = np.diff(target.indptr) > 0, np.diff(history.indptr) > 0
    return EvalSplit(history, target, np.flatnonzero(has_t & has_h), int((has_t & ~has_h).sum()))


class DotScorer:
    """score(users) = U[users] @ V.T: the cheapest realistic model, so the harness dominates."""

    name = "dot"
    explicit = False

    def __init__(self, n_users: int, n_items: int, factors: int = 64, seed: int = 0,
                 user_factors: np.ndarray | None = None, item_factors: np.ndarray | None = None
                 ) -> None:
        g = torch.Generator().manual_seed(seed)
        self.user_factors = (torch.as_tensor(user_factors) if user_factors is not None
                             else torch.randn(n_users, factors, generator=g))
        self.item_factors = (torch.as_tensor(item_factors) if item_factors is not None
                             else torch.randn(n_items, factors, generator=g))
        self.n_users, self.n_items = n_users, n_items
        self.device = torch.device("cpu")

    def to(self, device: torch.device) -> DotScorer:
        self.device = torch.device(device)
        self.user_factors = self.user_factors.float().to(self.device)
        self.item_factors = self.item_factors.float().to(self.device)
        return self

    def score(self, users: np.ndarray, history: sp.csr_matrix) -> torch.Tensor:
        idx = torch.from_numpy(np.asarray(users, dtype=np.int64)).to(self.device)
        return self.user_factors[idx] @ self.item_factors.T


def svd_scorer(history: sp.csr_matrix, factors: int = 64) -> DotScorer:
    """Truncated SVD of the history: a scorer whose metrics are meaningful (not random)."""
    from scipy.sparse.linalg import svds

    u, s, vt = svds(history.astype(np.float64), k=factors, random_state=0)
    return DotScorer(*history.shape, user_factors=(u * s).astype(np.float32),
                     item_factors=vt.T.astype(np.float32).copy())


def devices(requested: str) -> list[torch.device]:
    names = [d.strip() for d in requested.split(",") if d.strip()]
    if requested == "auto":
        names = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return [torch.device(n) for n in names]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> tuple[float, object]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def threads_note() -> str:
    return (f"torch threads {torch.get_num_threads()}, cpu count {os.cpu_count()}, "
            f"torch {torch.__version__}")


# -- small real data -----------------------------------------------------------------------------


def movielens_split(name: str) -> EvalSplit | None:
    """ratings >= 4 as positives, users with >= 5 of them, per-interaction random 80/20."""
    import pandas as pd

    if name == "ml-latest-small":
        path = REPO / "data" / "ml-latest-small" / "ratings.csv"
        frame = pd.read_csv(path) if path.exists() else None
        cols = ("userId", "movieId", "rating")
    else:
        mirror = Path(os.environ.get("RECSYS_MIRROR", REPO.parent / "shared" / "datasets"))
        path = mirror / "ml-100k" / "u.data"
        frame = (pd.read_csv(path, sep="\t", names=["u", "i", "r", "t"]) if path.exists()
                 else None)
        cols = ("u", "i", "r")
    if frame is None:
        return None
    frame = frame[frame[cols[2]] >= 4]
    frame = frame[frame.groupby(cols[0])[cols[0]].transform("size") >= 5]
    users = pd.factorize(frame[cols[0]])[0]
    items = pd.factorize(frame[cols[1]])[0]
    matrix = sp.csr_matrix((np.ones(len(users), np.float32), (users, items)),
                           shape=(users.max() + 1, items.max() + 1))
    return holdout(matrix)


# -- RecBole's evaluator on the same scores --------------------------------------------------------


def recbole_evaluate(model: DotScorer, split: EvalSplit, device: torch.device, batch_size: int
                     ) -> dict[str, float] | None:
    """RecBole 1.2.1's full-sort path: -inf on history, topk, positive matrix, DataStruct,
    then its Recall and NDCG metric classes. None when recbole is not importable."""
    recbole_shims()
    try:
        from recbole.evaluator.collector import DataStruct
        from recbole.evaluator.metrics import NDCG, Recall
    except ImportError:
        return None
    config = {"topk": [20, 100], "metric_decimal_place": 6}
    struct = DataStruct()
    history, target = split.history, split.target
    for start in range(0, len(split.users), batch_size):
        users = split.users[start:start + batch_size]
        scores = model.score(users, history[users])
        h = history[users].tocoo()
        scores[torch.from_numpy(h.row).long().to(device),
               torch.from_numpy(h.col).long().to(device)] = float("-inf")
        t = target[users].tocoo()
        _, topk_idx = torch.topk(scores, 100, dim=-1)
        pos_matrix = torch.zeros_like(scores, dtype=torch.int)
        pos_matrix[torch.from_numpy(t.row).long().to(device),
                   torch.from_numpy(t.col).long().to(device)] = 1
        pos_len = pos_matrix.sum(dim=1, keepdim=True)
        pos_idx = torch.gather(pos_matrix, dim=1, index=topk_idx)
        struct.update_tensor("rec.topk", torch.cat((pos_idx, pos_len), dim=1))
    out = {}
    for metric in (Recall(config), NDCG(config)):
        out.update(metric.calculate_metric(struct))
    return out


def recbole_trainer_evaluate(model: DotScorer, split: EvalSplit, work: Path, repeat: int,
                             batch_users: int | None = None
                             ) -> tuple[float, list[float], dict[str, float]] | None:
    """RecBole 1.2.1's whole evaluation path as its users run it: ``Trainer.evaluate`` over its
    full-sort dataloader (history masking, collector, Recall/NDCG at 20 and 100), with a model
    whose ``full_sort_predict`` returns the same dot-product scores as ``model``.

    The history is RecBole's train file and the target its valid file (evaluated with the
    train part masked, as ours); its test file holds one row (RecBole wants three parts).
    ``batch_users``: users per scoring batch (``eval_batch_size`` = that x items); None keeps
    RecBole's default ``eval_batch_size`` of 4096 scores, i.e. 4096 // items users per batch.
    Returns (median seconds after a warm-up, every time, metrics), or None without recbole.
    """
    if not importable("recbole"):
        return None
    recbole_shims()
    import logging

    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.abstract_recommender import GeneralRecommender
    from recbole.trainer import Trainer
    from recbole.utils import InputType, init_logger

    history, target = split.history[split.users].tocoo(), split.target[split.users].tocoo()
    users = np.asarray(split.users)
    pairs = {part: np.column_stack([users[coo.row], coo.col])
             for part, coo in (("train", history), ("valid", target))}
    write_recbole_parts(work / "bench", {**pairs, "test": pairs["valid"][:1]})
    config = Config(model="Pop", dataset="bench", config_dict={
        "data_path": str(work), "benchmark_filename": ["train", "valid", "test"],
        "load_col": {"inter": ["user_id", "item_id"]},
        "eval_args": {"group_by": "user", "order": "RO", "mode": "full"},
        "metrics": ["Recall", "NDCG"], "topk": [20, 100], "valid_metric": "NDCG@100",
        **({} if batch_users is None else
           {"eval_batch_size": batch_users * split.history.shape[1]}), "use_gpu": False,
        "show_progress": False, "checkpoint_dir": str(work / "saved"), "state": "ERROR"})
    with contextlib.chdir(work):
        init_logger(config)
    logging.getLogger().setLevel(logging.ERROR)
    dataset = create_dataset(config)
    _, valid, _ = data_preparation(config, dataset)
    # RecBole's internal ids -> ours (id 0 is its padding: zero factors)
    u_tok = np.array([int(t) for t in dataset.field2id_token["user_id"][1:]])
    i_tok = np.array([int(t) for t in dataset.field2id_token["item_id"][1:]])
    cpu = model.to(torch.device("cpu"))
    zero = torch.zeros(1, cpu.user_factors.shape[1])
    user_f = torch.cat([zero, cpu.user_factors[torch.from_numpy(u_tok)]])
    item_f = torch.cat([zero, cpu.item_factors[torch.from_numpy(i_tok)]])

    class FixedScores(GeneralRecommender):
        input_type = InputType.POINTWISE

        def __init__(self, config, data):
            super().__init__(config, data)
            self.unused = torch.nn.Parameter(torch.zeros(1))  # the Trainer wants a parameter

        def full_sort_predict(self, interaction):
            return (user_f[interaction[self.USER_ID]] @ item_f.T).view(-1)

    # RecBole writes log/ and log_tensorboard/ into the working directory: keep them in `work`.
    with contextlib.chdir(work):
        trainer = Trainer(config, FixedScores(config, dataset))
        trainer.evaluate(valid, load_best_model=False)  # warm-up
        seconds, times, result = median_time(
            lambda: trainer.evaluate(valid, load_best_model=False), torch.device("cpu"), repeat)
    return seconds, times, {k: float(v) for k, v in result.items()}


# -- the benchmark -------------------------------------------------------------------------------


# The metrics RecBole's evaluator computes here; ours is also timed on exactly these, so that the
# ratio compares equal work (our default set has many more metrics and cut-offs).
PEER_METRICS = "recall@20,recall@100,ndcg@20,ndcg@100"
SAME_METRICS = "recsys, same metrics"


def median_time(fn, device: torch.device, repeat: int) -> tuple[float, list[float], object]:
    """Median of ``repeat`` timed calls (this machine's cores are shared, single runs are noisy)."""
    runs = [timed(fn, device) for _ in range(max(1, repeat))]
    times = [t for t, _ in runs]
    return float(np.median(times)), times, runs[-1][1]


def run_one(label: str, model: DotScorer, split: EvalSplit, device: torch.device,
            batch_size: int, metrics: str, rows: list[dict], repeat: int = 3) -> None:
    from recsys.evaluation.evaluate import evaluate

    model.to(device)
    # warm-up on a few users (CUDA context, kernels, allocator; RecBole's imports) outside the
    # timing, for both engines
    warm = EvalSplit(split.history, split.target, split.users[: min(256, len(split.users))])
    evaluate(model, warm, metrics, batch_size=batch_size, device=device)
    has_peer = recbole_evaluate(model, warm, device, batch_size) is not None

    def ours(names: str, engine: str) -> None:
        seconds, times, result = median_time(
            lambda: evaluate(model, split, names, batch_size=batch_size, device=device), device,
            repeat)
        rows.append({"data": label, "engine": engine, "device": device.type,
                     "users": result.n_users, "items": split.history.shape[1],
                     "metrics": names, "seconds": round(seconds, 3),
                     "seconds_all": [round(t, 3) for t in times],
                     "users_per_s": round(result.n_users / seconds),
                     "ndcg@100": round(result.summary.get("ndcg@100", float("nan")), 4),
                     "recall@20": round(result.summary.get("recall@20", float("nan")), 4),
                     # this process's peak so far (data building included), and the GPU's
                     "peak_rss_mb": round(peak_rss_mb()),
                     **({"cuda_peak_mb": round(torch.cuda.max_memory_allocated(device) / 2**20)}
                        if device.type == "cuda" else {})})
        print(rows[-1], flush=True)

    ours(metrics, "recsys")
    if not has_peer:
        return
    ours(PEER_METRICS, SAME_METRICS)
    def peer(engine: str, seconds: float, times: list[float], result: dict) -> None:
        # RecBole's recall divides by |relevant| (ours by min(K, |relevant|)): reported as is.
        rows.append({"data": label, "engine": engine, "device": device.type,
                     "users": len(split.users), "metrics": PEER_METRICS,
                     "seconds": round(seconds, 3), "seconds_all": [round(t, 3) for t in times],
                     "users_per_s": round(len(split.users) / seconds),
                     "ndcg@100": round(result.get("ndcg@100", float("nan")), 4),
                     "recall@20": round(result.get("recall@20", float("nan")), 4)})
        print(rows[-1], flush=True)

    peer("recbole metrics", *median_time(
        lambda: recbole_evaluate(model, split, device, batch_size), device, repeat))
    if device.type != "cpu":
        return
    # Like for like: RecBole scores as many users per batch as we do. Its default batch (4096
    # scores: 1-3 users on these catalogues) is timed too on the small real data sets.
    for engine, users in (("recbole", batch_size),
                          *([("recbole defaults", None)] if split.history.shape[1] < 10_000
                            else [])):
        with tempfile.TemporaryDirectory() as work:
            full = recbole_trainer_evaluate(model, split, Path(work), repeat, users)
        if full is not None:
            peer(engine, *full)


def _cumulative(stats, function: str, file: str = "") -> float:
    """Seconds spent in (and under) every profiled function named ``function`` in ``file``."""
    return sum(v[3] for key, v in stats.stats.items() if key[2] == function and file in key[0])


def _shares(parts: dict[str, float], total: float, repeat: int) -> dict[str, str]:
    parts["bookkeeping"] = total - sum(parts.values())  # batching, loaders, copies, Python
    return {k: f"{v / total:.0%} ({v / repeat * 1e3:.1f} ms)" for k, v in parts.items()}


def breakdown(label: str, model: DotScorer, split: EvalSplit, batch_size: int, repeat: int,
              rows: list[dict]) -> None:
    """Both engines' evaluation on the same scores and metrics (PEER_METRICS) under cProfile,
    each call's time split into scores (the model), masking (history to -inf), selection
    (top-K), metrics (hits and the metric arithmetic) and bookkeeping (the rest)."""
    import cProfile
    import pstats

    from recsys.evaluation.evaluate import evaluate

    global median_time
    model.to(torch.device("cpu"))
    run = lambda: evaluate(model, split, PEER_METRICS, batch_size=batch_size, device="cpu")  # noqa: E731
    run()  # warm-up
    seconds, _, _ = median_time(run, torch.device("cpu"), repeat)
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(repeat):
        run()
    profile.disable()
    st = pstats.Stats(profile)
    ours = _shares({"scores": _cumulative(st, "score_batch"),
                    "masking": _cumulative(st, "mask_rows"),
                    "selection": _cumulative(st, "block_topk"),
                    "metrics": (_cumulative(st, "csr_to_dense")
                                + _cumulative(st, "<built-in method torch.gather>")
                                + _cumulative(st, "ranking_metrics"))},
                   _cumulative(st, "evaluate", "evaluate.py"), repeat)
    rows.append({"data": label, "engine": "recsys", "users": len(split.users),
                 "seconds": round(seconds, 4), **ours})
    print(rows[-1], flush=True)
    # RecBole's Trainer.evaluate profiled inside its own timing (median_time), as many users per
    # batch as ours.
    plain, profile = median_time, cProfile.Profile()

    def profiled(fn, device, n):
        profile.enable()
        try:
            return plain(fn, device, n)
        finally:
            profile.disable()

    median_time = profiled
    try:
        with tempfile.TemporaryDirectory() as work:
            peer = recbole_trainer_evaluate(model, split, Path(work), repeat, batch_size)
    finally:
        median_time = plain
    if peer is None:
        return
    st = pstats.Stats(profile)
    predict = _cumulative(st, "full_sort_predict")
    topk = _cumulative(st, "<built-in method torch.topk>")
    theirs = _shares({"scores": predict,
                      "masking": _cumulative(st, "_full_sort_batch_eval") - predict,
                      "selection": topk,
                      "metrics": (_cumulative(st, "eval_batch_collect") - topk
                                  + _cumulative(st, "evaluate", "evaluator.py"))},
                     _cumulative(st, "evaluate", "trainer.py"), repeat)
    rows.append({"data": label, "engine": "recbole", "users": len(split.users),
                 "seconds": round(peer[0], 4), "ratio": round(seconds / peer[0], 2), **theirs})
    print(rows[-1], flush=True)


def main() -> None:
    import argparse
    import json

    from recsys.evaluation.metrics import RANKING_DEFAULT

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", type=float, default=1.0, help="fraction of ML-20M's users")
    p.add_argument("--devices", default="auto", help="auto (cpu + cuda if present) or a list")
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--factors", type=int, default=64)
    p.add_argument("--metrics", default=RANKING_DEFAULT)
    p.add_argument("--only", choices=("all", "small", "large"), default="all")
    p.add_argument("--repeat", type=int, default=3, help="timed runs (the median is shown)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", default=None, help="write the result rows here")
    p.add_argument("--breakdown", action="store_true",
                   help="profile both engines (CPU, the peer's metrics) and split each one's "
                        "time into scores, masking, selection, metrics and bookkeeping")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows: list[dict] = []
    print(threads_note(), flush=True)
    if args.only in ("all", "small"):
        for name in ("ml-100k", "ml-latest-small"):
            split = movielens_split(name)
            if split is None:
                print(f"skip {name}: files not found", flush=True)
                continue
            model = svd_scorer(split.history, factors=32)
            if args.breakdown:
                breakdown(name, model, split, args.batch_size, args.repeat, rows)
                continue
            for device in devices(args.devices):
                run_one(name, model, split, device, args.batch_size, args.metrics, rows,
                        args.repeat)
    if args.only in ("all", "large"):
        n_users = max(1000, int(ML20M_EVAL_SHAPE[0] * args.scale))
        n_inter = int(ML20M_EVAL_SHAPE[2] * n_users / ML20M_EVAL_SHAPE[0])
        t0 = time.perf_counter()
        split = holdout(synthetic_matrix(n_users, ML20M_EVAL_SHAPE[1], n_inter))
        print(f"synthetic {n_users} x {ML20M_EVAL_SHAPE[1]}, "
              f"{split.history.nnz + split.target.nnz} interactions "
              f"({time.perf_counter() - t0:.1f} s to build)", flush=True)
        model = DotScorer(n_users, ML20M_EVAL_SHAPE[1], factors=args.factors)
        label = f"ml20m-shape x{args.scale:g}"
        if args.breakdown:
            breakdown(label, model, split, args.batch_size, args.repeat, rows)
        for device in devices(args.devices) if not args.breakdown else []:
            run_one(label, model, split, device, args.batch_size, args.metrics, rows,
                    args.repeat)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    if args.breakdown:
        return
    print()
    print("| data | engine | device | users | seconds | users/s | ndcg@100 | recall@20 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['data']} | {r['engine']} | {r['device']} | {r['users']:,} | {r['seconds']} "
              f"| {r['users_per_s']:,} | {r['ndcg@100']} | {r['recall@20']} |")


if __name__ == "__main__":
    main()
