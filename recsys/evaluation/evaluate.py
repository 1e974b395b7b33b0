"""Batched full-catalogue evaluation: every metric at every K in one pass over the users.

For each batch of users: ``model.score`` over the whole catalogue, history items set to ``-inf``,
one top-K at the largest K (the lists of recsys.scoring.topk, shared with `recsys recommend`;
on long CPU rows through block maxima, recsys.evaluation.selection), the
hits matrix gathered from the dense target rows, and all metrics from its cumulative sums
(recsys.evaluation.metrics). The beyond-accuracy metrics read the same top-K lists against item
statistics computed once from the history matrix (popularity, co-occurrence vectors), and the
exposure of every item is accumulated over batches for coverage and gini. No Python loop runs per
user.

Users with held-out items but no history are not scored (a model has nothing to rank them from);
they are counted in ``skipped_users``. Users without held-out items are not part of the split.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from recsys.data.interactions import EvalSplit
from recsys.data.tensors import csr_to_dense, mask_rows
from recsys.errors import RecsysError
from recsys.evaluation.metrics import (
    RATING_METRICS,
    CooccurrenceVectors,
    ItemVectors,
    gini_index,
    global_metric_names,
    intra_list_diversity,
    list_mean,
    list_metric_names,
    parse_metrics,
    popularity_lift,
    ranking_metric_names,
    ranking_metrics,
    rating_errors,
    self_information,
    split_name,
)
from recsys.evaluation.selection import block_topk
from recsys.models.base import Recommender
from recsys.scoring.topk import as_device, place_model, score_batch

PREDICT_CHUNK = 1 << 20  # (user, item) pairs per model.predict call: bounded memory


@dataclass
class EvalResult:
    """Mean metrics, the per-user table they come from, and who was (not) evaluated."""

    summary: dict[str, float]
    per_user: pd.DataFrame  # column `user` (internal id) + one column per per-user metric
    # (+ `history_pop`, the mean popularity of the user's history, with arp@K or popbias@K)
    n_users: int
    skipped_users: int = 0
    seconds: float = 0.0
    # Rating metrics are global over held-out ratings; with them per_user also has `n_ratings`,
    # so that confidence intervals can weight users by how many ratings they contribute.


@dataclass
class _ItemStats:
    """What the beyond-accuracy metrics know about items, on the device lists are ranked on."""

    information: torch.Tensor  # (n_items,) self-information, for novelty
    popularity: torch.Tensor  # (n_items,) share of users with the item, for arp and popbias
    history_popularity: torch.Tensor  # (evaluated users,) mean popularity of their history
    vectors: ItemVectors  # for ild


def _item_stats(history: sp.csr_matrix, users: np.ndarray, vectors: ItemVectors | None,
                device: torch.device) -> _ItemStats:
    """Item statistics from the binarised history of all users (what is known before the part)."""
    binary = history.astype(bool).astype(np.float64).tocsr()
    binary.eliminate_zeros()  # a stored 0 is no interaction
    n_users = int((np.diff(binary.indptr) > 0).sum())
    counts = np.bincount(binary.indices, minlength=history.shape[1]).astype(np.float64)
    popularity = counts / max(n_users, 1)
    rows = binary[users]
    with np.errstate(invalid="ignore", divide="ignore"):  # a user without history: NaN
        history_pop = (rows @ popularity) / np.diff(rows.indptr)
    if vectors is None:
        by_item = binary.T.tocsr()  # each item's users: co-occurrence cosines
        vectors = CooccurrenceVectors(torch.from_numpy(by_item.indptr.astype(np.int64)).to(device),
                                      torch.from_numpy(by_item.indices.astype(np.int64)).to(device),
                                      binary.shape[0])
    return _ItemStats(self_information(torch.from_numpy(counts), n_users).to(device),
                      torch.from_numpy(popularity).to(device),
                      torch.from_numpy(history_pop).to(device), vectors)


def _list_metrics(names: list[str], items: torch.Tensor, valid: torch.Tensor,
                  history_pop: torch.Tensor, stats: _ItemStats) -> dict[str, torch.Tensor]:
    """Per-user novelty/ild/arp/popbias at each K from one batch's top lists."""
    out: dict[str, torch.Tensor] = {}
    for name in names:
        base, k = split_name(name)
        top, ok = items[:, :k], valid[:, :k]
        if base == "novelty":
            out[name] = list_mean(stats.information, top, ok)
        elif base == "ild":
            out[name] = intra_list_diversity(top, ok, stats.vectors)
        else:
            arp = list_mean(stats.popularity, top, ok)
            out[name] = arp if base == "arp" else popularity_lift(arp, history_pop)
    return out


