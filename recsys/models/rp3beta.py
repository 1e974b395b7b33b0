"""RP3beta (Paudel et al., ACM TiiS 2017), as evaluated by Ferrari Dacrema et al. (RecSys 2019).

A random walk of three steps on the user-item graph, item -> user -> item, re-weighted by the
popularity of the item it ends on. With the 0/1 training matrix ``X``:

- ``P_iu = X^T`` with each item's row divided by the item's degree (item -> user),
  ``P_ui = X`` with each user's row divided by the user's degree (user -> item);
  both raised elementwise to the power ``alpha`` (1: the plain transition probabilities);
- ``W = (P_iu @ P_ui) * pop_j**-beta``: the two-step walk from item ``i`` to item ``j``, divided
  by ``j``'s popularity to the power ``beta`` (0: no penalty, the plain walk of P3alpha);
- ``W_ii = 0``; each row keeps its ``k`` largest weights; with ``normalize`` each row is then
  divided by its sum (Ferrari Dacrema et al.'s ``normalize_similarity``);
- a user's scores are ``history @ W``.

``W`` is built a block of rows at a time, so memory stays bounded whatever the catalogue: a block
holds at most 2**24 walk weights (64 MiB dense, at most twice that for the sparse product it is
read from; ML-20M's 20k items take 24 blocks) and only ``n_items * k`` weights are kept.
"""

from __future__ import annotations

from typing import ClassVar, Self

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from recsys.config import StrictConfig
from recsys.data.interactions import EvalSplit, Interactions
from recsys.models import baselines
from recsys.models.base import FitContext
from recsys.models.item_item import SparseItemItem, top_k_per_row


class RP3betaConfig(StrictConfig):
    alpha: float = Field(0.8, ge=0, description="exponent of the transition probabilities")
    beta: float = Field(0.4, ge=0, description="popularity penalty: W_ij / pop_j**beta")
    k: int | None = Field(100, ge=1, description="weights kept per item (null: all)")
    normalize: bool = Field(True, description="divide each item's kept weights by their sum")


def _row_normalised(matrix: sp.csr_matrix) -> sp.csr_matrix:
    """Each row divided by its sum (rows of zeros stay zero)."""
    sums = np.asarray(matrix.sum(axis=1)).ravel()
    inverse = np.divide(1.0, sums, out=np.zeros_like(sums), where=sums > 0)
    return sp.csr_matrix(sp.diags(inverse.astype(np.float32)) @ matrix)


class RP3beta(SparseItemItem):
    """RP3beta: a popularity-penalised item -> user -> item random walk (see the module doc)."""

    name: ClassVar[str] = "rp3beta"
    Config: ClassVar[type[StrictConfig]] = RP3betaConfig
    # What --tune searches: the grid, and the Optuna study's space (`recsys.models.tuning`).
    tune_grid = {
        "alpha": [0.6, 0.8, 1.0],
        "beta": [0.2, 0.3, 0.4, 0.5, 0.6],
        "k": [50, 100, 200],
    }
    search_space = {
        "alpha": {"low": 0.1, "high": 2.0},
        "beta": {"low": 0.0, "high": 1.0},
        "k": {"low": 10, "high": 1000, "log": True},
    }

    def fit(self, train: Interactions, valid: EvalSplit | None = None,
            ctx: FitContext | None = None) -> Self:
        x = self._start_fit(train)
        cfg = self.config
        n = self.n_items
        p_ui = _row_normalised(x)
        p_iu = _row_normalised(x.T.tocsr())
        if cfg.alpha != 1.0:
            p_ui.data **= cfg.alpha
            p_iu.data **= cfg.alpha
        popularity = np.bincount(x.indices, minlength=n).astype(np.float64)
        penalty = np.zeros(n)
        penalty[popularity > 0] = popularity[popularity > 0] ** -cfg.beta
        penalty = penalty.astype(np.float32)
        k = n if cfg.k is None else min(cfg.k, n)
        # A quarter of the shared block size: the sparse product a block is read from can hold
        # as many entries again, and the dense block as many float32 values.
        block = max(1, min(n, baselines._BLOCK_ENTRIES // 4 // max(n, 1)))
        rows = []
        for start in range(0, n, block):
            stop = min(start + block, n)
            walk = (p_iu[start:stop] @ p_ui).toarray() * penalty[None, :]
            walk[np.arange(stop - start), np.arange(start, stop)] = 0.0  # no walk back to itself
            rows.append(top_k_per_row(walk, k))
        weights = sp.vstack(rows, format="csr")
        if cfg.normalize:
            weights = _row_normalised(weights)
        self._set_weights(weights)
        return self


__all__ = ["RP3beta", "RP3betaConfig"]
