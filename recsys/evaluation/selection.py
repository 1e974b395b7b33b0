"""Top-K of long score rows on CPU through block maxima: the same lists as `topk_rows`, less work.

Profiling full-ranking evaluation on CPU (benchmarks/bench_eval.py ``--breakdown``) put most of
our time in the selection: a linear-time selection still reads and swaps every score of a row
(several ns per score). Cut the row into blocks of ``b`` items and take each block's maximum
(one vectorised pass, `max_pool1d`); the K blocks with the largest maxima hold the K best items
(any item of another block is at most the K-th block maximum, which K items already reach).
Selecting among ``m / b`` block maxima and then among the ``K * b`` items of the chosen blocks
replaces a selection among all ``m`` items.

Lists are those of `recsys.scoring.topk.topk_rows` (best first, equal scores taken and listed
by item index, so a row's list does not depend on its batch): the chosen blocks are put in item
order before the final selection, so that ties among candidates fall by item index, and every
row where an item outside the chosen blocks could tie at the K-th value (or holds a NaN, or has
fewer than K finite scores) is redone by `topk_rows` on its whole row.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from recsys.scoring.topk import _SELECT_MIN_RATIO, topk_rows

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


def _rows_take(matrix: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """``matrix[r, columns[r, j]]`` through one flat take (several times faster than
    take_along_axis or torch.gather along rows here)."""
    width = matrix.shape[1]
    flat = columns + (np.arange(len(columns), dtype=np.int64) * width)[:, None]
    return np.take(matrix.reshape(-1), flat)


def _ranked(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                 np.ndarray]:
    """The best ``k`` of each row of ``values``: ``(values, columns)`` best first with equal
    values by column, the K-th value, and which rows the selection cannot vouch for (an item
    tied at the K-th value left out, or a NaN, which numpy ranks above everything)."""
    width = values.shape[1]
    pos = np.argpartition(values, width - k, axis=1)[:, width - k:]
    # Best first, equal values by column: positions in column order, then a stable sort by
    # value (one argsort of K values: much cheaper than a lexsort on two keys).
    pos.sort(axis=1)
    picked = _rows_take(values, pos)
    kth = picked.min(axis=1, keepdims=True)
    order = np.argsort(-picked, axis=1, kind="stable")
    doubt = (((values == kth).sum(axis=1) > (picked == kth).sum(axis=1))
             | np.isnan(kth[:, 0]))
    return _rows_take(picked, order), _rows_take(pos, order), kth, doubt


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
