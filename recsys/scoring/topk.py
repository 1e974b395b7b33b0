"""Batched top-K over the full catalogue with seen-item masking (CPU or GPU).

Evaluation (recsys.evaluation.evaluate) and `recsys recommend` share this code: a batch of users
is scored by the model, the items in their history (and any deny-listed item, and every item
outside an allow-list) are set to ``-inf``, and `topk_rows` picks the best K. When a user has
fewer than K eligible items, the tail of the list holds ``-inf`` scores; the item id there is
reported as -1 so that writers drop those rows.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.sparse as sp
import torch

from recsys.data.tensors import mask_rows
from recsys.errors import RecsysError
from recsys.models.base import Recommender, resolve_device

DEFAULT_BATCH_SIZE = 2048


def as_device(device: str | torch.device | None) -> torch.device | None:
    """``None`` stays ``None`` (use wherever the model puts its scores); names are resolved."""
    if device is None:
        return None
    if isinstance(device, torch.device):
        return device
    return resolve_device(device)


def place_model(model: Recommender, device: torch.device | None) -> None:
    """Move a model to ``device`` (``None``: leave it where it is)."""
    if device is not None:
        model.to(device)


def item_mask(n_items: int, allow: np.ndarray | None = None, deny: np.ndarray | None = None,
              device: torch.device | str = "cpu") -> torch.Tensor | None:
    """A bool ``(n_items,)`` of items that may never be recommended, or ``None`` when none."""
    if allow is None and deny is None:
        return None
    banned = torch.zeros(n_items, dtype=torch.bool)
    if allow is not None:
        banned[:] = True
        banned[torch.as_tensor(np.asarray(allow, dtype=np.int64))] = False
    if deny is not None:
        banned[torch.as_tensor(np.asarray(deny, dtype=np.int64))] = True
    return banned.to(device)


# On CPU, torch.topk slows down sharply once K is more than a few thousandths of the row (it was
# 4x slower than a selection + sort at K=100 over 6,298 items, one thread, torch 2.13), while for
# small K it wins. Measured crossover: K / n_items ~ 0.004 (benchmarks/bench_eval.py).
_SELECT_MIN_RATIO = 0.004
_pool: ThreadPoolExecutor | None = None


def _forget_pool() -> None:
    # A forked child inherits the pool object but not its threads: it must make its own.
    global _pool
    _pool = None


os.register_at_fork(after_in_child=_forget_pool)


def _select_topk(block: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    m = block.shape[1]
    idx = np.argpartition(block, m - k, axis=1)[:, m - k:]
    vals = np.take_along_axis(block, idx, axis=1)
    # argpartition takes an arbitrary subset of the items tied at the K-th value; take the
    # lowest items instead (as `_ties_by_item`; numpy here: this runs in the thread pool, and
    # torch's own threads must not be started from it, see the fork test).
    kth = vals.min(axis=1, keepdims=True)
    fix = np.flatnonzero((block == kth).sum(1) > (vals == kth).sum(1))
    if len(fix):
        rows, cut = block[fix], kth[fix]
        tied = rows == cut
        need = k - (rows > cut).sum(1, keepdims=True)
        take = (rows > cut) | (tied & (np.cumsum(tied, axis=1) <= need))
        idx[fix] = np.nonzero(take)[1].reshape(len(fix), k)
        vals[fix] = np.take_along_axis(rows, idx[fix], axis=1)
    # Best first; equal scores by item index, so that the order does not depend on the selection.
    order = np.lexsort((idx, -vals), axis=1)
    return np.take_along_axis(vals, order, axis=1), np.take_along_axis(idx, order, axis=1)


def _ties_by_item(scores: torch.Tensor, values: torch.Tensor, idx: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """A torch.topk selection redone so that equal scores are taken and listed by item index.

    torch.topk (like argpartition in `_select_topk`) picks an arbitrary subset of the items
    tied at the K-th value, and orders ties arbitrarily, depending on the path taken, i.e. on
    how many users share the batch: a popularity list would then differ between `recsys
    evaluate` and `recsys recommend`,
    which batch users differently.
    """
    k = idx.shape[1]
    if k == 0:
        return values, idx
    with torch.no_grad():
        kth = values[:, -1:]
        # Rows where the K-th value also occurs outside the selection: take the lowest items.
        fix = torch.nonzero((scores == kth).sum(1) > (values == kth).sum(1)).flatten()
        if len(fix):
            rows, cut = scores[fix], kth[fix]
            above = rows > cut
            tied = rows == cut
            need = k - above.sum(1, keepdim=True)
            take = above | (tied & (tied.cumsum(1) <= need))
            idx = idx.clone()
            idx[fix] = take.nonzero()[:, 1].reshape(len(fix), k)  # row-major: by item
        # Best first, equal values by item: sort by item, then a stable sort by value.
        idx = torch.sort(idx, dim=1).values
        order = torch.sort(torch.gather(scores, 1, idx), dim=1, descending=True,
                           stable=True).indices
        idx = torch.gather(idx, 1, order)
    return torch.gather(scores, 1, idx), idx


def topk_rows(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.topk(scores, k, dim=1, sorted=True)`` for a float32 matrix without NaN; on CPU,
    when K is a large share of the row, a linear-time selection per row (numpy's argpartition,
    rows split over torch's thread count; it releases the GIL) and a sort of the K selected.
    On every path equal scores are taken and listed by item index: a row's list depends on that
    row alone, never on the batch it was scored in."""
    n, m = scores.shape
    if (scores.device.type != "cpu" or k < _SELECT_MIN_RATIO * m or n * m < 65_536
            or scores.requires_grad):
        return _ties_by_item(scores, *torch.topk(scores, k, dim=1, sorted=True))
    global _pool
    block = scores.detach().contiguous().numpy()
    parts = min(torch.get_num_threads(), max(1, n // 64))
    if parts == 1:
        vals, idx = _select_topk(block, k)
    else:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1,
                                       thread_name_prefix="recsys-topk")
        chunks = np.array_split(np.arange(n), parts)
        done = list(_pool.map(lambda rows: _select_topk(block[rows[0]:rows[-1] + 1], k),
                              chunks))
        vals = np.concatenate([v for v, _ in done])
        idx = np.concatenate([i for _, i in done])
    return torch.from_numpy(vals), torch.from_numpy(idx.astype(np.int64, copy=False))


def masked_topk(scores: torch.Tensor, seen: sp.csr_matrix | None, k: int,
                banned: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, indices)`` of the best ``min(k, n_items)`` items per row, seen/banned masked.

    ``scores`` is modified in place. Rows with fewer eligible items end in ``-inf`` values.
    """
    if scores.dtype != torch.float32:
        scores = scores.float()
    if seen is not None:
        mask_rows(scores, seen)
    if banned is not None:
        scores.masked_fill_(banned.to(scores.device).unsqueeze(0), float("-inf"))
    # NaN would outrank everything in topk; a model that emits NaN must not look perfect.
    scores.nan_to_num_(nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
    return topk_rows(scores, min(k, scores.shape[1]))


def score_batch(model: object, users: np.ndarray, history: sp.csr_matrix,
                device: torch.device | None = None,
                features: np.ndarray | None = None) -> torch.Tensor:
    """``model.score`` (``model.score_features`` with ``features``) as a float32 tensor (on
    ``device`` when given), shape-checked."""
    if features is None:
        scores = model.score(users, history)  # type: ignore[attr-defined]
    else:
        scores = model.score_features(users, history, features)  # type: ignore[attr-defined]
    scores = torch.as_tensor(scores)
    if device is not None and scores.device != device:
        scores = scores.to(device)
    if scores.ndim != 2 or scores.shape[0] != len(users):
        raise RecsysError(f"model '{getattr(model, 'name', model)}' returned scores of shape "
                          f"{tuple(scores.shape)} for {len(users)} users")
    return scores.float()


def from_features(model: object, featured: np.ndarray | None, n: int) -> np.ndarray:
    """Which of a chunk's ``n`` users the model scores from the features they bring (a bool
    each): none unless the model reads user features (`Recommender.scores_user_features`)."""
    if featured is None or not (isinstance(model, Recommender) and model.scores_user_features):
        return np.zeros(n, dtype=bool)
    return np.asarray(featured, dtype=bool)


def topk_chunk(model: object, users: np.ndarray, history_rows: sp.csr_matrix, k: int, *,
               device: torch.device | None = None, banned: torch.Tensor | None = None,
               cold_scores: torch.Tensor | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
               features: np.ndarray | None = None, featured: np.ndarray | None = None,
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-K for the users of one chunk: ``items (b,k) int64, scores (b,k) float32, cold (b,)``.

    ``history_rows`` holds the chunk's histories (rows aligned with ``users``). With
    ``cold_scores`` (e.g. item popularity), users whose history is empty are flagged in ``cold``
    and get those scores instead of the model's, unless the model scores them from their
    features: ``features`` (b, d) holds the encoded user features of the users ``featured``
    (bool, b) marks, read by a model that `scores_user_features` (through ``score_features``,
    history and features together) and ignored by the others. Missing entries (fewer eligible
    items than k) are item -1 with score -inf.
    """
    history_rows = history_rows.tocsr()
    n = len(users)
    n_items = history_rows.shape[1]
    width = min(k, n_items)
    items = np.full((n, width), -1, dtype=np.int64)
    values = np.full((n, width), -np.inf, dtype=np.float32)
    cold = np.zeros(n, dtype=bool)
    if cold_scores is not None:
        cold = np.diff(history_rows.indptr) == 0
    by_features = from_features(model, featured, n)
    popular = cold & ~by_features
    # Two groups, each batched: users scored from their history alone, and users scored from
    # history and features (a model's score and score_features are separate calls).
    for group, given in ((np.flatnonzero(~popular & ~by_features), None),
                         (np.flatnonzero(by_features), features)):
        for start in range(0, len(group), batch_size):
            sel = group[start:start + batch_size]
            rows = history_rows[sel]
            scores = score_batch(model, users[sel], rows, device,
                                 None if given is None else given[sel])
            top_v, top_i = masked_topk(scores, rows, width, banned)
            items[sel], values[sel] = top_i.cpu().numpy(), top_v.cpu().numpy()
    if popular.any():
        assert cold_scores is not None
        pop = cold_scores.reshape(1, -1).float().clone()
        top_v, top_i = masked_topk(pop, None, width, banned)
        items[popular], values[popular] = top_i.cpu().numpy(), top_v.cpu().numpy()
    items[~np.isfinite(values)] = -1
    return items, values, cold


