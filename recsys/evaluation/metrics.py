"""Metric names and the pure tensor functions that compute them.

Definitions (../shared/PROTOCOLS.md); every ranking metric is computed per user and averaged over
the users evaluated:

- ``recall@K``        hits / min(K, |rel|)   (Mult-VAE's normalisation, max 1)
- ``plain_recall@K``  hits / |rel|
- ``precision@K``     hits / K
- ``hit@K``           1 if any hit in the top K
- ``ndcg@K``          binary gain, discount 1/log2(rank+1), IDCG over min(K, |rel|) positions
- ``mrr@K``           1 / rank of the first hit within the top K (0 without one)
- ``map@K``           sum over hit ranks r <= K of precision@r, divided by min(K, |rel|)
- ``coverage@K``      distinct items in all users' top-K lists / catalogue size (global)
- ``rmse``, ``mae``   over all held-out (user, item, rating) triples (global, not per user)

Beyond accuracy (from the list alone and the history matrix, i.e. every interaction known before
the evaluated part, all users; ``c_i`` = users with item i there, ``U`` = users with any):

- ``novelty@K``  mean self-information of the listed items, -log2 p_i with p_i = (c_i + 1) /
  (U + 1): add-one smoothing, so an item nobody has interacted with is finite (log2(U + 1)) and
  an item everyone has is 0.
- ``ild@K``      intra-list diversity: mean over the list's pairs of 1 - cos(i, j), cosine of the
  items' vectors (default: their columns in the binarised history, i.e. co-occurrence; an item
  without interactions has similarity 0 to every other). Needs K >= 2; a list with fewer than two
  items has no value (NaN, left out of the mean).
- ``arp@K``      average recommended popularity: mean of c_i / U over the list.
- ``popbias@K``  popularity lift: arp@K / (the mean c_i / U over the user's own history) - 1;
  0 when lists are as popular as what the user consumed, > 0 when they are more popular.
- ``gini@K``     Gini index of item exposure (how many lists hold each item) over the whole
  catalogue, items never listed included: 0 when every item is listed equally often, (n-1)/n
  when one item takes all exposure (global, no per-user value).

Per-user metrics are averaged over the users that have a value (for all but ild@K: every user with
at least one item listed).

The functions here take a *hits* matrix ``(users, max_k)`` (1.0 where the item at that rank is
relevant) and the number of relevant items per user, so one ``topk`` at the largest K feeds every
metric at every K through cumulative sums.
"""

from __future__ import annotations

import math
import re
from typing import Protocol

import torch

from recsys.errors import RecsysError, closest

# The one home of a metric's direction (early stopping, --tune, compare's "best"): errors and the
# loss, and the concentration measures (exposure Gini, recommended popularity and its lift over
# the user's history), where a smaller value is better. Every other metric is higher-is-better.
# The metrics a command reports when none are named (one home: evaluate, train, compare and the
# benchmarks read these): the full ranking set, the rating errors for explicit models, and the
# shorter set of a comparison table's columns.
RANKING_DEFAULT = ("recall@20,recall@50,ndcg@20,ndcg@100,precision@20,hit@20,mrr@20,map@20,"
                   "coverage@20")
RATING_DEFAULT = "rmse,mae"
COMPARE_DEFAULT = ("recall@20", "recall@50", "ndcg@20", "ndcg@100", "precision@20",
                   "coverage@20")


def default_metrics(explicit: bool) -> str:
    """What `recsys evaluate` and `recsys train` report by default."""
    return f"{RATING_DEFAULT},{RANKING_DEFAULT}" if explicit else RANKING_DEFAULT


LOWER_IS_BETTER = frozenset({"rmse", "mae", "mse", "loss", "gini", "arp", "popbias"})


def lower_is_better(metric: str) -> bool:
    """Direction of a metric name such as ``rmse``, ``ndcg@100`` or ``gini@10``."""
    return metric.split("@", 1)[0].lower() in LOWER_IS_BETTER

RANKING_METRICS = ("recall", "plain_recall", "ndcg", "precision", "hit", "mrr", "map")
LIST_METRICS = ("novelty", "ild", "arp", "popbias")  # per user, from the list, not from hits
GLOBAL_METRICS = ("coverage", "gini")  # one number over all lists, no per-user value
AT_K_METRICS = RANKING_METRICS + LIST_METRICS + GLOBAL_METRICS
RATING_METRICS = ("rmse", "mae")
ALL_BASES = AT_K_METRICS + RATING_METRICS

_NAME = re.compile(r"^([a-z_]+)(?:@(\d+))?$")


