"""CF-NADE (Zheng, Tang, Ding & Zhou, ICML 2016, "A Neural Autoregressive Approach to
Collaborative Filtering"): an autoregressive distribution over a row's explicit ratings.

A row is a user's ratings over the items (U-CF-NADE, ``based: user``) or, as in the paper's
best variant and the default here, an item's ratings by the users (I-CF-NADE, ``based: item``);
its ``D`` ratings ``r`` over the columns ``m`` are taken in an ordering ``o``:

    p(r) = prod_i p(r_{m_oi} | r_{m_o<i})

- Hidden layer with the paper's weight sharing between rating levels: a
  rating of level ``k`` of column ``m`` adds ``W^1_m + ... + W^k_m`` (the cumulative sum of the
  level-specific columns), ``h = g(c + sum_{j<i} sum_{t <= r_j} W^t_{:, m_oj})``
  (`CFNADENet.encode`, which gathers only the conditioning ratings' cumulative columns).
- Output with the same sharing: the score of level ``k`` of column ``m`` is
  ``s^k_m = sum_{t <= k} (b^t_m + V^t_m h)`` (a cumulative sum over the level axis of the
  levels' outputs), and ``p(r_m = k | .) = softmax_k(s_m)``.
- Cost: ``C = (1 - lambda) C_reg + lambda C_ord``, where ``C_reg`` is the
  regular negative log-likelihood of the softmax and ``C_ord`` that of the ordinal likelihood:
  the true level ``k`` is preferred over ``k - 1 > ... > 1`` and over ``k + 1 > ... > K``,
  ``prod_{j=k..1} e^{s^j} / sum_{t<=j} e^{s^t} * prod_{j=k..K} e^{s^j} / sum_{t>=j} e^{s^t}``
  (`ordinal_nll`); ``lambda`` is ``ordinal_weight``.
- Training (``training: ordering``, the default, as the paper trains its one-layer model): per
  row of a batch a random ordering, and the cost of every one of the row's ``D`` conditionals
  ``p(r_{m_oi} | r_{m_o<i})``; the hidden code of each prefix is a running sum of the ordered
  ratings' shared columns (`ordering_codes`), so the ``D`` codes cost one pass over the row.
  ``training: orderless`` is the trick of Uria, Murray & Larochelle (ICML 2014) that the paper
  uses for its deep variant: one split ``d`` uniform in ``0..D-1`` per row, the other ``D - d``
  ratings predicted from the first ``d`` at once, their cost rescaled by ``D / (D - d)``
  (`split_ratings`, `orderless_cost`). Both are unbiased estimates of the cost summed over a
  row in a random ordering; the orderless one draws one prefix size per row instead of all
  ``D``, a noisier gradient (validation RMSE on ml-100k u1, same other settings: orderless
  0.905, ordering 0.898; configs/cfnade.yaml). All rows of a batch at once, no loop over rows.
- Prediction: the expected rating ``sum_k level_k p(r_m = k | all training ratings of the
  row)``. I-CF-NADE is transductive, like I-AutoRec: an item's hidden code is computed from its
  training ratings by all users, so a user's predicted ratings are read from that user's output
  units (``history`` is not read when scoring); U-CF-NADE encodes the given history (new users
  are folded in).

The levels are the distinct rating values of the training data (5 on MovieLens' 1-5 stars, 10
on half stars), within the dataset's rating scale. Where the model has nothing to go on it falls
back like AutoRec: a user (I-CF-NADE) or item (U-CF-NADE) without training ratings has untrained
output units, so its predictions are the item's (user's) mean rating, or the global mean;
`predict_with_fallback` says which. A row without training ratings is predicted from the empty
conditioning set, which the model learns too (the split ``d = 0``).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from recsys.config import TrainConfig
from recsys.data.interactions import Interactions
from recsys.errors import RecsysError
from recsys.models.base import FitContext, csr_to_dense
from recsys.models.explicit import ExplicitRecommender, register_rating_means
from recsys.models.neural import NEURAL_SPACE, Batch
from recsys.models.nn import ACTIVATIONS, Activation, check_history

# More distinct rating values than this is not a rating scale (e.g. averaged or continuous
# scores): each value would be a softmax class with its own weights.
MAX_LEVELS = 20
DEFAULT_LEVELS = 5  # the network's level count before the data is seen (MovieLens' 1-5 stars)
_PAIR_CHUNK = 4096  # (row, column) pairs decoded at once: a chunk x levels x hidden buffer
_DECODE_BUDGET = 1 << 24  # rows x columns x levels of scores built at once when scoring


class CFNADEConfig(TrainConfig):
    """CF-NADE options; every key of the shared `TrainConfig` applies as well."""

    based: Literal["item", "user"] = "item"
    # Every conditional of one random ordering per row (the paper's one-layer training), or
    # one random split per row (orderless, the paper's deep-variant training).
    training: Literal["ordering", "orderless"] = "ordering"
    hidden: int = Field(500, ge=1)
    activation: Activation = "tanh"
    # The paper's lambda: weight of the ordinal cost beside the regular softmax likelihood.
    ordinal_weight: float = Field(1.0, ge=0.0, le=1.0)
    # Defaults chosen on validation ratings carved from ml-100k's u1.base (configs/cfnade.yaml).
    # Adam at 1e-3 with no weight decay beat lr 0.002-0.003, weight decay 0.01-0.1, 250
    # hidden units and the regular cost alone (ordinal_weight 0).
    epochs: int = Field(300, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(1e-3, gt=0)
    metric: str = "rmse"
    patience: int | None = Field(10, ge=1)
    checkpoint_every: int = Field(10, ge=1)


# -- the cost -------------------------------------------------------------------------------------

def regular_nll(scores: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """``-log softmax(scores)[level]`` per entry: scores ``(..., K)``, level ``(...)`` (0-based)."""
    return -F.log_softmax(scores, dim=-1).gather(-1, level.unsqueeze(-1)).squeeze(-1)


def ordinal_nll(scores: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """Negative log of the paper's ordinal likelihood per entry.

    Level ``k`` ranked first among ``1..j`` for every ``j <= k`` (``s^j - log sum_{t<=j} e^s^t``)
    and first among ``j..K`` for every ``j >= k`` (``s^j - log sum_{t>=j} e^s^t``).
    """
    below = scores - torch.logcumsumexp(scores, dim=-1)
    above = scores - torch.logcumsumexp(scores.flip(-1), dim=-1).flip(-1)
    ks = torch.arange(scores.shape[-1], device=scores.device)
    k = level.unsqueeze(-1)
    return -(below * (ks <= k)).sum(-1) - (above * (ks >= k)).sum(-1)


def split_ratings(observed: torch.Tensor) -> torch.Tensor:
    """The conditioning part of each row: a random ordering of its observed entries and a split
    ``d`` uniform in ``0..D-1`` (``D``: the row's observed count); True for the first ``d``.

    An ordering is a uniformly random key per observed entry (unobserved entries rank last);
    the first ``d`` of it are the entries whose rank within their row is below ``d``.
    """
    keys = torch.rand(observed.shape, device=observed.device).masked_fill(~observed, 2.0)
    rank = keys.argsort(dim=1).argsort(dim=1)
    count = observed.sum(dim=1)
    split = torch.floor(torch.rand(count.shape, device=observed.device) * count).long()
    return observed & (rank < split.unsqueeze(1))


def orderless_cost(scores: torch.Tensor, level: torch.Tensor, row: torch.Tensor,
                   observed: torch.Tensor, given: torch.Tensor, ordinal_weight: float
                   ) -> dict[str, torch.Tensor]:
    """Per-row cost of predicting the observed entries outside ``given`` from those in it,
    rescaled by ``D / (D - d)``: the hybrid cost ``(1 - lambda) C_reg + lambda C_ord`` summed over
    the predicted entries. ``scores`` ``(predicted, K)``, ``level`` and ``row`` ``(predicted,)``:
    the predicted entries' level scores, true levels and rows; ``observed``/``given`` ``(rows,
    columns)``. Returns the per-row ``cost`` and the sums of the ``regular`` and ``ordinal``
    parts over the ``predicted`` entries (their count)."""
    regular, ordinal = regular_nll(scores, level), ordinal_nll(scores, level)
    hybrid = (1.0 - ordinal_weight) * regular + ordinal_weight * ordinal
    summed = torch.zeros(observed.shape[0], dtype=hybrid.dtype,
                         device=hybrid.device).index_add(0, row, hybrid)
    count = observed.sum(dim=1).to(hybrid.dtype)
    predicted = count - given.sum(dim=1).to(hybrid.dtype)
    return {"cost": summed * count / predicted.clamp(min=1.0), "regular": regular.sum(),
            "ordinal": ordinal.sum(), "predicted": predicted.sum()}


def ordering_codes(shared: torch.Tensor, row: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Per observed entry, the sum of the ``shared`` columns ``(entries, hidden)`` of the
    entries before it in its row: ``shared`` is in row-major order, each row's entries in its
    ordering (``row`` sorted). A running sum over the whole batch, less the running sum at the
    row's start and the entry's own column (exclusive prefix sums within each row)."""
    running = shared.cumsum(dim=0)
    counts = torch.bincount(row, minlength=n_rows)
    starts = counts.cumsum(0) - counts  # each row's first entry
    before = torch.cat([running.new_zeros(1, running.shape[1]), running])[starts]
    return running - shared - before[row]


