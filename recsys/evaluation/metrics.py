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

The functions here take a *hits* matrix ``(users, max_k)`` (1.0 where the item at that rank is
relevant) and the number of relevant items per user, so one ``topk`` at the largest K feeds every
metric at every K through cumulative sums.
"""

from __future__ import annotations

import re

import torch

from recsys.errors import RecsysError, closest

RANKING_METRICS = ("recall", "plain_recall", "ndcg", "precision", "hit", "mrr", "map")
GLOBAL_METRICS = ("coverage",)  # one number over all lists, no per-user value
AT_K_METRICS = RANKING_METRICS + GLOBAL_METRICS
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
    """The per-user at-K metrics (not coverage, not rating metrics)."""
    return [m for m in metrics if split_name(m)[0] in RANKING_METRICS]


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
