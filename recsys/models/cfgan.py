"""CFGAN (Chae, Kang, Kim, Lee: "CFGAN: A Generic Collaborative Filtering Framework based on
Generative Adversarial Networks", CIKM 2018).

A conditional GAN over purchase vectors. The generator G maps a condition c (a row's real 0/1
purchase vector, optionally with noise) to a real-valued vector over the columns; the
discriminator D reads (condition, vector) and outputs a real/generated logit. The paper's key
trick is *vector-wise* training with masking: D never sees G's raw output but ``G(c) * e``, where
e is the row's purchase indicator, so G cannot win by pushing every entry to 1 ... nor is it told
anything about the unobserved ones. Two negative-sampling schemes fix that:

- PM (partial masking): the mask becomes ``e + k`` with k a sample of ``pm_ratio`` percent of the
  row's unobserved positions; D then sees G's values there next to the real zeros.
- ZR (zero reconstruction): G's loss gains ``zr_coefficient * sum_{j in ZR} G(c)_j ** 2`` over a
  separate sample of ``zr_ratio`` percent of the unobserved positions (pulled towards 0).

``based: item`` (the paper's best on ML-100K) makes rows items and columns users: an item's
condition is its vector of buyers. ``based: user`` makes rows users. Losses follow the authors'
code: D minimises binary cross-entropy on real (1) and masked generated (0) vectors, G the
non-saturating ``-log D(G(c) * mask | c)``; both may add an L2 penalty ``reg / 2 * ||theta||^2``
(weights and biases). Negatives are drawn once per row and step and shared by the D and G updates
of that step (the authors draw them once per epoch: each row is in one batch per epoch, the
same thing).

One engine step is one round on a batch of ``batch_size`` rows (the D batch): ``d_steps``
updates of D on the whole batch, then ``g_steps`` passes of G over it in random chunks of
``g_batch_size`` rows. An engine epoch is thus ``d_steps`` passes of D and ``g_steps`` of G over
the data, i.e. one of the authors' outer iterations (their "epochs" count G passes).

Scoring. A user-based G scores any user from their history (fold-in for free; the noise input,
if any, is set to its mean 0). An item-based G is transductive, as in the paper: a user's scores
are G's output units for that user over every item's condition (its buyers). The batch history
passed to ``score`` cannot usefully change them: a user's own new purchases only touch the
entries of those very items, which are masked before ranking; what helps is *other* users' new
purchases. So the conditions are the training interactions plus whatever `observe` declared
known for all users at once (the evaluation harness passes the history of the part it scores:
train + valid for the test part, as every other model folds them in), never a function of who
shares the batch. Hidden codes of all items are cached (until the weights or the known
interactions change) and a batch of users costs one ``items x hidden x users`` product; memory
grows with items x hidden plus G's users x hidden output layer. A user the model has no training
data for (id ``-1``, or a known user without training interactions) gets a popularity-like list:
G's output for the average trained user (the mean of their output weights).

Training logs ``g_loss``, ``d_loss`` (``loss``, their sum, is what the engine's NaN guard reads),
their parts, D's mean probabilities on real and generated vectors, ``g_std`` (the spread of G's
output across the rows of a batch) and ``collapsed`` (the share of steps where D's loss fell below
``collapse_d_loss`` or ``g_std`` below ``collapse_std``). A collapsed epoch is reported once as a
`CollapseWarning`; the epochs are kept in ``collapse_epochs_``. Epochs are selected on the
validation part by the engine (``metric``, default ndcg@20), never on the test part (the authors'
script picked the best test epoch).
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any, ClassVar, Literal

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from recsys.config import TrainConfig
from recsys.data.interactions import EvalSplit, Interactions
from recsys.errors import RecsysError
from recsys.models.base import FitContext, csr_to_dense
from recsys.models.neural import Batch, NeuralRecommender
from recsys.models.nn import (
    WeightsCache,
    binarize,
    build_optimizer,
    check_history,
    init_like_cfgan,
    mlp,
    weights_must_match,
)

Scheme = Literal["zr", "pm", "zr+pm", "none"]
_ROW_CHUNK = 4096  # rows (items) encoded at once when the codes of every item are computed


class CollapseWarning(UserWarning):
    """GAN training collapsed: D wins outright, or G's output no longer depends on its input."""