def evaluate(model: object, split: EvalSplit, metrics: list[str] | str, *,
             batch_size: int = 2048, device: str | torch.device | None = None,
             rating_scale: tuple[float, float] | None = None,
             item_vectors: ItemVectors | None = None) -> EvalResult:
    """Evaluate ``model`` on ``split`` (full-catalogue ranking, history masked).

    ``metrics``: names as `parse_metrics` accepts. ``device``: where scores are ranked (and the
    model is moved, when it knows how); ``None`` ranks wherever the model returns its scores.
    ``rating_scale``: (min, max) to clip rating predictions to, for rmse/mae. ``item_vectors``:
    the similarity behind ild@K (default: co-occurrence in ``split.history``).
    """
    start_time = time.perf_counter()
    names = parse_metrics(metrics)
    dev = as_device(device)
    place_model(model, dev)
    users = np.asarray(split.users, dtype=np.int64)
    history = split.history.tocsr()
    # A transductive model (item-based CFGAN) conditions on every interaction known when this
    # part is scored, for all users at once, not only on each batch's histories.
    if isinstance(model, Recommender):
        model.observe(history)
    target = split.target.tocsr()
    n_items = target.shape[1]

    per_user_names = ranking_metric_names(names)
    list_names = list_metric_names(names)
    global_ks = sorted({split_name(n)[1] for n in global_metric_names(names)})
    stats: _ItemStats | None = None
    want_rating = [n for n in names if n in RATING_METRICS]
    largest = max([k for n in names for _, k in [split_name(n)] if k] + [0])
    if want_rating and not getattr(model, "explicit", False):
        raise RecsysError(f"model '{getattr(model, 'name', model)}' does not predict ratings; "
                          f"drop {', '.join(want_rating)} from the metrics")

    columns: dict[str, list[np.ndarray]] = {n: [] for n in per_user_names + list_names}
    exposure: torch.Tensor | None = None  # (len(global_ks), n_items): times each item is listed
    if largest and len(users):
        for start in range(0, len(users), batch_size):
            batch = users[start:start + batch_size]
            seen = history[batch]
            scores = mask_rows(score_batch(model, batch, seen, dev), seen)
            # `masked_topk`'s lists, through block maxima on long CPU rows (selection.py)
            top_v, top_i = block_topk(scores, min(largest, n_items))
            valid = torch.isfinite(top_v)
            if per_user_names:
                target_rows = target[batch]
                dense = csr_to_dense(target_rows, top_i.device, dtype=torch.bool)
                hits = torch.gather(dense, 1, top_i) & valid
                n_rel = torch.from_numpy(np.diff(target_rows.indptr)).to(top_i.device)
                for name, value in ranking_metrics(hits, n_rel, per_user_names).items():
                    columns[name].append(value.cpu().numpy())
            if list_names:
                if stats is None:  # built once, where the lists are
                    stats = _item_stats(history, users, item_vectors, top_i.device)
                pop = stats.history_popularity[start:start + batch_size]
                for name, value in _list_metrics(list_names, top_i, valid, pop, stats).items():
                    columns[name].append(value.cpu().numpy())
            if global_ks:
                if exposure is None:
                    exposure = torch.zeros(len(global_ks), n_items, dtype=torch.float64,
                                           device=top_i.device)
                for j, k in enumerate(global_ks):
                    picked = top_i[:, :k][valid[:, :k]]
                    exposure[j].index_add_(0, picked, torch.ones_like(picked, dtype=torch.float64))

    per_user = pd.DataFrame({"user": users})
    summary: dict[str, float] = {}
    for name in per_user_names:
        values = np.concatenate(columns[name]) if columns[name] else np.zeros(0)
        per_user[name] = values
        summary[name] = float(values.mean()) if len(values) else math.nan
    for name in list_names:  # NaN where a list has no value (ild@K under two items)
        values = np.concatenate(columns[name]) if columns[name] else np.zeros(0)
        per_user[name] = values
        summary[name] = (float(np.nanmean(values)) if np.isfinite(values).any() else math.nan)
    if stats is not None and any(split_name(n)[0] in ("arp", "popbias") for n in list_names):
        per_user["history_pop"] = stats.history_popularity.cpu().numpy()
    for name in global_metric_names(names):
        base, k = split_name(name)
        if exposure is None:
            summary[name] = math.nan
            continue
        counts = exposure[global_ks.index(k)]
        summary[name] = (float((counts > 0).sum().item()) / n_items if base == "coverage"
                         else gini_index(counts))
    if want_rating:
        _rating_metrics(model, users, target, want_rating, rating_scale, per_user, summary)
    # Keep the caller's order of metric names in the summary.
    summary = {n: summary[n] for n in names}
    return EvalResult(summary, per_user, len(users), int(split.skipped_users),
                      time.perf_counter() - start_time)


