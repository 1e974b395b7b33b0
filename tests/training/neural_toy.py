"""A tiny neural recommender for exercising the training engine (not registered)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from pydantic import Field

from recsys.config import TrainConfig
from recsys.data.interactions import EvalSplit, Interactions, Vocabulary
from recsys.models.neural import Batch, NeuralRecommender


class ToyConfig(TrainConfig):
    hidden: int = Field(8, ge=1)
    dropout: float = 0.3
    nan_at_step: int | None = None  # make the loss NaN from this global step on


class ToyAE(NeuralRecommender):
    """A one-hidden-layer autoencoder with input dropout (so steps consume RNG)."""

    name: ClassVar[str] = "toy"
    Config: ClassVar[type[TrainConfig]] = ToyConfig

    def build(self, n_users: int, n_items: int) -> None:
        cfg = self.config
        self.network = torch.nn.Sequential(
            torch.nn.Dropout(cfg.dropout), torch.nn.Linear(n_items, cfg.hidden), torch.nn.Tanh(),
            torch.nn.Linear(cfg.hidden, n_items))

    def training_step(self, batch: Batch, step: int) -> dict[str, Any]:
        logits = self.network(batch.rows)
        loss = -(torch.log_softmax(logits, 1) * batch.rows).sum(1).mean()
        if self.config.nan_at_step is not None and step >= self.config.nan_at_step:
            loss = loss * float("nan")
        return {"loss": loss, "half": loss.detach() / 2}

    def forward_scores(self, history: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        return self.network(history)


class ToyGAN(NeuralRecommender):
    """Two optimisers stepped by the model itself (manual optimisation)."""

    name: ClassVar[str] = "toygan"
    Config: ClassVar[type[TrainConfig]] = ToyConfig
    manual_optimization: ClassVar[bool] = True

    def build(self, n_users: int, n_items: int) -> None:
        self.network = torch.nn.ModuleDict({
            "g": torch.nn.Linear(n_items, n_items), "d": torch.nn.Linear(n_items, 1)})

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        self.opt_g = torch.optim.Adam(self.network["g"].parameters(), lr=self.config.lr)
        self.opt_d = torch.optim.Adam(self.network["d"].parameters(), lr=self.config.lr)
        return [self.opt_g, self.opt_d]

    def training_step(self, batch: Batch, step: int) -> dict[str, Any]:
        fake = torch.sigmoid(self.network["g"](batch.rows + torch.randn_like(batch.rows)))
        d_loss = (torch.nn.functional.softplus(-self.network["d"](batch.rows))
                  + torch.nn.functional.softplus(self.network["d"](fake.detach()))).mean()
        self.opt_d.zero_grad()
        d_loss.backward()
        self.opt_d.step()
        g_loss = torch.nn.functional.softplus(-self.network["d"](fake)).mean()
        self.opt_g.zero_grad()
        g_loss.backward()
        self.opt_g.step()
        return {"loss": (g_loss + d_loss).detach(), "g": g_loss.detach(), "d": d_loss.detach()}

    def forward_scores(self, history: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        return self.network["g"](history)


def toy_data(n_users: int = 40, n_items: int = 25, seed: int = 0
             ) -> tuple[Interactions, EvalSplit]:
    """Random implicit data with a held-out interaction per user."""
    rng = np.random.default_rng(seed)
    dense = (rng.random((n_users, n_items)) < 0.3).astype(np.float32)
    dense[:, 0] = 1.0  # every user has something
    target = np.zeros_like(dense)
    for_target = rng.integers(1, n_items, size=n_users)
    target[np.arange(n_users), for_target] = 1.0
    dense[target > 0] = 0.0
    users, items = Vocabulary(np.arange(n_users)), Vocabulary(np.arange(n_items))
    frame = pd.DataFrame({"user": np.nonzero(dense)[0], "item": np.nonzero(dense)[1]})
    train = Interactions.from_frame(frame, users, items)
    valid = EvalSplit(train.matrix, sp.csr_matrix(target), np.arange(n_users))
    return train, valid


def holdout_loss(model: NeuralRecommender, valid: EvalSplit) -> float:
    """A deterministic validation value (lower is better): multinomial loss on the targets."""
    scores = model.score(valid.users, valid.history[valid.users])
    target = torch.as_tensor(valid.target[valid.users].toarray(), device=scores.device)
    return float(-(torch.log_softmax(scores, 1) * target).sum(1).mean())