class CFGANConfig(TrainConfig):
    """CFGAN options (every key of the shared `TrainConfig` applies too).

    Defaults are the values ml-100k's validation part chose (configs/cfgan.yaml), departing from
    the authors' ML-100K setting where validation said so (the authors' value in parentheses
    below): item-based, one hidden layer each (G 800 units (400), D 250 (125), sigmoid), G's
    output linear, scheme ZR+PM with both ratios 90 (70; percent of each row's unobserved
    entries), ZR coefficient 0.03, L2 0.01 (0.001) on G and none on D, Adam lr 3e-4 (1e-4) for
    both, G scored with a moving average of its weights (0.9998; the authors: last iterate),
    batches of 32 rows for G and 64 for D, 4 G passes and 2 D passes per epoch.

    ``noise_dim``: width of a standard-normal noise input appended to G's condition (0 = none,
    as in the authors' code). Without noise, and with the real purchase vector as the condition,
    G is a deterministic function of the very vector it must reproduce: CFGAN then behaves as an
    autoencoder trained by an adversarial loss (Pérez Maurera et al., ECIR 2022). With noise,
    training draws fresh noise for every forward pass and scoring uses its mean (zeros), so
    scores stay deterministic.
    """

    based: Literal["item", "user"] = "item"
    scheme: Scheme = "zr+pm"
    zr_ratio: float = Field(90.0, ge=0)
    pm_ratio: float = Field(90.0, ge=0)
    zr_coefficient: float = Field(0.03, ge=0)
    g_hidden: int = Field(800, ge=1)
    d_hidden: int = Field(250, ge=1)
    g_layers: int = Field(1, ge=1)
    d_layers: int = Field(1, ge=1)
    activation: Literal["sigmoid", "tanh", "relu"] = "sigmoid"
    g_output: Literal["identity", "sigmoid"] = "identity"
    noise_dim: int = Field(0, ge=0)
    g_reg: float = Field(0.01, ge=0)
    d_reg: float = Field(0.0, ge=0)
    d_lr: float | None = Field(None, gt=0)  # None: the same as lr
    # > 0: score with an exponential moving average of G's weights (updated after every G step
    # with this decay) rather than the last iterate; averaging smooths the GAN's oscillations.
    g_ema: float = Field(0.9998, ge=0, lt=1)
    g_batch_size: int = Field(32, ge=1)  # rows per G update (batch_size is D's)
    g_steps: int = Field(4, ge=1)
    d_steps: int = Field(2, ge=1)
    collapse_d_loss: float = Field(1e-3, ge=0)
    collapse_std: float = Field(1e-4, ge=0)
    # The shared engine's keys, with CFGAN's defaults.
    lr: float = Field(3e-4, gt=0)
    batch_size: int = Field(64, ge=1)
    epochs: int = Field(250, ge=1)
    metric: str = "ndcg@20"
    patience: int | None = Field(25, ge=1)
    checkpoint_every: int = Field(10, ge=1)

    @field_validator("zr_ratio", "pm_ratio")
    @classmethod
    def _percent(cls, value: float) -> float:
        if value > 100:
            raise ValueError("the ratio is a percentage of each row's unobserved entries; above "
                             "100 it asks for more items than exist (use 0..100)")
        return value


# -- pieces (plain functions) ----------------------------------------------------------------


def sample_unobserved(observed: torch.Tensor, percent: float) -> torch.Tensor:
    """Boolean mask of ``floor(n_unobserved * percent / 100)`` unobserved positions per row,
    drawn uniformly without replacement (torch's global RNG), all rows at once."""
    n_unobserved = (~observed).sum(dim=1)
    count = torch.floor(n_unobserved.double() * (percent / 100.0) + 1e-9).long()
    keys = torch.rand(observed.shape, device=observed.device).masked_fill(observed, 2.0)
    # Rank of every entry within its row by its random key: observed entries (key 2) come last,
    # so the `count` smallest ranks are a uniform sample of the unobserved ones.
    order = keys.argsort(dim=1)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(observed.shape[1], device=observed.device)
                   .expand_as(order).contiguous())
    return ranks < count[:, None]