def parse_metrics(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """Normalise ``"NDCG@100, recall@20,rmse"`` (or a list) to ``ndcg@100, recall@20, rmse``.

    Order is kept and duplicates dropped. A name that does not parse raises `RecsysError` naming it
    and suggesting the closest valid one.
    """
    parts = spec.split(",") if isinstance(spec, str) else [p for s in spec for p in s.split(",")]
    out: list[str] = []
    for raw in parts:
        name = raw.strip().lower().replace("-", "_")
        if not name:
            continue
        match = _NAME.match(name.replace(" ", ""))
        if not match:
            raise RecsysError(f"metric '{raw.strip()}' does not parse; expected NAME or NAME@K, "
                              f"e.g. ndcg@100 (names: {', '.join(ALL_BASES)})")
        base, k = match.group(1), match.group(2)
        if base not in ALL_BASES:
            hint = closest(base, ALL_BASES)
            if hint and k is not None:  # suggest the whole name, cut-off included
                hint = hint.replace("'?", f"@{k}'?")
            raise RecsysError(f"unknown metric '{raw.strip()}'{hint}; "
                              f"names: {', '.join(ALL_BASES)}")
        if base in RATING_METRICS:
            if k is not None:
                raise RecsysError(f"metric '{raw.strip()}': {base} takes no @K")
            norm = base
        else:
            if k is None:
                raise RecsysError(f"metric '{raw.strip()}' needs a cut-off, e.g. {base}@20")
            if int(k) < 1:
                raise RecsysError(f"metric '{raw.strip()}': K must be at least 1")
            if base == "ild" and int(k) < 2:
                raise RecsysError(f"metric '{raw.strip()}': a list of one item has no pairs to "
                                  "be diverse over; use K >= 2")
            norm = f"{base}@{int(k)}"
        if norm not in out:
            out.append(norm)
    if not out:
        raise RecsysError("no metric given (e.g. --metrics ndcg@100,recall@20)")
    return out


def split_name(name: str) -> tuple[str, int | None]:
    """``'ndcg@100'`` -> ``('ndcg', 100)``; ``'rmse'`` -> ``('rmse', None)``."""
    base, _, k = name.partition("@")
    return base, (int(k) if k else None)


def max_k(metrics: list[str]) -> int:
    """The largest cut-off among ``metrics`` (0 when there are only rating metrics)."""
    return max((k for _, k in map(split_name, metrics) if k is not None), default=0)


def ranking_metric_names(metrics: list[str]) -> list[str]:
    """The per-user at-K metrics computed from hits (not list or global ones, not rating ones)."""
    return [m for m in metrics if split_name(m)[0] in RANKING_METRICS]


def list_metric_names(metrics: list[str]) -> list[str]:
    """The per-user beyond-accuracy metrics (novelty, ild, arp, popbias)."""
    return [m for m in metrics if split_name(m)[0] in LIST_METRICS]


def global_metric_names(metrics: list[str]) -> list[str]:
    """The metrics with one value over all lists (coverage, gini)."""
    return [m for m in metrics if split_name(m)[0] in GLOBAL_METRICS]


def discounts(k: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """1 / log2(rank + 1) for ranks 1..k."""
    ranks = torch.arange(1, k + 1, dtype=torch.float64, device=device)
    return 1.0 / torch.log2(ranks + 1.0)


def ranking_metrics(hits: torch.Tensor, n_relevant: torch.Tensor,
                    metrics: list[str]) -> dict[str, torch.Tensor]:
    """Per-user values of every at-K ranking metric in ``metrics`` from one hits matrix.

    ``hits``: ``(users, L)`` 0/1 at each rank of the top-L list (L >= every K asked for, or the
    catalogue size when that is smaller: a K beyond L is read at L). ``n_relevant``: ``(users,)``
    count of held-out relevant items (> 0). Returns float64 tensors ``(users,)``.
    """
    names = ranking_metric_names(metrics)
    if not names:
        return {}
    hits = hits.to(torch.float64)
    n_users, length = hits.shape
    device = hits.device
    rel = n_relevant.to(device=device, dtype=torch.float64)
    ranks = torch.arange(1, length + 1, dtype=torch.float64, device=device)
    cum_hits = hits.cumsum(dim=1)
    bases = {split_name(m)[0] for m in names}
    disc = discounts(length, device)
    dcg = (hits * disc).cumsum(dim=1) if "ndcg" in bases else None
    idcg = disc.cumsum(dim=0) if "ndcg" in bases else None
    # precision@r at each hit rank, accumulated: the numerator of average precision
    ap_sum = (hits * cum_hits / ranks).cumsum(dim=1) if "map" in bases else None
    if "mrr" in bases:
        any_hit = hits.any(dim=1)
        first = torch.where(any_hit, hits.argmax(dim=1).to(torch.float64) + 1.0,
                            torch.full_like(rel, float("inf")))
    out: dict[str, torch.Tensor] = {}
    for name in names:
        base, k = split_name(name)
        assert k is not None
        col = min(k, length) - 1
        h = cum_hits[:, col] if length else torch.zeros(n_users, dtype=torch.float64,
                                                        device=device)
        cap = torch.clamp(rel, max=float(k))
        if base == "recall":
            value = h / cap
        elif base == "plain_recall":
            value = h / rel
        elif base == "precision":
            value = h / k
        elif base == "hit":
            value = (h > 0).to(torch.float64)
        elif base == "ndcg":
            ideal_len = torch.clamp(rel, max=float(min(k, length))).long()
            value = dcg[:, col] / idcg[ideal_len - 1]
        elif base == "mrr":
            value = torch.where(first <= k, 1.0 / first, torch.zeros_like(first))
        elif base == "map":
            value = ap_sum[:, col] / cap
        else:  # pragma: no cover - names were filtered above
            raise AssertionError(base)
        out[name] = value
    return out


def hits_from_dense(topk_items: torch.Tensor, target_rows: torch.Tensor,
                    valid: torch.Tensor | None = None) -> torch.Tensor:
    """Hits matrix: ``target_rows[u, topk_items[u, r]] != 0`` (and ``valid``, e.g. finite score)."""
    hits = torch.gather(target_rows, 1, topk_items) != 0
    if valid is not None:
        hits &= valid
    return hits


def rating_errors(predicted: torch.Tensor, actual: torch.Tensor,
                  scale: tuple[float, float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared and absolute errors, after clipping predictions to the rating scale."""
    predicted = predicted.to(torch.float64)
    if scale is not None:
        predicted = predicted.clamp(float(scale[0]), float(scale[1]))
    diff = predicted - actual.to(torch.float64)
    return diff * diff, diff.abs()


# -- beyond accuracy -----------------------------------------------------------------------------
# ``items``: ``(users, K)`` item ids of each top-K list; ``valid``: ``(users, K)`` bool, False where
# the list ran out of eligible items (a -inf score). Both on any device; results float64 there.

def self_information(counts: torch.Tensor, n_users: int) -> torch.Tensor:
    """``-log2 p_i``, ``p_i = (c_i + 1) / (n_users + 1)``: per item, from its user counts."""
    counts = counts.to(torch.float64)
    return torch.log2(torch.tensor(n_users + 1.0, dtype=torch.float64, device=counts.device)
                      ) - torch.log2(counts + 1.0)


def list_mean(item_values: torch.Tensor, items: torch.Tensor, valid: torch.Tensor
              ) -> torch.Tensor:
    """Mean of ``item_values[i]`` over each list's valid items (NaN for a list with none):
    novelty@K with self-information, arp@K with popularity."""
    picked = item_values.to(torch.float64)[items] * valid
    return picked.sum(dim=1) / valid.sum(dim=1)


def popularity_lift(arp: torch.Tensor, history_popularity: torch.Tensor) -> torch.Tensor:
    """popbias@K: how much more popular a user's list is than their history, as a fraction."""
    return arp / history_popularity.to(arp) - 1.0


def gini_index(exposure: torch.Tensor) -> float:
    """Gini index of ``exposure`` (``(n_items,)`` times listed), every catalogue item counted.

    ``sum_i (2i - n - 1) x_(i) / (n sum x)`` over the values sorted ascending (i = 1..n); NaN
    when nothing was listed.
    """
    x = torch.sort(exposure.to(torch.float64)).values
    n, total = x.numel(), x.sum()
    if n == 0 or total <= 0:
        return math.nan
    rank = torch.arange(1, n + 1, dtype=torch.float64, device=x.device)
    return float(((2.0 * rank - n - 1.0) * x).sum() / (n * total))


class ItemVectors(Protocol):
    """Where intra-list similarity comes from: any source of item vectors whose cosine is the
    similarity (co-occurrence now; item features plug in as `DenseItemVectors`)."""

    def pair_similarity_sum(self, items: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Per list: the sum of cos(i, j) over its ordered pairs of distinct valid items."""
        ...


def intra_list_diversity(items: torch.Tensor, valid: torch.Tensor, vectors: ItemVectors
                         ) -> torch.Tensor:
    """ild@K: mean over each list's pairs of 1 - cos(i, j) (NaN for lists under two items)."""
    n = valid.sum(dim=1).to(torch.float64)
    pairs = n * (n - 1.0)  # ordered pairs, as pair_similarity_sum counts them
    sims = vectors.pair_similarity_sum(items, valid).to(torch.float64)
    return torch.where(pairs > 0, 1.0 - sims / pairs.clamp(min=1.0),
                       torch.full_like(n, math.nan))


def _unit_rows(vectors: torch.Tensor) -> torch.Tensor:
    norms = vectors.norm(dim=1, keepdim=True)
    return vectors / torch.where(norms > 0, norms, torch.ones_like(norms))  # zero rows stay zero


class DenseItemVectors:
    """Item vectors as an ``(n_items, d)`` tensor (e.g. item features), rows made unit length."""

    def __init__(self, embeddings: torch.Tensor) -> None:
        self.unit = _unit_rows(embeddings.to(torch.float64))

    def pair_similarity_sum(self, items: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        # sum_{i != j} <u_i, u_j> = ||sum_i u_i||^2 - sum_i ||u_i||^2: no K x K block per list.
        unit = self.unit.to(items.device)[items] * valid.unsqueeze(-1)
        return unit.sum(dim=1).pow(2).sum(dim=1) - unit.pow(2).sum(dim=(1, 2))


class CooccurrenceVectors:
    """Each item's column of a binary users x items matrix, scaled to unit length: the cosine of
    two items is ``|users of both| / sqrt(d_i d_j)`` (co-occurrence).

    Held item-major (``indptr``/``indices`` of the transpose, on the device lists are ranked
    on). The identity of `DenseItemVectors` is evaluated without forming any K x K block or
    item-item matrix: a list's summed unit vector is scattered into a row of n_users, so a list
    costs O(n_users + the sum of its items' user counts). Lists are taken in chunks of bounded
    work (`chunk_cells`).
    """

    chunk_cells = 1 << 23  # scattered entries + buffer cells per chunk: ~200 MB of work arrays

    def __init__(self, indptr: torch.Tensor, indices: torch.Tensor, n_users: int) -> None:
        self.indptr, self.indices, self.n_users = indptr, indices, n_users
        self.degree = indptr[1:] - indptr[:-1]
        self.weight = torch.where(self.degree > 0, self.degree.to(torch.float64).rsqrt(),
                                  torch.zeros_like(self.degree, dtype=torch.float64))

    def pair_similarity_sum(self, items: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        n_lists = items.shape[0]
        device = items.device
        list_of = torch.arange(n_lists, device=device).unsqueeze(1).expand_as(items)[valid]
        item = items[valid]
        degree = self.degree[item]
        cost = torch.full((n_lists,), self.n_users, dtype=torch.int64, device=device)
        ends = cost.index_add_(0, list_of, degree).cumsum(0).cpu()
        out = torch.zeros(n_lists, dtype=torch.float64, device=device)
        lo = 0
        while lo < n_lists:  # chunks of lists, at most `chunk_cells` of work each (or one list)
            done = int(ends[lo - 1]) if lo else 0
            hi = max(lo + 1, int(torch.searchsorted(ends, done + self.chunk_cells, right=True)))
            keep = (list_of >= lo) & (list_of < hi)
            out[lo:hi] = self._squared_norms(list_of[keep] - lo, item[keep], hi - lo)
            lo = hi
        # Each listed item with any user adds its own ||u_i||^2 = 1 to the squared norm.
        own = torch.zeros(n_lists, dtype=torch.float64, device=device).index_add_(
            0, list_of, (degree > 0).to(torch.float64))
        return out - own

    def _squared_norms(self, list_of: torch.Tensor, item: torch.Tensor, n_lists: int
                       ) -> torch.Tensor:
        """``||sum of the unit columns of each list's items||^2`` for ``n_lists`` lists."""
        lengths = self.degree[item]
        total = int(lengths.sum())
        summed = torch.zeros(n_lists * self.n_users, dtype=torch.float64, device=item.device)
        if total:
            # Position of every (list item, user) entry in `indices`: start of the item's run
            # plus the offset within it.
            offset = torch.arange(total, device=item.device) - torch.repeat_interleave(
                lengths.cumsum(0) - lengths, lengths)
            users = self.indices[torch.repeat_interleave(self.indptr[item], lengths) + offset]
            cell = torch.repeat_interleave(list_of, lengths) * self.n_users + users
            summed.index_add_(0, cell, torch.repeat_interleave(self.weight[item], lengths))
        return summed.view(n_lists, self.n_users).pow(2).sum(dim=1)
