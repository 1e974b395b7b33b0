"""CSR batches on a torch device: the one home of the host-CSR-to-device kernels (densifying a
batch for a model, a bool target mask for the metrics, the seen-item mask of a ranking). The
training engine's device-resident matrix (`recsys.training.trainer.DeviceRows`) is the other
source of dense rows."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch


def csr_coordinates(rows: sp.csr_matrix, device: torch.device | str = "cpu",
                    values: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(row ids, column ids[, float32 values])`` of a CSR batch's stored entries, built on
    ``device`` (pinned, non-blocking copies on CUDA), with no dense host copy."""
    rows = rows.tocsr()
    device = torch.device(device)
    indptr = torch.from_numpy(rows.indptr.astype(np.int64))
    indices = torch.from_numpy(rows.indices.astype(np.int64))
    data = torch.from_numpy(rows.data.astype(np.float32)) if values else None
    if device.type == "cuda":
        indptr, indices = (t.pin_memory().to(device, non_blocking=True) for t in (indptr, indices))
        if data is not None:
            data = data.pin_memory().to(device, non_blocking=True)
    else:
        indptr, indices = indptr.to(device), indices.to(device)
    row_ids = torch.repeat_interleave(torch.arange(rows.shape[0], device=device),
                                      indptr[1:] - indptr[:-1])
    return row_ids, indices, data


def csr_to_dense(rows: sp.csr_matrix, device: torch.device | str = "cpu",
                 binary: bool = False, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Densify a CSR batch as a ``dtype`` tensor on ``device`` (built there); ``binary``: every
    stored entry becomes 1 (True for ``torch.bool``)."""
    keep_values = not binary and dtype != torch.bool
    row_ids, cols, data = csr_coordinates(rows, device, values=keep_values)
    out = torch.zeros(rows.shape, dtype=dtype, device=row_ids.device)
    out[row_ids, cols] = data.to(dtype) if data is not None else 1
    return out


def mask_rows(scores: torch.Tensor, rows: sp.csr_matrix) -> torch.Tensor:
    """Set ``scores[u, i] = -inf`` wherever ``rows[u, i]`` is stored (in place; returns scores)."""
    if rows.nnz == 0:
        return scores
    row_ids, cols, _ = csr_coordinates(rows, scores.device)
    scores[row_ids, cols] = float("-inf")
    return scores