def topk(model: object, users: np.ndarray, history: sp.csr_matrix, k: int, *,
         batch_size: int = DEFAULT_BATCH_SIZE, device: str | torch.device | None = None,
         exclude: np.ndarray | None = None, allow: np.ndarray | None = None,
         ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield ``(users (b,), items (b,k), scores (b,k))`` per batch of ``users``.

    ``history`` is the full users x items CSR indexed by internal user id (its rows are what the
    model scores from and what is masked). ``exclude`` (deny-list) and ``allow`` are internal item
    ids. Items are internal ids; where a user has fewer than k eligible items the tail is item -1
    with score -inf (drop those rows when writing).
    """
    users = np.asarray(users, dtype=np.int64)
    history = history.tocsr()
    if k < 1:
        raise RecsysError(f"k must be at least 1 (got {k})")
    if k > history.shape[1]:
        raise RecsysError(f"k={k} is larger than the catalogue ({history.shape[1]} items)")
    dev = as_device(device)
    place_model(model, dev)
    banned = item_mask(history.shape[1], allow, exclude, dev or "cpu")
    for start in range(0, len(users), batch_size):
        batch = users[start:start + batch_size]
        items, values, _ = topk_chunk(model, batch, history[batch], k, device=dev,
                                      banned=banned, batch_size=batch_size)
        yield batch, items, values
