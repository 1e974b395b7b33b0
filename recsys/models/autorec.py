"""AutoRec (Sedhain, Menon, Sanner & Xie, WWW 2015): an autoencoder over explicit ratings.

I-AutoRec (``based: item``, the default and the paper's best) reconstructs each item's vector of
ratings by all users; U-AutoRec (``based: user``) reconstructs each user's vector of ratings over
all items. The loss counts observed entries only (the output is masked by the sign of the input,
so ratings must be positive) plus the paper's L2 penalty ``lambda / 2 * (||W||^2 + ||V||^2)`` on
the two weight matrices. Predictions are clipped to the rating scale; where the model has nothing
to go on (a user or item without training ratings, or an id unknown to the model) it falls back to
the item mean, the user mean or the global mean, and `predict_with_fallback` says which.

Two options of the autoencoder family, both off by default (the paper's model):

- ``stacked_dims``: a stacked autoencoder. The encoder goes on from ``hidden`` through these
  widths and the decoder mirrors it (``hidden: 500, stacked_dims: [250]`` is
  n -> 500 -> 250 -> 500 -> n, ``encoder`` activations between the layers, ``decoder`` on the
  output); the L2 penalty covers every weight matrix. ``[]`` keeps the one-layer network and its
  saved weights' keys.
- ``contractive``: a contractive autoencoder's penalty (Rifai et al., ICML 2011),
  ``contractive * ||J||_F^2`` summed over the batch's rows, J the Jacobian of the encoder with
  respect to its input row (`recsys.models.nn.contractive_encode`: the closed form per layer).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import scipy.sparse as sp
import torch
from pydantic import Field
from torch import nn

from recsys.config import TrainConfig
from recsys.data.interactions import Interactions
from recsys.models.base import FitContext, csr_to_dense
from recsys.models.explicit import ExplicitRecommender, register_rating_means
from recsys.models.neural import NEURAL_SPACE, Batch
from recsys.models.nn import (
    ACTIVATIONS,
    Activation,
    PositiveInt,
    contractive_encode,
    l2_penalty,
)

_PAIR_CHUNK = 1 << 16  # (row, column) pairs gathered at once: bounds a chunk x hidden buffer


class AutoRecConfig(TrainConfig):
    """AutoRec options; every key of the shared `TrainConfig` applies as well."""

    based: Literal["item", "user"] = "item"
    hidden: int = Field(500, ge=1)
    encoder: Activation = "sigmoid"
    decoder: Activation = "identity"
    # The paper's lambda: loss += lambda / 2 * (||W_enc||^2 + ||W_dec||^2) over a full pass
    # (each batch carries its share of it). Kept apart from the optimiser's weight_decay.
    l2_lambda: float = Field(100.0, ge=0)
    # The stacked autoencoder: encoder widths after `hidden`, mirrored by the decoder; [] is the
    # paper's one hidden layer.
    stacked_dims: list[PositiveInt] = []  # pydantic copies mutable defaults
    # Weight of the contractive penalty ||J_encoder(x)||_F^2 (summed over rows); 0 is off.
    contractive: float = Field(0.0, ge=0)
    # Defaults chosen on validation data carved from ml-100k's u1.base (configs/autorec.yaml):
    # large batches (the paper optimised full-batch) with a larger Adam step than usual.
    epochs: int = Field(1000, ge=1)
    batch_size: int = Field(2048, ge=1)
    lr: float = Field(0.01, gt=0)
    metric: str = "rmse"
    patience: int | None = Field(50, ge=1)
    checkpoint_every: int = Field(10, ge=1)


class AutoRecNet(nn.Module):
    """Encoder/decoder over rows of length ``n_columns`` plus the data statistics (buffers).

    ``encoder`` and ``decoder`` are the outer layers (the paper's W and V, under the keys of
    saved one-layer models); a stacked network keeps the layers between them in ``inner`` (the
    rest of the encoder, then the decoder's mirror). The code the decoder's output units read
    (`encode`) is the input of ``decoder``.
    """

    def __init__(self, n_columns: int, hidden: int, encoder: str, decoder: str,
                 n_users: int, n_items: int, stacked_dims: list[int] | None = None) -> None:
        super().__init__()
        widths = [hidden, *(stacked_dims or [])]
        self.encoder = nn.Linear(n_columns, hidden)
        self.decoder = nn.Linear(hidden, n_columns)
        pairs = list(zip(widths[:-1], widths[1:], strict=True))
        self.inner = nn.ModuleList([nn.Linear(a, b) for a, b in pairs]
                                   + [nn.Linear(b, a) for a, b in reversed(pairs)])
        self.activation_name = encoder
        self.encoder_activation = ACTIVATIONS[encoder]()
        self.decoder_activation = ACTIVATIONS[decoder]()
        self.register_buffer("scale", torch.tensor([1.0, 5.0]))
        register_rating_means(self, n_users, n_items)

    def encoder_layers(self) -> list[tuple[nn.Linear, str]]:
        """The encoder's linear layers with their activation (the first half of ``inner``)."""
        half = len(self.inner) // 2
        return [(m, self.activation_name) for m in [self.encoder, *self.inner[:half]]]

    def weights(self) -> list[nn.Linear]:
        return [self.encoder, *self.inner, self.decoder]

    def encode(self, rows: torch.Tensor) -> torch.Tensor:
        """The decoder's input for ``rows`` (the code itself in the one-layer network)."""
        return self.unstack(self.encoder_activation(self.encoder(rows)), first=0)

    def unstack(self, h: torch.Tensor, first: int) -> torch.Tensor:
        """``h`` through the layers of ``inner`` from index ``first`` on."""
        for m in self.inner[first:]:
            h = self.encoder_activation(m(h))
        return h

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.decoder_activation(self.decoder(self.encode(rows)))

    def forward_contractive(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The output rows and each row's contractive penalty (`contractive_encode`)."""
        code, penalty = contractive_encode(self.encoder_layers(), rows)
        hidden = self.unstack(code, first=len(self.inner) // 2)
        return self.decoder_activation(self.decoder(hidden)), penalty

    def decode_pairs(self, codes: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        """Output unit ``columns[j]`` for code ``codes[j]`` (no full output row is built)."""
        weight, bias = self.decoder.weight[columns], self.decoder.bias[columns]
        return self.decoder_activation((codes * weight).sum(-1) + bias)

    def decode_columns(self, codes: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        """Output units ``columns`` for every code: ``(len(codes), len(columns))``."""
        weight, bias = self.decoder.weight[columns], self.decoder.bias[columns]
        return self.decoder_activation(codes @ weight.T + bias)


class AutoRec(ExplicitRecommender):
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
    loss_reduction: ClassVar[str] = "sum"  # squared error summed over observed entries
    title: ClassVar[str] = "AutoRec"
    zero_reason: ClassVar[str] = ("AutoRec treats 0 as 'not rated' (its loss masks by the sign "
                                  "of the input)")

    network: AutoRecNet

    # -- the engine's contract -----------------------------------------------------------------

    def network_for(self, n_columns: int, n_users: int, n_items: int) -> AutoRecNet:
        cfg = self.config
        return AutoRecNet(n_columns, cfg.hidden, cfg.encoder, cfg.decoder, n_users, n_items,
                          list(cfg.stacked_dims))

    def setup(self, train: Interactions, ctx: FitContext) -> None:
        matrix, lo, hi = self.checked_ratings(train, ctx.data_meta)
        self.network.scale.copy_(torch.tensor([lo, hi]))
        self.keep_ratings(matrix)
        users_n, items_n = self.network.user_count, self.network.item_count
        # Each batch carries (its rows / all rows) of the penalty, so an epoch adds it once.
        self._n_rows = int(torch.count_nonzero(items_n if self.item_based else users_n))

    def training_step(self, batch: Batch, step: int) -> dict[str, Any]:
        inputs = batch.rows
        cfg, net = self.config, self.network
        if cfg.contractive > 0:
            outputs, rows_penalty = net.forward_contractive(inputs)
        else:
            outputs = net(inputs)
        criterion = nn.MSELoss(reduction="sum")
        # Unobserved entries are 0 in the input; masking the output by the input's sign makes
        # them contribute nothing (the paper's "observed entries only").
        squared_error = criterion(outputs * torch.sign(inputs), inputs)
        share = len(batch.index) / max(self._n_rows, 1)
        loss = squared_error + cfg.l2_lambda / 2 * l2_penalty(net.weights()) * share
        observed = torch.count_nonzero(inputs).clamp(min=1)
        parts = {"train_rmse": torch.sqrt(squared_error.detach() / observed)}
        if cfg.contractive > 0:
            # Summed over the rows, as the squared error is (loss_reduction "sum").
            contraction = cfg.contractive * rows_penalty.sum()
            loss = loss + contraction
            parts["contractive"] = contraction.detach()
        return {"loss": loss, **parts}

    def forward_scores(self, history: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """U-AutoRec: predicted ratings from the users' rating rows (fold-in for free)."""
        return self._clip(self.network(history))

    # -- prediction ----------------------------------------------------------------------------

    def _clip(self, values: torch.Tensor) -> torch.Tensor:
        return torch.clamp(values.float(), self.network.scale[0], self.network.scale[1])

    def encode_rows(self, dense: torch.Tensor) -> torch.Tensor:
        return self.network.encode(dense)

    def predict_with_fallback(self, users: np.ndarray, items: np.ndarray
                              ) -> tuple[np.ndarray, np.ndarray]:
        """As `ExplicitRecommender.predict_with_fallback`, clipped to the rating scale."""
        out, reason = super().predict_with_fallback(users, items)
        lo, hi = (float(x) for x in self.network.scale)
        return np.clip(out, lo, hi), reason

    def predict_pairs(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
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
        safe, known_t = self.users_on_device(users)
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
