"""Batched full-catalogue evaluation: every metric at every K in one pass over the users.

For each batch of users: ``model.score`` over the whole catalogue, history items set to ``-inf``,
one ``torch.topk`` at the largest K (recsys.scoring.topk, shared with `recsys recommend`), the
hits matrix gathered from the dense target rows, and all metrics from its cumulative sums
(recsys.evaluation.metrics). No Python loop runs per user.

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
from recsys.errors import RecsysError
from recsys.evaluation.metrics import (
    RATING_METRICS,
    parse_metrics,
    ranking_metric_names,
    ranking_metrics,
    rating_errors,
    split_name,
)
from recsys.scoring.topk import as_device, masked_topk, place_model, score_batch

PREDICT_CHUNK = 1 << 20  # (user, item) pairs per model.predict call: bounded memory


@dataclass
class EvalResult:
    """Mean metrics, the per-user table they come from, and who was (not) evaluated."""

    summary: dict[str, float]
    per_user: pd.DataFrame  # column `user` (internal id) + one column per per-user metric
    n_users: int
    skipped_users: int = 0
    seconds: float = 0.0
    # Rating metrics are global over held-out ratings; with them per_user also has `n_ratings`,
    # so that confidence intervals can weight users by how many ratings they contribute.


def _dense_bool(rows: sp.csr_matrix, device: torch.device) -> torch.Tensor:
    """A CSR batch as a dense bool tensor built on ``device``."""
    n, m = rows.shape
    out = torch.zeros(n, m, dtype=torch.bool, device=device)
    counts = torch.from_numpy(np.diff(rows.indptr).astype(np.int64))
    row_ids = torch.repeat_interleave(torch.arange(n), counts).to(device)
    cols = torch.from_numpy(rows.indices.astype(np.int64)).to(device)
    out[row_ids, cols] = True
    return out


def evaluate(model: object, split: EvalSplit, metrics: list[str] | str, *,
             batch_size: int = 2048, device: str | torch.device | None = None,
             rating_scale: tuple[float, float] | None = None) -> EvalResult:
    """Evaluate ``model`` on ``split`` (full-catalogue ranking, history masked).

    ``metrics``: names as `parse_metrics` accepts. ``device``: where scores are ranked (and the
    model is moved, when it knows how); ``None`` ranks wherever the model returns its scores.
    ``rating_scale``: (min, max) to clip rating predictions to, for rmse/mae.
    """
    start_time = time.perf_counter()
    names = parse_metrics(metrics)
    dev = as_device(device)
    place_model(model, dev)
    users = np.asarray(split.users, dtype=np.int64)
    history = split.history.tocsr()
    # A transductive model (item-based CFGAN) conditions on every interaction known when this
    # part is scored, for all users at once, not only on each batch's histories.
    observe = getattr(model, "observe", None)
    if callable(observe):
        observe(history)
    target = split.target.tocsr()
    n_items = target.shape[1]

    per_user_names = ranking_metric_names(names)
    coverage_ks = sorted({k for n in names for b, k in [split_name(n)] if b == "coverage"})
    want_rating = [n for n in names if n in RATING_METRICS]
    largest = max([k for n in names for _, k in [split_name(n)] if k] + [0])
    if want_rating and not getattr(model, "explicit", False):
        raise RecsysError(f"model '{getattr(model, 'name', model)}' does not predict ratings; "
                          f"drop {', '.join(want_rating)} from the metrics")

    columns: dict[str, list[np.ndarray]] = {n: [] for n in per_user_names}
    recommended: torch.Tensor | None = None
    if largest and len(users):
        for start in range(0, len(users), batch_size):
            batch = users[start:start + batch_size]
            seen = history[batch]
            scores = score_batch(model, batch, seen, dev)
            top_v, top_i = masked_topk(scores, seen, largest)
            valid = torch.isfinite(top_v)
            if per_user_names:
                target_rows = target[batch]
                dense = _dense_bool(target_rows, top_i.device)
                hits = torch.gather(dense, 1, top_i) & valid
                n_rel = torch.from_numpy(np.diff(target_rows.indptr)).to(top_i.device)
                for name, value in ranking_metrics(hits, n_rel, per_user_names).items():
                    columns[name].append(value.cpu().numpy())
            if coverage_ks:
                if recommended is None:
                    recommended = torch.zeros(len(coverage_ks), n_items, dtype=torch.bool,
                                              device=top_i.device)
                for j, k in enumerate(coverage_ks):
                    picked = top_i[:, :k][valid[:, :k]]
                    recommended[j, picked] = True

    per_user = pd.DataFrame({"user": users})
    summary: dict[str, float] = {}
    for name in per_user_names:
        values = np.concatenate(columns[name]) if columns[name] else np.zeros(0)
        per_user[name] = values
        summary[name] = float(values.mean()) if len(values) else math.nan
    for j, k in enumerate(coverage_ks):
        summary[f"coverage@{k}"] = (float(recommended[j].sum().item()) / n_items
                                    if recommended is not None else math.nan)
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
