"""AutoRec (Sedhain, Menon, Sanner & Xie, WWW 2015): an autoencoder over explicit ratings.

I-AutoRec (``based: item``, the default and the paper's best) reconstructs each item's vector of
ratings by all users; U-AutoRec (``based: user``) reconstructs each user's vector of ratings over
all items. The loss counts observed entries only (the output is masked by the sign of the input,
so ratings must be positive) plus the paper's L2 penalty ``lambda / 2 * (||W||^2 + ||V||^2)`` on
the two weight matrices. Predictions are clipped to the rating scale; where the model has nothing
to go on (a user or item without training ratings, or an id unknown to the model) it falls back to
the item mean, the user mean or the global mean, and `predict_with_fallback` says which.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Self

import numpy as np
import scipy.sparse as sp
import torch
from pydantic import Field
from torch import nn

from recsys.config import TrainConfig
from recsys.data.interactions import Interactions
from recsys.errors import RecsysError
from recsys.models.base import FitContext, csr_to_dense
from recsys.models.neural import NEURAL_SPACE, Batch, NeuralRecommender
from recsys.models.nn import ACTIVATIONS, Activation, WeightsCache

# Fallback labels, as written in `recsys predict`'s `fallback` column ("" = the model predicted).
ITEM_MEAN, USER_MEAN, GLOBAL_MEAN = "item_mean", "user_mean", "global_mean"
_PAIR_CHUNK = 1 << 16  # (row, column) pairs gathered at once: bounds a chunk x hidden buffer
_ROW_CHUNK = 4096  # rows encoded at once when the codes of every row are computed


class AutoRecConfig(TrainConfig):
    """AutoRec options; every key of the shared `TrainConfig` applies as well."""

    based: Literal["item", "user"] = "item"
    hidden: int = Field(500, ge=1)
    encoder: Activation = "sigmoid"
    decoder: Activation = "identity"
    # The paper's lambda: loss += lambda / 2 * (||W_enc||^2 + ||W_dec||^2) over a full pass
    # (each batch carries its share of it). Kept apart from the optimiser's weight_decay.
    l2_lambda: float = Field(100.0, ge=0)
    # Defaults chosen on validation data carved from ml-100k's u1.base (configs/autorec.yaml):
    # large batches (the paper optimised full-batch) with a larger Adam step than usual.
    epochs: int = Field(1000, ge=1)
    batch_size: int = Field(2048, ge=1)
    lr: float = Field(0.01, gt=0)
    metric: str = "rmse"
    patience: int | None = Field(50, ge=1)
    checkpoint_every: int = Field(10, ge=1)


class AutoRecNet(nn.Module):
    """Encoder/decoder over rows of length ``n_columns`` plus the data statistics (buffers)."""

    def __init__(self, n_columns: int, hidden: int, encoder: str, decoder: str,
                 n_users: int, n_items: int) -> None:
        super().__init__()
        self.encoder = nn.Linear(n_columns, hidden)
        self.decoder = nn.Linear(hidden, n_columns)
        self.encoder_activation = ACTIVATIONS[encoder]()
        self.decoder_activation = ACTIVATIONS[decoder]()
        self.register_buffer("scale", torch.tensor([1.0, 5.0]))
        self.register_buffer("global_mean", torch.tensor(3.0))
        self.register_buffer("user_mean", torch.zeros(n_users))
        self.register_buffer("item_mean", torch.zeros(n_items))
        self.register_buffer("user_count", torch.zeros(n_users))
        self.register_buffer("item_count", torch.zeros(n_items))

    def encode(self, rows: torch.Tensor) -> torch.Tensor:
        return self.encoder_activation(self.encoder(rows))

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.decoder_activation(self.decoder(self.encode(rows)))

    def decode_pairs(self, codes: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        """Output unit ``columns[j]`` for code ``codes[j]`` (no full output row is built)."""
        weight, bias = self.decoder.weight[columns], self.decoder.bias[columns]
        return self.decoder_activation((codes * weight).sum(-1) + bias)

    def decode_columns(self, codes: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        """Output units ``columns`` for every code: ``(len(codes), len(columns))``."""
        weight, bias = self.decoder.weight[columns], self.decoder.bias[columns]
        return self.decoder_activation(codes @ weight.T + bias)


class AutoRec(NeuralRecommender):
    """I-AutoRec / U-AutoRec rating prediction (explicit feedback)."""

    name: ClassVar[str] = "autorec"
    Config: ClassVar[type[TrainConfig]] = AutoRecConfig
    # What --tune searches: the grid, and the Optuna study's space (`recsys.models.tuning`).
    tune_grid = {"l2_lambda": [30.0, 100.0, 300.0], "hidden": [300, 500]}
    search_space = {
        **NEURAL_SPACE,
        "l2_lambda": {"low": 1.0, "high": 1000.0, "log": True},
        "hidden": {"low": 100, "high": 1000, "step": 100},
    }
    family: ClassVar[str] = "autoencoder"
    explicit: ClassVar[bool] = True
    loss_reduction: ClassVar[str] = "sum"  # squared error summed over observed entries

    network: AutoRecNet

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.ratings: sp.csr_matrix | None = None  # users x items training ratings
        self._codes: WeightsCache[torch.Tensor] = WeightsCache()

    @property
    def item_based(self) -> bool:
        return self.config.based == "item"

    # -- the engine's contract -----------------------------------------------------------------

    def build(self, n_users: int, n_items: int) -> None:
        cfg = self.config
        self.network = AutoRecNet(n_users if self.item_based else n_items, cfg.hidden,
                                  cfg.encoder, cfg.decoder, n_users, n_items)
        self._codes.clear()

    def setup(self, train: Interactions, ctx: FitContext) -> None:
        meta = ctx.data_meta
        matrix = train.matrix.tocsr().astype(np.float32)
        if meta.get("implicit"):
            raise RecsysError("autorec predicts explicit ratings, but the prepared data is "
                              "implicit (no rating column); prepare ratings with a rating "
                              "column, or use an implicit model (multvae, ease, als)")
        if matrix.nnz == 0:
            raise RecsysError("autorec: the training data has no ratings")
        observed = (float(matrix.data.min()), float(matrix.data.max()))
        scale = meta.get("rating_scale")
        lo, hi = (float(scale[0]), float(scale[1])) if scale else observed
        if lo == hi:
            raise RecsysError(f"autorec: every training rating is {lo:g}: this looks like "
                              "implicit feedback; AutoRec needs graded explicit ratings")
        if lo <= 0:
            raise RecsysError(f"autorec: the rating scale [{lo:g}, {hi:g}] reaches 0 or below, "
                              "but AutoRec treats 0 as 'not rated' (its loss masks by the sign "
                              "of the input); shift the ratings to be positive")
        outside = (matrix.data < lo) | (matrix.data > hi)
        if outside.any():
            raise RecsysError(f"autorec: {int(outside.sum())} training ratings lie outside the "
                              f"declared rating scale [{lo:g}, {hi:g}] (e.g. "
                              f"{matrix.data[outside][0]:g}); fix the ratings or the dataset's "
                              "rating_scale")
        net = self.network
        users_n = np.diff(matrix.indptr).astype(np.float64)
        items_n = np.bincount(matrix.indices, minlength=matrix.shape[1]).astype(np.float64)
        user_sum = np.asarray(matrix.sum(axis=1), dtype=np.float64).ravel()
        item_sum = np.asarray(matrix.sum(axis=0), dtype=np.float64).ravel()
        global_mean = float(matrix.data.mean())
        with np.errstate(invalid="ignore", divide="ignore"):
            user_mean = np.where(users_n > 0, user_sum / users_n, global_mean)
            item_mean = np.where(items_n > 0, item_sum / items_n, global_mean)
        net.scale.copy_(torch.tensor([lo, hi]))
        net.global_mean.fill_(global_mean)
        net.user_mean.copy_(torch.from_numpy(user_mean))
        net.item_mean.copy_(torch.from_numpy(item_mean))
        net.user_count.copy_(torch.from_numpy(users_n))
        net.item_count.copy_(torch.from_numpy(items_n))
        self.ratings = matrix
        # Each batch carries (its rows / all rows) of the penalty, so an epoch adds it once.
        self._n_rows = int(np.count_nonzero(items_n if self.item_based else users_n))

    def training_matrix(self, train: Interactions) -> sp.csr_matrix:
        return train.matrix.T.tocsr() if self.item_based else train.matrix

    def training_step(self, batch: Batch, step: int) -> dict[str, Any]:
        inputs = batch.rows
        outputs = self.network(inputs)
        criterion = nn.MSELoss(reduction="sum")
        # Unobserved entries are 0 in the input; masking the output by the input's sign makes
        # them contribute nothing (the paper's "observed entries only").
        squared_error = criterion(outputs * torch.sign(inputs), inputs)
        net = self.network
        penalty = net.encoder.weight.pow(2).sum() + net.decoder.weight.pow(2).sum()
        share = len(batch.index) / max(self._n_rows, 1)
        loss = squared_error + self.config.l2_lambda / 2 * penalty * share
        observed = torch.count_nonzero(inputs).clamp(min=1)
        return {"loss": loss, "train_rmse": torch.sqrt(squared_error.detach() / observed)}

    def forward_scores(self, history: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """U-AutoRec: predicted ratings from the users' rating rows (fold-in for free)."""
        return self._clip(self.network(history))

    # -- prediction ----------------------------------------------------------------------------

    def to(self, device: torch.device | str) -> Self:
        super().to(device)
        self._codes.clear()
        return self

    def _clip(self, values: torch.Tensor) -> torch.Tensor:
        return torch.clamp(values.float(), self.network.scale[0], self.network.scale[1])

    def _input_rows(self) -> sp.csr_matrix:
        if self.ratings is None:
            raise RecsysError("autorec: the model has not been fitted")
        return self.ratings.T.tocsr() if self.item_based else self.ratings

    def _all_codes(self) -> torch.Tensor:
        """Hidden codes of every training row (items for I-AutoRec), cached until the weights
        change (`WeightsCache`: a validation pass during training and the final model never see
        stale codes)."""

        def encode_all() -> torch.Tensor:
            rows = self._input_rows()
            with torch.no_grad():
                chunks = [self.network.encode(csr_to_dense(rows[s:s + _ROW_CHUNK], self.device))
                          for s in range(0, rows.shape[0], _ROW_CHUNK)]
            return torch.cat(chunks).float()

        return self._codes.get(self.network, self.device, encode_all)

    def predict_with_fallback(self, users: np.ndarray, items: np.ndarray
                              ) -> tuple[np.ndarray, np.ndarray]:
        """Predicted ratings of (user, item) pairs (internal ids, -1 = unknown) and, per pair,
        the fallback used: '' (the model), 'item_mean', 'user_mean' or 'global_mean'."""
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        if users.shape != items.shape:
            raise ValueError("users and items must have the same length")
        net = self.network
        user_count = net.user_count.cpu().numpy()
        item_count = net.item_count.cpu().numpy()
        user_known = (users >= 0) & (users < self.n_users)
        item_known = (items >= 0) & (items < self.n_items)
        user_ok = user_known & (user_count[np.where(user_known, users, 0)] > 0)
        item_ok = item_known & (item_count[np.where(item_known, items, 0)] > 0)
        model_ok = user_ok & item_ok

        out = np.full(len(users), float(net.global_mean), dtype=np.float64)
        reason = np.full(len(users), GLOBAL_MEAN, dtype=object)
        only_item = item_ok & ~user_ok
        out[only_item] = net.item_mean.cpu().numpy()[items[only_item]]
        reason[only_item] = ITEM_MEAN
        only_user = user_ok & ~item_ok
        out[only_user] = net.user_mean.cpu().numpy()[users[only_user]]
        reason[only_user] = USER_MEAN
        reason[model_ok] = ""
        if model_ok.any():
            rows, cols = ((items, users) if self.item_based else (users, items))
            out[model_ok] = self._predict_pairs(rows[model_ok], cols[model_ok])
        lo, hi = (float(x) for x in net.scale)
        return np.clip(out, lo, hi), reason

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return self.predict_with_fallback(users, items)[0]

    def _predict_pairs(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        self.network.eval()
        codes = self._all_codes()
        rows_t = torch.as_tensor(rows, device=self.device)
        cols_t = torch.as_tensor(cols, device=self.device)
        with torch.no_grad():
            parts = [self.network.decode_pairs(codes[rows_t[s:s + _PAIR_CHUNK]],
                                               cols_t[s:s + _PAIR_CHUNK])
                     for s in range(0, len(rows), _PAIR_CHUNK)]
        return torch.cat(parts).double().cpu().numpy()

    def score(self, users: np.ndarray, history: sp.csr_matrix) -> torch.Tensor:
        """Predicted ratings of every item for each user (for top-K); fallbacks as in predict.

        I-AutoRec is transductive, as in the paper: an item's input is its training ratings by
        all users, so a user's scores come from that user's decoder units and ``history`` is not
        read (a user without training ratings gets the item means). U-AutoRec encodes
        ``history`` itself, so new users are folded in.
        """
        self.network.eval()
        net = self.network
        users = np.asarray(users, dtype=np.int64)
        known = (users >= 0) & (users < self.n_users)
        safe = torch.as_tensor(np.where(known, users, 0), device=self.device)
        known_t = torch.as_tensor(known, device=self.device)
        item_ok = net.item_count > 0
        with torch.no_grad():
            if self.item_based:
                user_ok = known_t & (net.user_count[safe] > 0)
                scores = net.decode_columns(self._all_codes(), safe).T  # (users, items)
            else:
                dense = csr_to_dense(history, self.device)
                user_ok = dense.gt(0).any(1)
                scores = net(dense)
            # Where the model has nothing to go on: the item mean for a cold user, the user's
            # mean for a cold item, the global mean for both.
            user_mean = torch.where(known_t, net.user_mean[safe], net.global_mean)
            fallback_cold_item = torch.where(user_ok, user_mean, net.global_mean)
            cold_user_row = torch.where(item_ok, net.item_mean, net.global_mean)
            scores = torch.where(item_ok[None, :], scores, fallback_cold_item[:, None])
            scores = torch.where(user_ok[:, None], scores, cold_user_row[None, :])
            return self._clip(scores)

    # -- persistence: the training ratings travel with the weights -----------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = dict(self.network.state_dict())
        if self.ratings is not None:
            m = self.ratings
            state["ratings.indptr"] = torch.from_numpy(m.indptr.astype(np.int64))
            state["ratings.indices"] = torch.from_numpy(m.indices.astype(np.int64))
            state["ratings.data"] = torch.from_numpy(m.data.astype(np.float32))
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        state = dict(state)
        parts = [state.pop(f"ratings.{k}", None) for k in ("indptr", "indices", "data")]
        super().load_state_dict(state)
        if all(p is not None for p in parts):
            indptr, indices, data = (p.numpy() for p in parts)
            self.ratings = sp.csr_matrix((data, indices, indptr),
                                         shape=(self.n_users, self.n_items))
