"""Conditional Mult-VAE: Mult-VAE (Liang et al., WWW 2018) whose encoder and decoder are both
conditioned on the user's side information, as in the conditional VAE of Sohn, Lee and Yan
("Learning Structured Output Representation using Deep Conditional Generative Models", NeurIPS
2015).

With c the user's feature vector (`recsys.data.features`: numbers standardised, categories
one-hot), the model is Mult-VAE's with c added to both ends:

- encoder q(z | x, c): the L2-normalised, dropped-out history x concatenated with c, a tanh MLP
  to the mean and log-variance of a Gaussian (Sohn et al.'s recognition network q(z | x, y));
- decoder p(x | z, c): [z, c] through a tanh MLP to logits over the catalogue, read as a
  multinomial (Sohn et al.'s generation network p(y | x, z) with the roles of the paper's x and y
  played here by c and the history);
- prior N(0, I), independent of c (the paper's simplification p(z | x) = p(z), which it also
  evaluates), so the loss is exactly Mult-VAE's: multinomial NLL + beta * KL(q(z | x, c) || N(0, I))
  with the same annealed beta (`recsys.models.multvae.kl_beta`, `MultVAEConfig`'s schedule).
- optional (``prior="conditional"``): Sohn et al.'s prior network p(z | c), a Gaussian whose mean
  and log-variance an MLP reads from c; the KL is then to p(z | c), and a user who brings no
  history is decoded from its mean E[z | c] (the posterior of an empty history has nothing to
  add).

Training samples z = mu + sigma * eps; scoring decodes [mu, c]. Optional (``cold_rate > 0``): each
training row's history input is blanked with that probability (the loss still reconstructs the
whole row), so the network also learns to score from c alone, the case of a user who arrives with
features and no history (the input dropout of DropoutNet, Volkovs, Yu and Poutanen, NeurIPS
2017); 0 keeps Mult-VAE's objective exactly. A user unknown to the model
(id -1, a history folded in without features) is scored with c = 0, which is the mean of every
numeric feature and no category; ``score_features`` scores users from the feature rows it is
given instead (a new user's, read by `recsys recommend --user-features` and the pyfunc model's
feature columns through `Recommender.scores_user_features`). Fitting needs user features
(`FitContext.features.user`); the matrix is kept in the network as a buffer, so a saved model,
the pyfunc model and a resumed or distributed run carry it without the dataset.

Optional (``item_features = True``): Mult-VAE's item cold-start option, the same pieces
(`recsys.models.multvae.ItemDecoder`, `FeatureItemOutput`, `MultVAE.elbo`): the decoder's last
layer builds each item's vector from its features as well as a free embedding, an item without
training interactions is scored from its features alone and left out of the training softmax,
and the item feature matrix travels with the weights beside the user features.
"""

from __future__ import annotations

from typing import Any, Literal, Self

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from recsys.data.interactions import EvalSplit, Interactions
from recsys.errors import RecsysError
from recsys.models.base import FitContext, csr_to_dense
from recsys.models.multvae import ItemDecoder, MultVAE, MultVAEConfig, kl_standard_normal
from recsys.models.neural import Batch
from recsys.models.nn import binarize, check_dims, check_history, init_like_multvae, mlp

CONDITION = "user_features"  # the network buffer (and state_dict key) holding c for every user


