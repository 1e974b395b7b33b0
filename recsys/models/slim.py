"""SLIM (Ning & Karypis, ICDM 2011) with scikit-learn's ElasticNet, as in Ferrari Dacrema et al.

One non-negative elastic-net regression per item ``j``: the item's 0/1 column ``y = X[:, j]`` is
predicted from the other items' columns (``j``'s own column zeroed, so ``W_jj = 0``)::

    min_w  1/(2 n_users) ||y - X w||^2 + alpha * l1_ratio * ||w||_1
           + alpha * (1 - l1_ratio) / 2 * ||w||^2,    w >= 0

(scikit-learn's ``ElasticNet(positive=True, fit_intercept=False)``; the loss is averaged over
users, so ``alpha`` does not grow with their number). Column ``j`` of ``W`` keeps the ``k``
largest weights of its regression, and a user's scores are ``history @ W``.

The regressions are independent: threads share them out (scikit-learn's coordinate descent runs
without the GIL), each with its own copy of ``X`` whose target column it zeroes and restores.
Coordinate descent runs in a fixed (cyclic) order, so ``W`` is the same for any thread count.
"""

from __future__ import annotations

import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar, Self

import numpy as np
import scipy.sparse as sp
from pydantic import Field
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import ElasticNet
from tqdm.auto import tqdm

from recsys.config import StrictConfig
from recsys.data.interactions import EvalSplit, Interactions
from recsys.models.base import FitContext
from recsys.models.item_item import SparseItemItem

# Items per task handed to a thread: large enough that scheduling costs nothing, small enough
# that the threads finish together and the progress bar moves.
_ITEMS_PER_TASK = 64


class SLIMConfig(StrictConfig):
    alpha: float = Field(0.2, gt=0, description="total penalty (scikit-learn's alpha)")
    l1_ratio: float = Field(0.001, ge=0, le=1, description="share of the penalty that is L1")
    k: int | None = Field(200, ge=1, description="weights kept per item (null: all)")
    max_iter: int = Field(100, ge=1, description="coordinate-descent passes per item")
    tol: float = Field(1e-4, gt=0, description="coordinate-descent tolerance")
    num_threads: int = Field(0, ge=0, description="0: all cores")


def _num_threads(requested: int) -> int:
    if requested > 0:
        return requested
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class SLIM(SparseItemItem):
    """SLIM ElasticNet: a sparse non-negative item-item regression (see the module doc)."""

    name: ClassVar[str] = "slim"
    Config: ClassVar[type[StrictConfig]] = SLIMConfig
    # What --tune searches: the grid, and the Optuna study's space (`recsys.models.tuning`).
    tune_grid = {"alpha": [0.05, 0.1, 0.2, 0.5, 1.0], "l1_ratio": [0.001, 0.01]}
    search_space = {
        "alpha": {"low": 0.01, "high": 10.0, "log": True},
        "l1_ratio": {"low": 0.0001, "high": 0.5, "log": True},
    }

    def fit(self, train: Interactions, valid: EvalSplit | None = None,
            ctx: FitContext | None = None) -> Self:
        x = self._start_fit(train).tocsc().astype(np.float64)
        x.indices = x.indices.astype(np.int32, copy=False)  # what the solver reads
        x.indptr = x.indptr.astype(np.int32, copy=False)
        cfg = self.config
        n = self.n_items
        k = n if cfg.k is None else min(cfg.k, n)
        # Nobody's column is all zeros: its regression is w = 0, nothing to fit.
        targets = np.flatnonzero(np.diff(x.indptr))
        tasks = [targets[i:i + _ITEMS_PER_TASK] for i in range(0, len(targets), _ITEMS_PER_TASK)]
        local = threading.local()

        def fit_items(items: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            if not hasattr(local, "x"):  # one copy per thread: zeroing a column is in place
                local.x = x.copy()
                local.model = ElasticNet(
                    alpha=cfg.alpha, l1_ratio=cfg.l1_ratio, positive=True, fit_intercept=False,
                    copy_X=False, precompute=False, max_iter=cfg.max_iter, tol=cfg.tol,
                    selection="cyclic")
            own, model = local.x, local.model
            rows, cols, vals = [], [], []
            for j in items:
                lo, hi = own.indptr[j], own.indptr[j + 1]
                y = np.zeros(own.shape[0])
                y[own.indices[lo:hi]] = 1.0
                own.data[lo:hi] = 0.0
                model.fit(own, y, check_input=False)
                own.data[lo:hi] = 1.0
                coef = model.coef_
                kept = np.flatnonzero(coef > 0)
                if len(kept) > k:
                    kept = kept[np.argpartition(coef[kept], len(kept) - k)[len(kept) - k:]]
                rows.append(kept)
                cols.append(np.full(len(kept), j))
                vals.append(coef[kept])
            empty = [np.zeros(0, np.int64)]
            return (np.concatenate(rows or empty), np.concatenate(cols or empty),
                    np.concatenate(vals or [np.zeros(0)]))

        quiet = ctx.quiet if ctx is not None else True
        with warnings.catch_warnings():
            # A regression stopped at max_iter still gives usable weights; one warning per item
            # (thousands) would bury the log.
            warnings.simplefilter("ignore", ConvergenceWarning)
            # Threads, not processes: the regressions release the GIL in their solver, and
            # nothing is pickled to workers (the matrix stays shared).
            with ThreadPoolExecutor(max_workers=_num_threads(cfg.num_threads)) as pool:
                parts = list(tqdm(pool.map(fit_items, tasks), total=len(tasks), desc="slim",
                                  unit="task", disable=quiet))
        rows, cols, vals = (np.concatenate([p[i] for p in parts] or [np.zeros(0)])
                            for i in range(3))
        self._set_weights(sp.csr_matrix((vals, (rows.astype(np.int64), cols.astype(np.int64))),
                                        shape=(n, n)))
        return self


__all__ = ["SLIM", "SLIMConfig"]