def half_squared_norm(module: nn.Module) -> torch.Tensor:
    """``sum(theta ** 2) / 2`` over every parameter (TensorFlow's l2_loss, as the authors used)."""
    return sum(p.pow(2).sum() for p in module.parameters()) / 2  # type: ignore[return-value]


def collapse_reason(record: dict[str, Any], d_floor: float, std_floor: float) -> str | None:
    """Why an epoch's means (``d_adv``, ``g_std``) look collapsed, or ``None``."""
    d_adv, g_std = record.get("d_adv"), record.get("g_std")
    if d_adv is not None and math.isfinite(d_adv) and d_adv < d_floor:
        return (f"the discriminator's loss is {d_adv:.2g} (< {d_floor:g}): it separates real "
                "from generated vectors outright and G gets no useful signal")
    if g_std is not None and math.isfinite(g_std) and g_std < std_floor:
        return (f"the generator's output varies by {g_std:.2g} (< {std_floor:g}) across rows: "
                "it ignores its condition")
    return None


# -- the networks ------------------------------------------------------------------------------


class Generator(nn.Module):
    """c (+ noise) -> hidden layers -> a real-valued vector over the ``n_columns``."""

    def __init__(self, n_columns: int, hidden: int, layers: int, activation: str, output: str,
                 noise_dim: int) -> None:
        super().__init__()
        self.noise_dim = noise_dim
        self.body = mlp([n_columns + noise_dim] + [hidden] * layers, activation,
                        last_activation=True)
        self.out = nn.Linear(hidden, n_columns)
        self.output = output
        init_like_cfgan(self)

    def encode(self, condition: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        if self.noise_dim:
            if noise is None:  # scoring: the noise's mean
                noise = condition.new_zeros(condition.shape[0], self.noise_dim)
            condition = torch.cat([condition, noise], dim=1)
        return self.body(condition)

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(pre) if self.output == "sigmoid" else pre

    def forward(self, condition: torch.Tensor, noise: torch.Tensor | None = None
                ) -> torch.Tensor:
        return self.activate(self.out(self.encode(condition, noise)))


class Discriminator(nn.Module):
    """(vector, condition) -> the logit that the vector is a real purchase vector for c."""

    def __init__(self, n_columns: int, hidden: int, layers: int, activation: str) -> None:
        super().__init__()
        self.body = mlp([2 * n_columns] + [hidden] * layers, activation, last_activation=True)
        self.out = nn.Linear(hidden, 1)
        init_like_cfgan(self)

    def forward(self, vector: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(torch.cat([condition, vector], dim=1))).squeeze(1)


class CFGANNetwork(nn.Module):
    def __init__(self, n_columns: int, config: CFGANConfig) -> None:
        super().__init__()
        c = config
        self.generator = Generator(n_columns, c.g_hidden, c.g_layers, c.activation, c.g_output,
                                   c.noise_dim)
        self.discriminator = Discriminator(n_columns, c.d_hidden, c.d_layers, c.activation)
        # The averaged generator (g_ema > 0) starts as a copy of G and is never trained directly.
        self.averaged = copy.deepcopy(self.generator).requires_grad_(False) if c.g_ema else None

    @property
    def scorer(self) -> Generator:
        """The generator that scores: the weight average when there is one."""
        return self.averaged if self.averaged is not None else self.generator

    @torch.no_grad()
    def update_average(self, decay: float) -> None:
        if self.averaged is not None:
            for avg, p in zip(self.averaged.parameters(), self.generator.parameters(),
                              strict=True):
                avg.lerp_(p, 1.0 - decay)


# -- the recommender ---------------------------------------------------------------------------


class CFGAN(NeuralRecommender):
    """CFGAN top-K recommender (implicit feedback; ratings are binarised)."""

    name: ClassVar[str] = "cfgan"
    family: ClassVar[str] = "gan"
    Config: ClassVar[type[TrainConfig]] = CFGANConfig
    # What --tune searches: the grid, and the Optuna study's space (`recsys.models.tuning`).
    tune_grid = {"g_reg": [0.001, 0.01], "d_hidden": [125, 250]}
    search_space = {
        "lr": {"low": 1e-05, "high": 0.001, "log": True},
        "g_reg": {"low": 0.0001, "high": 0.1, "log": True},
        "d_hidden": {"low": 50, "high": 500, "step": 50},
        "zr_coefficient": {"low": 0.001, "high": 0.3, "log": True},
    }
    manual_optimization: ClassVar[bool] = True
    config: CFGANConfig
    network: CFGANNetwork

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        # Item-based only: the training matrix as items x users 0/1 (each item's condition),
        # and the conditions at scoring time: those plus whatever `observe` was told.
        self.conditions: sp.csr_matrix | None = None
        self.known: sp.csr_matrix | None = None
        self._warm_users: torch.Tensor | None = None
        self.collapse_epochs_: list[int] = []
        self._warned = False
        self._codes: WeightsCache[torch.Tensor] = WeightsCache()
        self._last_g_std = float("nan")

    @property
    def item_based(self) -> bool:
        return self.config.based == "item"

    @property
    def uses_zr(self) -> bool:
        return self.config.scheme in ("zr", "zr+pm")

    @property
    def uses_pm(self) -> bool:
        return self.config.scheme in ("pm", "zr+pm")

    # -- the engine's contract -----------------------------------------------------------------

    def build(self, n_users: int, n_items: int) -> None:
        self.n_users, self.n_items = n_users, n_items
        self.network = CFGANNetwork(n_users if self.item_based else n_items, self.config)
        self._codes.clear()

    def setup(self, train: Interactions, ctx: FitContext) -> None:
        if train.nnz == 0:
            raise RecsysError("cfgan: the training data has no interactions")
        if self.item_based:
            self._set_conditions(train.binary().T.tocsr())

    def training_matrix(self, train: Interactions) -> sp.csr_matrix:
        binary = train.binary()
        return binary.T.tocsr() if self.item_based else binary

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        c, net, cuda = self.config, self.network, self.device.type == "cuda"
        self._opt_g = build_optimizer(c, net.generator.parameters(), cuda=cuda)
        self._opt_d = build_optimizer(c, net.discriminator.parameters(), cuda=cuda,
                                      lr=c.d_lr or c.lr)
        return [self._opt_g, self._opt_d]

    def fit(self, train: Interactions, valid: EvalSplit | None = None,
            ctx: FitContext | None = None) -> CFGAN:
        self.collapse_epochs_ = []
        self._warned = False
        return super().fit(train, valid, ctx)

    def training_step(self, batch: Batch, step: int) -> dict[str, Any]:
        c = self.config
        gen, dis = self.network.generator, self.network.discriminator
        x = binarize(batch.rows)  # the condition and the real vector alike
        observed = x > 0
        n = x.shape[0]
        # D sees generated values where the mask is 1: e (the purchases) plus, with PM, sampled
        # unobserved positions, where the real vector holds zeros.
        mask = x
        if self.uses_pm:
            mask = (observed | sample_unobserved(observed, c.pm_ratio)).to(x.dtype)
        zr_mask = (sample_unobserved(observed, c.zr_ratio).to(x.dtype) if self.uses_zr
                   else None)

        def noise(rows: int) -> torch.Tensor | None:
            return torch.randn(rows, c.noise_dim, device=x.device) if c.noise_dim else None

        # -- D: real vectors -> 1, masked generated vectors -> 0 ------------------------------
        gen.requires_grad_(False)
        dis.requires_grad_(True)
        d_loss = d_adv = d_real = d_fake = x.new_zeros(())
        for _ in range(c.d_steps):
            with torch.no_grad():
                fake = gen(x, noise(n))
            real_logit = dis(x, x)
            fake_logit = dis(fake * mask, x)
            adv = (F.binary_cross_entropy_with_logits(real_logit, torch.ones_like(real_logit))
                   + F.binary_cross_entropy_with_logits(fake_logit,
                                                        torch.zeros_like(fake_logit)))
            loss = adv + c.d_reg * half_squared_norm(dis) if c.d_reg else adv
            self._opt_d.zero_grad(set_to_none=True)
            loss.backward()
            self._clip(dis)
            self._opt_d.step()
            d_loss = d_loss + loss.detach() / c.d_steps
            d_adv = d_adv + adv.detach() / c.d_steps
            d_real = d_real + torch.sigmoid(real_logit.detach()).mean() / c.d_steps
            d_fake = d_fake + torch.sigmoid(fake_logit.detach()).mean() / c.d_steps
        if n >= 2:  # a lone row has no spread; keep the last batch's figure
            self._last_g_std = float(fake.float().std(dim=0, correction=0).mean())

        # -- G: fool D on the masked vector, plus ZR ------------------------------------------
        dis.requires_grad_(False)
        gen.requires_grad_(True)
        g_loss = g_adv = zr_total = x.new_zeros(())
        updates = 0
        for _ in range(c.g_steps):
            for rows in torch.randperm(n, device=x.device).split(c.g_batch_size):
                xc = x[rows]
                fake = gen(xc, noise(len(rows)))
                logit = dis(fake * mask[rows], xc)
                adv = F.binary_cross_entropy_with_logits(logit, torch.ones_like(logit))
                loss = adv
                zr = x.new_zeros(())
                if zr_mask is not None:
                    zr = (fake.pow(2) * zr_mask[rows]).sum(dim=1).mean()
                    loss = loss + c.zr_coefficient * zr
                if c.g_reg:
                    loss = loss + c.g_reg * half_squared_norm(gen)
                self._opt_g.zero_grad(set_to_none=True)
                loss.backward()
                self._clip(gen)
                self._opt_g.step()
                self.network.update_average(c.g_ema)
                g_loss, g_adv = g_loss + loss.detach(), g_adv + adv.detach()
                zr_total = zr_total + zr.detach()
                updates += 1
        dis.requires_grad_(True)
        g_loss, g_adv, zr_total = g_loss / updates, g_adv / updates, zr_total / updates

        collapsed = (float(d_adv) < c.collapse_d_loss
                     or (math.isfinite(self._last_g_std) and self._last_g_std < c.collapse_std))
        return {"loss": g_loss + d_loss, "g_loss": g_loss, "d_loss": d_loss, "g_adv": g_adv,
                "zr": zr_total, "d_adv": d_adv, "d_real": d_real, "d_fake": d_fake,
                "g_std": self._last_g_std, "collapsed": float(collapsed)}

    def _clip(self, module: nn.Module) -> None:
        if self.config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(module.parameters(), self.config.grad_clip)

    def on_epoch_end(self, epoch: int, record: dict[str, float]) -> None:
        """Warn once, at the first epoch whose means look collapsed; keep every such epoch."""
        reason = collapse_reason(record, self.config.collapse_d_loss, self.config.collapse_std)
        if reason is None:
            return
        self.collapse_epochs_.append(epoch)
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"cfgan: training collapsed at epoch {epoch}: {reason}; try a lower d_lr, "
                "a larger d_reg, fewer d_steps or a noise input (noise_dim)",
                CollapseWarning, stacklevel=2)

    # -- scoring -------------------------------------------------------------------------------

    def observe(self, history: sp.csr_matrix) -> None:
        """Declare the users x items interactions known at scoring time (evaluation calls this
        with the whole history of the part it scores, e.g. train + valid for the test part).

        Item-based: every item's condition becomes its training buyers plus the buyers in
        ``history``, for all users at once, so a user's scores do not depend on which users
        share their batch. User-based: nothing to do (each user is folded in from their own
        history when scored).
        """
        if not self.item_based:
            return
        if self.conditions is None:
            raise RecsysError("cfgan: the model has not been fitted")
        if history.shape != (self.n_users, self.n_items):
            raise RecsysError(
                f"cfgan: the history covers {history.shape[0]} users x {history.shape[1]} items "
                f"but the model was trained on {self.n_users} x {self.n_items}; score with the "
                "dataset the model was trained on")
        seen = history.T.tocsr().astype(np.float32)
        seen.data[:] = 1.0
        known = (self.conditions + seen).tocsr()
        known.data[:] = 1.0
        self.known = known
        self._codes.clear()

    def forward_scores(self, history: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        check_history(self.name, history, self.n_items)
        gen = self.network.scorer
        if not self.item_based:
            return gen(binarize(history))
        codes = self._item_codes()  # (n_items, hidden)
        known = (users >= 0) & (users < self.n_users)
        safe = torch.where(known, users, torch.zeros_like(users))
        known = known & self._warm_users[safe]
        weight, bias = gen.out.weight, gen.out.bias
        # A user without training data: the average trained user's output unit.
        warm = self._warm_users.to(weight.dtype)
        mean_weight = (warm @ weight) / warm.sum().clamp(min=1)
        mean_bias = (warm @ bias) / warm.sum().clamp(min=1)
        w = torch.where(known[:, None], weight[safe], mean_weight[None, :])
        b = torch.where(known, bias[safe], mean_bias)
        return gen.activate(w @ codes.T + b[:, None])

    def _item_codes(self) -> torch.Tensor:
        """G's hidden codes of every item's condition, cached until the weights or the known
        interactions change (`WeightsCache`: validation during training and the restored best
        weights never see stale codes; `observe` and `to` drop the cache)."""
        if self.conditions is None or self._warm_users is None:
            raise RecsysError("cfgan: the model has not been fitted")
        gen = self.network.scorer

        def encode_all() -> torch.Tensor:
            rows = self.known if self.known is not None else self.conditions
            with torch.no_grad():
                chunks = [gen.encode(csr_to_dense(rows[s:s + _ROW_CHUNK], self.device))
                          for s in range(0, rows.shape[0], _ROW_CHUNK)]
            self._warm_users = self._warm_users.to(self.device)
            return torch.cat(chunks).float()

        return self._codes.get(gen, self.device, encode_all)

    def _set_conditions(self, conditions: sp.csr_matrix) -> None:
        self.conditions = conditions
        self.known = None
        self._codes.clear()
        # Users with training interactions: only their output units of G were trained on data
        # (an interaction that `observe` adds later does not change that).
        counts = np.bincount(conditions.indices, minlength=self.n_users)
        self._warm_users = torch.as_tensor(counts > 0)

    def to(self, device: torch.device | str) -> CFGAN:
        super().to(device)
        self._codes.clear()
        return self

    # -- persistence: an item-based model keeps its items' conditions --------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = dict(self.network.state_dict())
        if self.conditions is not None:
            state["conditions.indptr"] = torch.from_numpy(self.conditions.indptr.astype(np.int64))
            state["conditions.indices"] = torch.from_numpy(
                self.conditions.indices.astype(np.int64))
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        state = dict(state)
        indptr = state.pop("conditions.indptr", None)
        indices = state.pop("conditions.indices", None)
        with weights_must_match(self.name, "the config"):
            super().load_state_dict(state)
        if indptr is not None and indices is not None:
            data = np.ones(len(indices), dtype=np.float32)
            self._set_conditions(sp.csr_matrix((data, indices.numpy(), indptr.numpy()),
                                               shape=(self.n_items, self.n_users)))
        elif self.item_based:
            raise RecsysError(f"{self.name}: the saved item-based model lacks its items' "
                              "training conditions (conditions.indptr/indices)")


__all__ = ["CFGAN", "CFGANConfig", "CollapseWarning", "collapse_reason", "sample_unobserved"]