def _rating_metrics(model: object, users: np.ndarray, target: sp.csr_matrix, names: list[str],
                    scale: tuple[float, float] | None, per_user: pd.DataFrame,
                    summary: dict[str, float]) -> None:
    """rmse/mae over every held-out rating of the evaluated users (global), plus per-user values."""
    sub = target[users].tocoo()
    rows, cols = sub.row.astype(np.int64), sub.col.astype(np.int64)
    actual = torch.from_numpy(sub.data.astype(np.float64))
    sq = torch.empty(len(rows), dtype=torch.float64)
    ab = torch.empty(len(rows), dtype=torch.float64)
    for start in range(0, len(rows), PREDICT_CHUNK):
        end = start + PREDICT_CHUNK
        pred = model.predict(users[rows[start:end]], cols[start:end])  # type: ignore[attr-defined]
        pred = torch.as_tensor(np.asarray(pred, dtype=np.float64))
        sq[start:end], ab[start:end] = rating_errors(pred, actual[start:end], scale)
    counts = np.bincount(rows, minlength=len(users)).astype(np.float64)
    sse = np.bincount(rows, weights=sq.numpy(), minlength=len(users))
    sae = np.bincount(rows, weights=ab.numpy(), minlength=len(users))
    n = max(len(rows), 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        if "rmse" in names:
            per_user["rmse"] = np.sqrt(sse / counts)
            summary["rmse"] = float(math.sqrt(sse.sum() / n)) if len(rows) else math.nan
        if "mae" in names:
            per_user["mae"] = sae / counts
            summary["mae"] = float(sae.sum() / n) if len(rows) else math.nan
    per_user["n_ratings"] = counts.astype(np.int64)


def format_table(summary: dict[str, float], *, ci: dict[str, tuple[float, float]] | None = None,
                 title: str | None = None, digits: int = 4) -> str:
    """A plain aligned two- (or three-, with confidence intervals) column text table."""
    rows = [("metric", "value") + (("95% CI",) if ci else ())]
    for name, value in summary.items():
        row = (name, f"{value:.{digits}f}")
        if ci:
            lo, hi = ci.get(name, (math.nan, math.nan))
            row += (f"[{lo:.{digits}f}, {hi:.{digits}f}]" if not math.isnan(lo) else "",)
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [title] if title else []
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) if j == 0 else cell.rjust(w)
                               for j, (cell, w) in enumerate(zip(row, widths, strict=True))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
