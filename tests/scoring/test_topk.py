"""The shared top-K code: masking, allow/deny lists, short lists, batching."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from evaluation.doubles import FixedScores

from recsys.errors import RecsysError
from recsys.scoring.topk import masked_topk, topk, topk_rows


def _collect(model, users, history, k, **kw):
    parts = list(topk(model, users, history, k, **kw))
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]))


def test_seen_items_never_appear_and_lists_are_sorted():
    rng = np.random.default_rng(0)
    scores = rng.random((60, 30)).astype(np.float32)
    history = sp.random(60, 30, density=0.3, format="csr", random_state=1)
    users, items, values = _collect(FixedScores(scores), np.arange(60), history, 10,
                                    batch_size=16)
    assert users.tolist() == list(range(60))
    seen = history.toarray() > 0
    assert not seen[np.arange(60)[:, None], items].any()
    assert (np.diff(values, axis=1) <= 0).all()
    # the list is exactly the 10 best unseen items
    best = np.argsort(-np.where(seen, -np.inf, scores), axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(np.sort(items, 1), np.sort(best, 1))


def test_batch_size_does_not_change_the_lists():
    scores = np.random.default_rng(1).random((50, 20)).astype(np.float32)
    history = sp.random(50, 20, density=0.2, format="csr", random_state=2)
    a = _collect(FixedScores(scores), np.arange(50), history, 7, batch_size=3)
    b = _collect(FixedScores(scores), np.arange(50), history, 7, batch_size=50)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_allow_and_exclude_lists():
    scores = np.tile(np.arange(10, dtype=np.float32)[::-1], (3, 1))  # item 0 best
    history = sp.csr_matrix((3, 10), dtype=np.float32)
    _, items, _ = _collect(FixedScores(scores), np.arange(3), history, 3,
                           exclude=np.array([0, 2]))
    assert items.tolist() == [[1, 3, 4]] * 3
    _, items, values = _collect(FixedScores(scores), np.arange(3), history, 3,
                                allow=np.array([5, 9]))
    # only two eligible items: the third slot is empty (-1, -inf) so that writers drop it
    assert items.tolist() == [[5, 9, -1]] * 3
    assert np.isneginf(values[:, 2]).all()


def test_subset_of_users_uses_their_own_history_rows():
    scores = np.array([[3, 2, 1], [1, 2, 3]], dtype=np.float32)
    history = sp.csr_matrix(np.array([[1, 0, 0], [0, 0, 1]], dtype=np.float32))
    users, items, _ = _collect(FixedScores(scores), np.array([1]), history, 1)
    assert users.tolist() == [1] and items.tolist() == [[1]]


def test_k_larger_than_the_catalogue_is_an_error():
    with pytest.raises(RecsysError, match="larger than the catalogue"):
        next(topk(FixedScores(np.zeros((2, 4))), np.arange(2), sp.csr_matrix((2, 4)), 5))


def test_masked_topk_handles_nan_and_inf():
    scores = torch.tensor([[float("nan"), 1.0, float("inf"), 0.5]])
    values, index = masked_topk(scores, sp.csr_matrix(np.array([[0, 0, 1, 0]])), 4)
    assert index[0, :2].tolist() == [1, 3]
    assert torch.isneginf(values[0, 2:]).all()


@pytest.mark.gpu
def test_cuda_lists_equal_cpu_lists():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    scores = np.random.default_rng(3).random((100, 40)).astype(np.float32)
    history = sp.random(100, 40, density=0.2, format="csr", random_state=4)
    cpu = _collect(FixedScores(scores), np.arange(100), history, 10, device="cpu")
    gpu = _collect(FixedScores(scores), np.arange(100), history, 10, device="cuda")
    for x, y in zip(cpu, gpu, strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize(("n", "m", "k", "threads"), [
    (300, 1390, 100, 1),   # selection path (K / items large)
    (300, 1390, 100, 2),   # ... rows split over two threads
    (300, 6298, 10, 1),    # torch.topk path (K / items small)
    (5, 40, 7, 1),         # tiny: torch.topk
])
def test_topk_rows_equals_torch_topk(n, m, k, threads):
    g = torch.Generator().manual_seed(n + m + k)
    scores = torch.randn(n, m, generator=g)
    scores[torch.rand(n, m, generator=g) < 0.05] = float("-inf")
    scores[0, : m - 3] = float("-inf")  # a row with fewer eligible items than k
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        values, items = topk_rows(scores, k)
    finally:
        torch.set_num_threads(before)
    expected_values, expected_items = torch.topk(scores, k, dim=1)
    assert torch.equal(values, expected_values)
    finite = torch.isfinite(expected_values)
    # continuous scores: no ties, so the items are the same too (where the score is finite)
    assert torch.equal(items[finite], expected_items[finite])
    assert torch.equal(torch.gather(scores, 1, items), values)
    assert items.dtype == torch.int64 and values.dtype == torch.float32


def test_topk_rows_orders_equal_scores_by_item():
    scores = torch.zeros(200, 1000)
    scores[:, ::7] = 1.0  # 143 items tie at 1.0 in every row; K = 100 takes 100 of them
    values, items = topk_rows(scores, 100)
    assert torch.all(values == 1.0)
    assert torch.all(items % 7 == 0)
    assert torch.all(items[:, 1:] > items[:, :-1])  # ties listed by item index


@pytest.mark.parametrize("n", [1, 3, 400])  # 400 x 200: the selection path; else torch.topk
def test_ties_are_broken_by_item_whatever_the_batch(n):
    """A popularity-like row (many equal scores across the K-th place) gets the same list alone
    or in a batch of any size: evaluate and recommend batch users differently."""
    row = torch.from_numpy(np.repeat(np.arange(20, dtype=np.float32), 10)[::-1].copy())
    row = row[torch.randperm(200, generator=torch.Generator().manual_seed(0))]
    values, items = topk_rows(row.repeat(n, 1), 25)
    by_hand = sorted(range(200), key=lambda i: (-float(row[i]), i))[:25]
    assert (items == torch.tensor(by_hand)).all()
    assert torch.equal(values, row[items])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_topk_rows_works_in_a_child_forked_after_use():
    # In a fresh interpreter: what is checked is that top-K's own thread pool survives a fork.
    # (Other libraries loaded earlier in a test process can leave fork-unsafe native thread
    # pools of their own: after a SANSA fit, CHOLMOD's, and a forked child then hangs; that is
    # a known limit of forking after SANSA, not of this pool.)
    code = textwrap.dedent("""
        import multiprocessing, torch
        from recsys.scoring.topk import topk_rows

        def _child_topk(scores):
            torch.set_num_threads(2)
            return topk_rows(scores, 100)[0]

        scores = torch.randn(512, 1390, generator=torch.Generator().manual_seed(1))
        expected = torch.topk(scores, 100, dim=1).values
        torch.set_num_threads(2)  # rows split over the pool, which the child inherits
        topk_rows(scores, 100)
        with multiprocessing.get_context("fork").Pool(1) as pool:
            values = pool.apply_async(_child_topk, (scores,)).get(timeout=60)
        assert torch.equal(values, expected)
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]