class CVAENetwork(ItemDecoder):
    def __init__(self, n_items: int, user_features: torch.Tensor, hidden_dims: list[int],
                 latent_dim: int, dropout: float, conditional_prior: bool = False,
                 item_features: torch.Tensor | None = None) -> None:
        super().__init__()
        n_features = user_features.shape[1]
        self.encoder = mlp([n_items + n_features, *hidden_dims, 2 * latent_dim])
        # [z, c] -> logits; with item features, Mult-VAE's feature-aware output layer.
        self.build_decoder(latent_dim + n_features, hidden_dims, n_items, item_features)
        self.dropout = nn.Dropout(dropout)
        # Sohn et al.'s prior network p(z | c) (only when asked: the default network, its
        # weights and their seeded draw stay Mult-VAE's plus the condition).
        self.prior = (mlp([n_features, hidden_dims[-1] if hidden_dims else latent_dim,
                           2 * latent_dim]) if conditional_prior else None)
        init_like_multvae(self)
        self.register_buffer(CONDITION, user_features.to(torch.float32).clone())

    def condition(self, users: torch.Tensor) -> torch.Tensor:
        """c of each user; zeros for an unknown user (-1)."""
        table = getattr(self, CONDITION)
        known = users >= 0
        c = table[users.clamp(min=0)]
        return c * known.unsqueeze(1).to(c.dtype)

    def encode(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The history is normalised and dropped out as in Mult-VAE; the condition is not: it is
        # the side information the posterior is conditioned on, not part of what is denoised.
        h = torch.cat([self.dropout(F.normalize(x, dim=-1)), c], dim=-1)
        mu, logvar = self.encoder(h).chunk(2, dim=-1)
        return mu, logvar

    def forward(self, x: torch.Tensor, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training pass: (logits, KL to the prior) with a reparameterised sample of z."""
        c = self.condition(users)
        mu, logvar = self.encode(x, c)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        if self.prior is None:
            kl = kl_standard_normal(mu, logvar)
        else:
            kl = kl_gaussians(mu, logvar, *self.prior(c).chunk(2, dim=-1))
        return self.decode(torch.cat([z, c], dim=-1)), kl

    def scores(self, x: torch.Tensor, users: torch.Tensor,
               c: torch.Tensor | None = None) -> torch.Tensor:
        """Logits from the posterior mean; ``c`` given: that condition instead of the users'.
        With the prior network, a user without history is decoded from the prior's mean
        E[z | c] (their posterior has nothing to add to it)."""
        c = self.condition(users) if c is None else c
        mu, _ = self.encode(x, c)
        if self.prior is not None:
            empty = (x.sum(dim=1, keepdim=True) == 0)
            mu = torch.where(empty, self.prior(c).chunk(2, dim=-1)[0], mu)
        return self.decode(torch.cat([mu, c], dim=-1))


def kl_gaussians(mu: torch.Tensor, logvar: torch.Tensor, prior_mu: torch.Tensor,
                 prior_logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(prior_mu, exp(prior_logvar))), diagonal, in closed form,
    per-user sum averaged (as `kl_standard_normal`, which it equals for a N(0, I) prior)."""
    ratio = (logvar - prior_logvar).exp()
    gap = (mu - prior_mu).pow(2) / prior_logvar.exp()
    return (0.5 * (ratio + gap - 1.0 - (logvar - prior_logvar))).sum(dim=-1).mean()


class CVAEConfig(MultVAEConfig):
    # The conditional posterior stays Gaussian: Mult-VAE's coupling-layer option is not offered.
    flow_layers: int = Field(0, ge=0, le=0)
    # Probability that a training row's history input is blanked (its condition kept).
    cold_rate: float = Field(0.0, ge=0.0, lt=1.0)
    # standard: p(z) = N(0, I) (Mult-VAE's KL); conditional: a prior network p(z | c) (Sohn et
    # al.'s full CVAE), whose mean scores a user who brings no history.
    prior: Literal["standard", "conditional"] = "standard"


class CVAE(MultVAE):
    """Mult-VAE conditioned on user features; ``score`` folds in any user from their history
    (and their features, for a user the model knows)."""

    name = "cvae"
    Config = CVAEConfig
    config: CVAEConfig
    cuda_graph_safe = False  # the condition is gathered by the batch's user ids
    scores_user_features = True
    tune_grid = MultVAE.tune_grid
    search_space = MultVAE.search_space

    user_features_: torch.Tensor | None = None

    def fit(self, train: Interactions, valid: EvalSplit | None = None,
            ctx: FitContext | None = None) -> Self:
        table = (ctx or FitContext()).features.user
        if table is None:
            raise RecsysError("cvae needs user features and the data has none; prepare it with "
                              "--user-features FILE (ml-100k and ml-1m bring their own)")
        if table.values.shape[0] != train.n_users:
            raise RecsysError(f"cvae: {table.values.shape[0]:,} rows of user features for "
                              f"{train.n_users:,} users; prepare the data again")
        self.user_features_ = torch.from_numpy(table.values.copy())
        return super().fit(train, valid, ctx)

    def build(self, n_users: int, n_items: int) -> None:
        c = self.config
        if self.user_features_ is None:
            raise RecsysError("cvae: no user features to build the network with (fit it on data "
                              "with user features, or load a saved model)")
        check_dims(self.name, [*c.hidden_dims, c.latent_dim], n_items, "latent_dim")
        self.n_users, self.n_items = n_users, n_items
        self.network = CVAENetwork(n_items, self.user_features_, list(c.hidden_dims),
                                   c.latent_dim, c.dropout, c.prior == "conditional",
                                   self._item_features(n_items))

    def training_step(self, batch: Batch, step: int) -> dict[str, Any]:
        x = batch.rows
        inputs = x
        if self.config.cold_rate > 0:
            kept = torch.rand(x.shape[0], 1, device=x.device) >= self.config.cold_rate
            inputs = x * kept.to(x.dtype)
        logits, kl = self.network(inputs, batch.index)
        return self.elbo(logits, kl, x, step)

    def forward_scores(self, history: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        check_history(self.name, history, self.n_items)
        return self.network.scores(binarize(history), users)

    def score_features(self, users: np.ndarray, history: sp.csr_matrix,
                       features: np.ndarray) -> torch.Tensor:
        d = getattr(self.network, CONDITION).shape[1]
        if features.ndim != 2 or features.shape != (len(users), d):
            raise RecsysError(f"cvae: user features of shape {tuple(features.shape)} for "
                              f"{len(users)} users; the model was trained on {d} feature "
                              "columns")
        self.network.eval()
        with torch.no_grad():
            dense = csr_to_dense(history, self.device)
            check_history(self.name, dense, self.n_items)
            c = torch.as_tensor(np.asarray(features, dtype=np.float32), device=self.device)
            ids = torch.as_tensor(np.asarray(users, dtype=np.int64), device=self.device)
            return self.network.scores(binarize(dense), ids, c).float()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        table = state.get(CONDITION)
        if table is None or table.ndim != 2 or table.shape[0] != self.n_users:
            raise RecsysError(f"cvae: the saved weights hold no {self.n_users}-row "
                              f"'{CONDITION}' matrix; the saved model is damaged")
        self.user_features_ = table.to(torch.float32)
        super().load_state_dict(state)
