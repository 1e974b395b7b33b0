"""Batched top-K over the full catalogue with seen-item masking (CPU or GPU).

Evaluation (recsys.evaluation.evaluate) and `recsys recommend` share this code: a batch of users
is scored by the model, the items in their history (and any deny-listed item, and every item
outside an allow-list) are set to ``-inf``, and `block_topk` picks the best K (this module is
the one home of top-K selection: `topk_rows`, and `block_topk` over it). When a user has
fewer than K eligible items, the tail of the list holds ``-inf`` scores; the item id there is
reported as -1 so that writers drop those rows.
"""

from __future__ import annotations

import math
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


def _rows_take(matrix: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """``matrix[r, columns[r, j]]`` through one flat take (several times faster than
    take_along_axis or torch.gather along rows here)."""
    width = matrix.shape[1]
    flat = columns + (np.arange(len(columns), dtype=np.int64) * width)[:, None]
    return np.take(matrix.reshape(-1), flat)


def _best_first(values: np.ndarray, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(values, columns)`` reordered best first, equal values by column, for ``columns``
    given in column order: one stable argsort of the values (with the two takes 1.6x faster
    than a lexsort on two keys and take_along_axis: 3.9 vs 6.4 ms at 920 x 100, one thread)."""
    order = np.argsort(-values, axis=1, kind="stable")
    return _rows_take(values, order), _rows_take(columns, order)


def _ranked(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                 np.ndarray]:
    """The best ``k`` of each row of ``values``: ``(values, columns)`` best first with equal
    values by column, the K-th value, and which rows the selection cannot vouch for (an item
    tied at the K-th value left out, or a NaN, which numpy ranks above everything)."""
    width = values.shape[1]
    pos = np.argpartition(values, width - k, axis=1)[:, width - k:]
    pos.sort(axis=1)  # column order, so that the stable sort lists ties by column
    picked = _rows_take(values, pos)
    kth = picked.min(axis=1, keepdims=True)
    doubt = (((values == kth).sum(axis=1) > (picked == kth).sum(axis=1))
             | np.isnan(kth[:, 0]))
    picked, pos = _best_first(picked, pos)
    return picked, pos, kth, doubt


def _select_topk(block: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    vals, idx, kth, doubt = _ranked(block, k)
    # argpartition takes an arbitrary subset of the items tied at the K-th value; take the
    # lowest items instead (as `_ties_by_item`; numpy here: this runs in the thread pool, and
    # torch's own threads must not be started from it, see the fork test). No NaN here (the
    # callers clean them), so a doubtful row is a tie left out.
    fix = np.flatnonzero(doubt & ~np.isnan(kth[:, 0]))
    if len(fix):
        rows, cut = block[fix], kth[fix]
        tied = rows == cut
        need = k - (rows > cut).sum(1, keepdims=True)
        take = (rows > cut) | (tied & (np.cumsum(tied, axis=1) <= need))
        cols = np.nonzero(take)[1].reshape(len(fix), k)  # row-major: in item order
        vals[fix], idx[fix] = _best_first(_rows_take(rows, cols), cols)
    return vals, idx


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


# Block maxima (`block_topk`). Profiling full-ranking evaluation on CPU (benchmarks/bench_eval.py
# --breakdown) put most of the time in the selection: a linear-time selection still reads and
# swaps every score of a row (several ns per score). Cut the row into blocks of b items and take
# each block's maximum (one vectorised pass, max_pool1d); the K blocks with the largest maxima
# hold the K best items (any item of another block is at most the K-th block maximum, which K
# items already reach). Selecting among m / b block maxima and then among the K * b items of the
# chosen blocks replaces a selection among all m items. The lists are `topk_rows`'s: the chosen
# blocks are put in item order before the final selection, so that ties among candidates fall by
# item index, and every row where an item outside the chosen blocks could tie at the K-th value
# (or holds a NaN, or has fewer than K finite scores) is redone by `topk_rows` on its whole row.
#
# Below these the blocks save less than their own bookkeeping costs (measured with
# benchmarks/bench_eval.py, one thread): plain `topk_rows` then.
_MIN_CELLS = 1 << 18
_MIN_BLOCK = 2
_MIN_ITEMS_PER_K = 64


def block_size(n_items: int, k: int) -> int:
    """Items per block: about sqrt(m / K) balances the two selections (m / b maxima, K * b
    candidates); 0 when blocks do not pay. Measured on a shared 2-core machine, one thread:
    2.7x faster than `topk_rows` at K=100 over 20,108 items, no clear gain at 5,496."""
    if n_items < _MIN_ITEMS_PER_K * k:  # one selection over the row (`_ranked`)
        return 0
    return max(_MIN_BLOCK, round(math.sqrt(n_items / max(k, 1))))


def _redo(scores: torch.Tensor, rows: np.ndarray, k: int, top_v: torch.Tensor,
          top_i: torch.Tensor) -> None:
    """The exact path (`topk_rows`, NaN read as -inf) for ``rows``, written into the lists."""
    if len(rows):
        index = torch.from_numpy(rows)
        part = scores[index].nan_to_num_(nan=float("-inf"), posinf=float("inf"),
                                         neginf=float("-inf"))
        top_v[index], top_i[index] = topk_rows(part, k)


def block_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``topk_rows(scores.nan_to_num(nan=-inf), k)`` for a float32 CPU matrix, faster for a
    small K over a long row (NaN is read as ``-inf``, as `masked_topk` does). ``scores`` is
    left as given except in the rows redone on the exact path, where NaN becomes ``-inf``."""
    n, m = scores.shape
    if (scores.device.type != "cpu" or k >= m or n * m < _MIN_CELLS or scores.requires_grad
            or k < _SELECT_MIN_RATIO * m):  # small K: torch.topk wins (topk_rows)
        scores.nan_to_num_(nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
        return topk_rows(scores, k)
    size = block_size(m, k)
    # These selections run on one thread; `topk_rows` splits rows over torch's threads, which
    # wins once there are more threads than the work saved here (about 2.5x with blocks, 1.3x
    # without; an estimate, not measured on a many-core machine).
    if torch.get_num_threads() > (2 if size else 1):
        scores.nan_to_num_(nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
        return topk_rows(scores, k)
    scores = scores.contiguous()  # the flat takes read rows as one buffer
    if size == 0:  # a short row: one selection over it
        v, i, _, doubt = _ranked(scores.numpy(), k)
        top_v, top_i = torch.from_numpy(v), torch.from_numpy(i)
        _redo(scores, np.flatnonzero(doubt), k, top_v, top_i)
        return top_v, top_i
    with torch.no_grad():
        # max_pool1d carries a NaN into its block's maximum: such rows go to the exact path.
        maxima = torch.nn.functional.max_pool1d(scores.unsqueeze(1), size, size,
                                                ceil_mode=True).squeeze(1).numpy()
    n_blocks = maxima.shape[1]
    chosen = np.argpartition(maxima, n_blocks - k, axis=1)[:, n_blocks - k:]
    chosen.sort(axis=1)  # candidates in item order: ties then fall by item index
    items = (chosen[:, :, None] * size + np.arange(size)).reshape(n, -1)
    values = _rows_take(scores.numpy(), np.minimum(items, m - 1))
    if m % size:  # the last block's missing tail
        values[items >= m] = -np.inf
    v, pos, kth, doubt = _ranked(values, k)
    top_v, top_i = torch.from_numpy(v), torch.from_numpy(_rows_take(items, pos))
    # Also redo a row when a block left out could hold an item equal to the K-th value (its
    # maximum reaches it: left-out maxima never exceed the chosen ones, so it ties; always so
    # when the K-th value is -inf, fewer than K finite scores) or when the row has a NaN.
    reach_all = (maxima >= kth).sum(axis=1)
    reach_chosen = (_rows_take(maxima, chosen) >= kth).sum(axis=1)
    _redo(scores, np.flatnonzero((reach_all > reach_chosen) | doubt
                                 | np.isnan(maxima).any(axis=1)), k, top_v, top_i)
    return top_v, top_i


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
    # NaN would outrank everything in topk; a model that emits NaN must not look perfect:
    # block_topk reads it as -inf.
    return block_topk(scores, min(k, scores.shape[1]))


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
