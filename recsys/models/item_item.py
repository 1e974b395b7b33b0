"""Shared plumbing of the item-item models whose learned weights are sparse (RP3beta, SLIM, SANSA).

Such a model learns one or more sparse ``n_items x n_items`` matrices and scores a batch of users
as ``history @ W_1 @ ... @ W_m`` (0/1 history). The products stay sparse (scipy CSR times CSR:
the cost follows the batch's interactions and the weights kept, not ``n_items**2``), and a user's
row never depends on the other rows of the batch. The weights are saved as the CSR arrays
(``<name>.indptr``, ``<name>.indices``, ``<name>.data``), so the largest catalogue costs what
the kept weights cost.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import scipy.sparse as sp
import torch

from recsys.models.baselines import _Baseline, binarize


def top_k_per_row(dense: np.ndarray, k: int) -> sp.csr_matrix:
    """The ``k`` largest positive entries of each row of ``dense``, as float32 CSR."""
    n_rows, n_cols = dense.shape
    if k < n_cols:
        # torch.topk returns only the k kept indices; numpy's argpartition would return an int64
        # index for every entry (twice the block's own memory).
        top = torch.topk(torch.from_numpy(dense), k, dim=1)
        values, keep = top.values.numpy(), top.indices.numpy()
    else:
        keep = np.broadcast_to(np.arange(n_cols), dense.shape)
        values = dense
    rows = np.broadcast_to(np.arange(n_rows)[:, None], keep.shape)
    positive = values > 0
    return sp.csr_matrix((values[positive].astype(np.float32),
                          (rows[positive], keep[positive])), shape=dense.shape)


class SparseItemItem(_Baseline):
    """A model scored as ``history @ W_1 @ ... @ W_m``; subclasses call ``_set_weights``."""

    # The names of the weight matrices, in the order they multiply the history.
    weight_names: ClassVar[tuple[str, ...]] = ("weights",)

    weights: list[sp.csr_matrix]

    def _set_weights(self, *matrices: sp.spmatrix) -> None:
        out = []
        for matrix in matrices:
            w = sp.csr_matrix(matrix, dtype=np.float32)
            w.eliminate_zeros()
            w.sort_indices()
            out.append(w)
        self.weights = out
        self.n_items = int(out[0].shape[0])
        self._fitted = True

    def score(self, users: np.ndarray, history: sp.csr_matrix) -> torch.Tensor:
        self._check_fitted()
        out = binarize(history)
        for w in self.weights:
            out = out @ w
        return torch.from_numpy(out.toarray()).to(self.device)

    @property
    def nnz(self) -> int:
        """Weights kept, over all matrices."""
        self._check_fitted()
        return sum(int(w.nnz) for w in self.weights)

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._check_fitted()
        state = {}
        for name, w in zip(self.weight_names, self.weights, strict=True):
            state[f"{name}.indptr"] = torch.from_numpy(w.indptr.astype(np.int64))
            state[f"{name}.indices"] = torch.from_numpy(w.indices.astype(np.int64))
            state[f"{name}.data"] = torch.from_numpy(w.data)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        matrices = []
        for name in self.weight_names:
            indptr = state[f"{name}.indptr"].numpy()
            n = len(indptr) - 1
            w = sp.csr_matrix((state[f"{name}.data"].float().numpy(),
                               state[f"{name}.indices"].numpy(), indptr), shape=(n, n))
            w.check_format(full_check=True)  # a damaged file: ValueError, named by the loader
            matrices.append(w)
        self.device = self._resolve_device()
        self._set_weights(*matrices)


__all__ = ["SparseItemItem", "top_k_per_row"]