@pytest.mark.parametrize("threads", [1, 4])  # 1: block maxima; 4: topk_rows over the pool
def test_recommend_and_evaluate_select_the_same_lists_on_tied_and_nan_rows(threads, monkeypatch):
    """`recsys recommend` (topk -> masked_topk) and evaluation (mask_rows -> block_topk) list
    the same items in the same order, whatever the batch: best first, ties by item, NaN as
    -inf, seen items never listed."""
    from recsys.data.tensors import mask_rows
    from recsys.evaluation.selection import block_topk

    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    rng = np.random.default_rng(7)
    n, m, k = 300, 20_108, 100  # long rows: the block path at one thread
    scores = rng.integers(0, 30, (n, m)).astype(np.float32)  # many ties at the K-th value
    scores[rng.random((n, m)) < 0.001] = np.nan
    scores[:5, 90:] = np.nan  # rows with fewer than K usable scores
    history = sp.random(n, m, density=0.004, format="csr", random_state=8)
    seen = history.toarray() > 0
    clean = np.where(np.isnan(scores) | seen, -np.inf, scores)
    expected = np.lexsort((np.broadcast_to(np.arange(m), (n, m)), -clean), axis=1)[:, :k]

    _, items, values = _collect(FixedScores(scores), np.arange(n), history, k, batch_size=64)
    finite = np.isfinite(values)
    np.testing.assert_array_equal(items[finite], expected[finite])
    assert (items[~finite] == -1).all()
    assert finite[5:].all() and not finite[:5].all()
    top_v, top_i = block_topk(mask_rows(torch.from_numpy(scores.copy()), history), k)
    np.testing.assert_array_equal(top_i.numpy()[finite], items[finite])
    np.testing.assert_array_equal(top_v.numpy(), values)
    whole_v, whole_i = masked_topk(torch.from_numpy(scores.copy()), history, k)
    assert torch.equal(whole_i, top_i) and torch.equal(whole_v, top_v)
