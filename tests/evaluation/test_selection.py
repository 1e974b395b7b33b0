"""block_topk gives exactly the lists of topk_rows (NaN read as -inf), ties and tails included."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys.evaluation.selection import block_size, block_topk
from recsys.scoring.topk import topk_rows


def _reference(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    clean = scores.clone().nan_to_num_(nan=float("-inf"), posinf=float("inf"),
                                       neginf=float("-inf"))
    return topk_rows(clean, k)


def _scores(kind: str, n: int, m: int, rng: np.random.Generator) -> torch.Tensor:
    if kind == "ties":  # few distinct values: ties at the K-th value in and out of the blocks
        return torch.from_numpy(rng.integers(0, 30, (n, m)).astype(np.float32))
    scores = torch.from_numpy(rng.standard_normal((n, m)).astype(np.float32))
    if kind == "nan":
        scores[torch.from_numpy(rng.random((n, m)) < 0.001)] = float("nan")
    elif kind == "inf":
        scores[torch.from_numpy(rng.random((n, m)) < 0.01)] = float("inf")
        scores[torch.from_numpy(rng.random((n, m)) < 0.3)] = float("-inf")
    elif kind == "few":  # most rows have fewer than K finite scores
        scores[torch.from_numpy(rng.random((n, m)) < 0.995)] = float("-inf")
    return scores


@pytest.mark.parametrize("kind", ["normal", "ties", "nan", "inf", "few"])
@pytest.mark.parametrize(("n", "m", "k"), [(100, 20_108, 100), (257, 6_403, 20), (64, 4_096, 10),
                                           (300, 1_390, 100)])
def test_block_topk_equals_topk_rows(kind: str, n: int, m: int, k: int,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # the one-thread paths
    scores = _scores(kind, n, m, np.random.default_rng(n + m + k))
    values, items = block_topk(scores.clone(), k)
    ref_values, ref_items = _reference(scores, k)
    assert torch.equal(items, ref_items)
    assert torch.equal(values, ref_values)


def test_block_path_taken_where_it_pays() -> None:
    # The 20,108-item case above runs through the blocks (last block partial: 20,108 = 14 * 1,436
    # + 4), 1,390 and 4,096 items through one selection per row (_ranked).
    assert block_size(20_108, 100) == 14 and 20_108 % 14
    assert block_size(1_390, 100) == 0