def random_ordering(observed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The observed entries ``(row, column)`` of a batch, row by row, each row's entries in a
    uniformly random order."""
    row, column = torch.nonzero(observed, as_tuple=True)
    # Row-major by the integer row, random within it by a key in [0, 0.5) (float64: exact).
    key = row.double() + 0.5 * torch.rand(len(row), dtype=torch.float64, device=row.device)
    order = key.argsort()
    return row[order], column[order]


# -- the network ----------------------------------------------------------------------------------

class CFNADENet(nn.Module):
    """The paper's parameters, level by level, plus the data statistics (buffers: the rating
    levels, means and counts for the fallbacks).

    ``W`` ``(columns, K, hidden)`` and ``c`` ``(hidden)``: the hidden layer; ``V``
    ``(columns, K, hidden)`` and ``b`` ``(columns, K)``: the output layer. Both layers use the
    cumulative sums over the level axis (the weight sharing), taken on every forward pass so that
    the gradient reaches each level's own weights as in the paper.
    """

    def __init__(self, n_columns: int, n_levels: int, hidden: int, activation: str,
                 n_users: int, n_items: int) -> None:
        super().__init__()
        self.n_columns, self.n_levels = n_columns, n_levels
        # Xavier-uniform bounds of the equivalent dense layers (columns x K inputs or outputs).
        bound = math.sqrt(6.0 / (n_columns * n_levels + hidden))
        self.W = nn.Parameter(torch.empty(n_columns, n_levels, hidden).uniform_(-bound, bound))
        self.c = nn.Parameter(torch.zeros(hidden))
        self.V = nn.Parameter(torch.empty(n_columns, n_levels, hidden).uniform_(-bound, bound))
        self.b = nn.Parameter(torch.zeros(n_columns, n_levels))
        self.activation = ACTIVATIONS[activation]()
        self.register_buffer("levels", torch.arange(1, n_levels + 1, dtype=torch.float32))
        register_rating_means(self, n_users, n_items)

    def level_index(self, ratings: torch.Tensor) -> torch.Tensor:
        """0-based level of each rating (the nearest level; unobserved 0s map to level 0)."""
        midpoints = (self.levels[1:] + self.levels[:-1]) / 2
        return torch.bucketize(ratings.float().contiguous(), midpoints)

    def encode(self, level: torch.Tensor, given: torch.Tensor) -> torch.Tensor:
        """Hidden codes ``(rows, hidden)`` conditioned on the ``given`` entries of ``level``
        ``(rows, columns)``: ``g(c + sum of W^1..W^k over the given ratings)``. Only the given
        entries are gathered (a rating row is a few percent full)."""
        row, column = torch.nonzero(given, as_tuple=True)
        shared = self.W.cumsum(dim=1)[column, level[row, column]]
        start = self.c.expand(len(given), -1)
        return self.activation(start.index_add(0, row, shared))

    def _output(self, codes: torch.Tensor, columns: torch.Tensor | None, equation: str
                ) -> torch.Tensor:
        weight, bias = (self.V, self.b) if columns is None else (self.V[columns],
                                                                 self.b[columns])
        return (torch.einsum(equation, codes, weight) + bias).cumsum(-1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Level scores ``(rows, columns, K)``: ``s^k = sum_{t<=k} b^t + V^t h``."""
        return self._output(codes, None, "rh,ckh->rck")

    def decode_columns(self, codes: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        """Level scores of ``columns`` only, for every code: ``(rows, len(columns), K)``."""
        return self._output(codes, columns, "rh,ckh->rck")

    def decode_pairs(self, codes: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        """Level scores ``(pairs, K)`` of column ``columns[j]`` for code ``codes[j]``."""
        return self._output(codes, columns, "ph,pkh->pk")

    def empty_code(self) -> torch.Tensor:
        """The hidden code of a row with nothing to condition on: ``g(c)``, ``(1, hidden)``."""
        return self.activation(self.c).unsqueeze(0)

    def expected_rating(self, scores: torch.Tensor) -> torch.Tensor:
        """``sum_k level_k p(r = k)`` over the last axis."""
        return torch.softmax(scores.float(), dim=-1) @ self.levels


class CFNADE(ExplicitRecommender):
    """I-CF-NADE / U-CF-NADE rating prediction (explicit feedback)."""

    name: ClassVar[str] = "cfnade"
    Config: ClassVar[type[TrainConfig]] = CFNADEConfig
    # What --tune searches: the grid, and the Optuna study's space (`recsys.models.tuning`).
    tune_grid = {"ordinal_weight": [0.0, 0.5, 1.0], "weight_decay": [0.0, 1e-4]}
    search_space = {
        **NEURAL_SPACE,
        "ordinal_weight": {"low": 0.0, "high": 1.0},
        "hidden": {"low": 100, "high": 1000, "step": 100},
    }
    family: ClassVar[str] = "autoencoder"
    title: ClassVar[str] = "CF-NADE"
    verb: ClassVar[str] = "models"
    zero_reason: ClassVar[str] = "a 0 in a rating row means 'not rated'"
    flat_when: ClassVar[Literal["scale", "ratings"]] = "ratings"  # each value is a level
    row_chunk: ClassVar[int] = 2048

    network: CFNADENet

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.n_levels = DEFAULT_LEVELS

    # -- the engine's contract -----------------------------------------------------------------

    def network_for(self, n_columns: int, n_users: int, n_items: int) -> CFNADENet:
        cfg = self.config
        return CFNADENet(n_columns, self.n_levels, cfg.hidden, cfg.activation, n_users, n_items)

    def setup(self, train: Interactions, ctx: FitContext) -> None:
        matrix, _, _ = self.checked_ratings(train, ctx.data_meta)
        levels = np.unique(matrix.data)
        if len(levels) > MAX_LEVELS:
            raise RecsysError(f"cfnade: the training ratings take {len(levels)} distinct values "
                              f"(at most {MAX_LEVELS}): CF-NADE models each rating level as a "
                              "class; round the ratings to a scale of levels")
        if len(levels) != self.n_levels:
            self.n_levels = len(levels)
            self.build(train.n_users, train.n_items)
        self.network.levels.copy_(torch.from_numpy(levels.astype(np.float32)))
        self.keep_ratings(matrix)

    def training_step(self, batch: Batch, step: int) -> dict[str, Any]:
        if self.config.training == "ordering":
            return self._ordering_step(batch)
        net = self.network
        observed = batch.rows > 0
        level = net.level_index(batch.rows)
        given = split_ratings(observed)
        codes = net.encode(level, given)
        # One dense product for the batch's output layer, then only the predicted entries go
        # through the softmaxes (gathering their weights first is slower on the CPU).
        row, column = torch.nonzero(observed & ~given, as_tuple=True)
        scores = net.decode(codes)[row, column]
        parts = orderless_cost(scores, level[row, column], row, observed, given,
                               self.config.ordinal_weight)
        predicted = parts["predicted"].clamp(min=1.0)
        return {"loss": parts["cost"].mean(), "nll": parts["regular"].detach() / predicted,
                "ordinal_nll": parts["ordinal"].detach() / predicted}

    def _ordering_step(self, batch: Batch) -> dict[str, Any]:
        """Every conditional of a random ordering of each row: entry ``i`` predicted from the
        row's entries before it, the hybrid cost summed over the row."""
        net = self.network
        observed = batch.rows > 0
        row, column = random_ordering(observed)
        level = net.level_index(batch.rows)[row, column]
        prefix = ordering_codes(net.W.cumsum(dim=1)[column, level], row, len(observed))
        codes = net.activation(net.c + prefix)
        scores = net.decode_pairs(codes, column)
        regular, ordinal = regular_nll(scores, level), ordinal_nll(scores, level)
        lam = self.config.ordinal_weight
        hybrid = (1.0 - lam) * regular + lam * ordinal
        cost = torch.zeros(len(observed), dtype=hybrid.dtype,
                           device=hybrid.device).index_add(0, row, hybrid)
        predicted = max(1, len(row))
        return {"loss": cost.mean(), "nll": regular.detach().sum() / predicted,
                "ordinal_nll": ordinal.detach().sum() / predicted}

    def forward_scores(self, history: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """Expected ratings ``(users, items)``: U-CF-NADE from the given rating rows, I-CF-NADE
        from the users' output units (the history is not read)."""
        if self.item_based:
            return self._item_based_scores(users)
        check_history(self.name, history, self.n_items)
        net = self.network
        codes = net.encode(net.level_index(history), history > 0)
        return net.expected_rating(net.decode(codes))

    # -- prediction ----------------------------------------------------------------------------

    def encode_rows(self, dense: torch.Tensor) -> torch.Tensor:
        return self.network.encode(self.network.level_index(dense), dense > 0)

    def _item_based_scores(self, users: torch.Tensor) -> torch.Tensor:
        """I-CF-NADE: expected ratings of every item by ``users`` (valid ids), in user chunks
        that bound the items x users x levels scores."""
        net = self.network
        codes = self._all_codes()
        step = max(1, _DECODE_BUDGET // max(1, codes.shape[0] * net.n_levels))
        parts = [net.expected_rating(net.decode_columns(codes, users[s:s + step])).T
                 for s in range(0, len(users), step)]
        return (torch.cat(parts) if parts
                else torch.zeros(0, codes.shape[0], device=codes.device))

    def covered(self, user_ok: np.ndarray, item_ok: np.ndarray) -> np.ndarray:
        # The output units of a column without training ratings were never trained; a row
        # without them (or unknown to the model) is predicted from the empty conditioning set.
        return user_ok if self.item_based else item_ok

    def predict_pairs(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Expected ratings of (row, column) pairs; row -1: a row unknown to the model, coded
        from the empty conditioning set."""
        self.network.eval()
        net = self.network
        with torch.no_grad():
            codes = self._all_codes()
            codes = torch.cat([codes, net.empty_code()])  # index -1 is the empty conditioning set
            rows_t = torch.as_tensor(rows, device=self.device)
            cols_t = torch.as_tensor(cols, device=self.device)
            parts = [net.expected_rating(net.decode_pairs(codes[rows_t[s:s + _PAIR_CHUNK]],
                                                          cols_t[s:s + _PAIR_CHUNK]))
                     for s in range(0, len(rows), _PAIR_CHUNK)]
        return torch.cat(parts).double().cpu().numpy()

    def score(self, users: np.ndarray, history: sp.csr_matrix) -> torch.Tensor:
        """Predicted ratings of every item for each user (for top-K); fallbacks as in predict."""
        self.network.eval()
        net = self.network
        safe, known_t = self.users_on_device(users)
        item_ok = net.item_count > 0
        user_mean = torch.where(known_t & (net.user_count[safe] > 0), net.user_mean[safe],
                                net.global_mean)
        with torch.no_grad():
            if self.item_based:
                user_ok = known_t & (net.user_count[safe] > 0)
                scores = self._item_based_scores(safe)
                cold_user_row = torch.where(item_ok, net.item_mean, net.global_mean)
                scores = torch.where(user_ok[:, None], scores, cold_user_row[None, :])
            else:
                scores = self.forward_scores(csr_to_dense(history, self.device), safe)
                scores = torch.where(item_ok[None, :], scores, user_mean[:, None])
            return scores.float()

    # -- persistence ---------------------------------------------------------------------------

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if "levels" in state:  # the network's shape depends on the data's level count
            self.n_levels = int(state["levels"].numel())
        super().load_state_dict(state)
