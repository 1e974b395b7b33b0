"""DiffRec (Wang, Xu, Feng, Lin, He, Chua: "Diffusion Recommender Model", SIGIR 2023).

A Gaussian diffusion over a user's 0/1 interaction vector x_0. The forward process adds noise in
``steps`` small steps, q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I), with
the variance schedule set by ``noise_scale``, ``noise_min`` and ``noise_max``: under the paper's
"linear-var" schedule 1 - abar_t grows linearly from noise_scale * noise_min to noise_scale *
noise_max (`diffusion_betas`; "linear" makes beta_t itself linear, "cosine" is Nichol and
Dhariwal's schedule and ignores the three settings). As in the authors' code the first step's
beta is fixed to a small constant (``FIRST_BETA``). Recommendation wants little noise: the
personalised signal of x_0 must survive the corruption, hence the defaults' tiny scale.

The reverse step p(x_{t-1} | x_t) is the Gaussian posterior q(x_{t-1} | x_t, x_0) with x_0
replaced by a denoiser's estimate: an MLP fed the (dropped-out) x_t concatenated with
a sinusoidal embedding of t passed through one linear layer (the paper's "cat" time embedding),
tanh between its layers, ``hidden_dims`` wide on the way in and mirrored on the way out (the
authors' option of L2-normalising x_t first is on by default here: ml-100k's validation part
preferred it). With ``mean_type: x0`` (the paper's default) it predicts x_0 and the loss is
||x_0 - x_hat||^2 (the mean over items); ``eps`` predicts the added noise instead. ``reweight``
weighs step t by SNR(t-1) - SNR(t) (the ELBO's weighting of an x_0 predictor; step 0 weighs 1).

Importance sampling of t (optional, on by default as in the authors' code): steps are
drawn with probability proportional to sqrt(E[L_t^2]) over the last ``history_per_step``
losses of each step (mixed with a 0.1% uniform share) and each loss is divided by its step's
probability times ``steps``, which keeps the estimate unbiased; until every step has that many
losses, steps are drawn uniformly. The loss history is kept as network buffers, so it is saved
in checkpoints and a resumed run continues it.

Inference, as in the paper: the history is noised for ``sampling_steps`` forward steps (0, the
default: not at all), then the denoiser runs all ``steps`` reverse steps from t = steps - 1 to 0
on the whole batch of users at once, taking the posterior mean (``sampling_noise: false``, the
default) or a draw from it. The last step's x_0 estimate is the score vector. With the defaults
scoring is deterministic; ``sampling_steps > 0`` or ``sampling_noise`` make it random (as in the
paper), so two scorings of a user then differ. ``noise_scale: 0`` adds no noise at all (as the
authors' code treats it): training sees x_0 itself and inference applies the denoiser ``steps``
times to its own output.

L-DiffRec (``latent_clusters > 0``; off, 0, by default): the latent variant of the paper's
section 3.4. Items are clustered into ``latent_clusters`` groups, each group's part of the history
is compressed by its own VAE encoder, and the diffusion runs on the concatenated ``latent_dim``
code (the pieces live in `recsys.models.ldiffrec`). The denoiser is then ``latent_dim`` wide on
both ends, takes the code un-normalised and without dropout (``normalize_input`` and
``dropout`` apply to the history entering the encoders, as in Mult-VAE); each group's decoder
maps the denoiser's x_0 estimate back to its items. The loss is ``latent_diffusion_weight`` times
the diffusion loss on the code, plus the multinomial likelihood of the history under the decoded
estimate, plus the encoders' KL to N(0, I) weighted by an annealed beta (Mult-VAE's ramp:
min(``latent_kl_cap``, epochs / ``latent_anneal_epochs``)). Scoring encodes the history to its
mean, runs the reverse steps on the code (batched over users) and decodes. The item groups are a
saved buffer, so a loaded model scores (and folds in new users) without the training data.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Self

import scipy.sparse as sp
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from recsys.config import TrainConfig
from recsys.data.interactions import EvalSplit, Interactions
from recsys.errors import RecsysError
from recsys.models.base import FitContext
from recsys.models.ldiffrec import LatentCodec, item_clusters
from recsys.models.multvae import batches_per_epoch, kl_beta, kl_standard_normal
from recsys.models.neural import NEURAL_SPACE, Batch, NeuralRecommender
from recsys.models.nn import (
    PositiveInt,
    binarize,
    check_dims,
    check_history,
    init_like_multvae,
    mlp,
    multinomial_nll,
    weights_must_match,
)

# The authors fix beta_1 to this constant whatever the schedule (after Sohl-Dickstein et al.,
# 2015, section 2.4.1), so that the first step is never noise-free.
FIRST_BETA = 1e-5
MAX_BETA = 0.999
# The uniform share mixed into the importance distribution: no step is ever starved.
UNIFORM_SHARE = 0.001
# L-DiffRec's item groups in the saved weights (the codec's buffer).
GROUPS_KEY = "codec.groups"


# -- the noise schedule --------------------------------------------------------------------------


def diffusion_betas(schedule: str, steps: int, noise_scale: float, noise_min: float,
                    noise_max: float) -> torch.Tensor:
    """beta_1..beta_T (float64) of a schedule; beta_1 is then fixed to ``FIRST_BETA``.

    "linear-var": the variance 1 - abar_t is linear in t from noise_scale * noise_min to
    noise_scale * noise_max, so beta_t = 1 - abar_t / abar_{t-1}. "linear": beta_t itself is.
    "cosine": abar(s) = cos((s + 0.008) / 1.008 * pi / 2)^2 on s = t / T.
    """
    start, end = noise_scale * noise_min, noise_scale * noise_max
    if schedule in ("linear", "linear-var"):
        ramp = torch.linspace(start, end, steps, dtype=torch.float64)
        if schedule == "linear":
            betas = ramp
        else:
            alpha_bar = 1.0 - ramp
            betas = torch.cat([ramp[:1], 1.0 - alpha_bar[1:] / alpha_bar[:-1]])
    elif schedule == "cosine":
        s = torch.arange(steps + 1, dtype=torch.float64) / steps
        alpha_bar = torch.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = 1.0 - alpha_bar[1:] / alpha_bar[:-1]
    else:
        raise ValueError(f"unknown noise schedule '{schedule}'")
    betas = betas.clamp(max=MAX_BETA)
    betas[0] = FIRST_BETA
    return betas


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (batch, dim) of integer steps: cosines then sines of t at
    geometrically spaced frequencies (a zero column pads an odd ``dim``)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period)
                      * torch.arange(half, dtype=torch.float32, device=t.device) / max(half, 1))
    angles = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


# -- the network ---------------------------------------------------------------------------------


class DiffRecNetwork(nn.Module):
    """The denoiser, the schedule's constants (derived from the config: not saved) and the
    importance sampler's loss history (training state: saved, so a resume continues it).

    With a ``codec`` (L-DiffRec) ``n_items`` is the code's width and the codec maps histories
    to codes and back; without one (DiffRec) the network is exactly the item-space denoiser."""

    def __init__(self, n_items: int, hidden_dims: list[int], emb_size: int, dropout: float,
                 normalize_input: bool, betas: torch.Tensor, history_per_step: int,
                 codec: LatentCodec | None = None) -> None:
        super().__init__()
        self.emb_size = emb_size
        self.normalize_input = normalize_input
        self.time_layer = nn.Linear(emb_size, emb_size)
        self.encoder = mlp([n_items + emb_size, *hidden_dims], last_activation=True)
        self.decoder = mlp([*reversed(hidden_dims), n_items], last_activation=False)
        self.dropout = nn.Dropout(dropout)
        # The authors' scheme is Xavier-normal weights with N(0, 0.001^2) biases; Xavier-uniform
        # (Mult-VAE's) has the same variance.
        init_like_multvae(self)

        steps = len(betas)
        alpha_bar = torch.cumprod(1.0 - betas, dim=0)
        alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
        posterior_var = betas * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar)
        snr = alpha_bar / (1.0 - alpha_bar)
        constants = {
            "sqrt_alpha_bar": alpha_bar.sqrt(),
            "sqrt_one_minus_alpha_bar": (1.0 - alpha_bar).sqrt(),
            # x_0 from a noise estimate: x_0 = x_t / sqrt(abar) - sqrt(1 / abar - 1) eps.
            "recip_sqrt_alpha_bar": alpha_bar.rsqrt(),
            "sqrt_recip_alpha_bar_m1": (1.0 / alpha_bar - 1.0).sqrt(),
            # Posterior mean of q(x_{t-1} | x_t, x_0) = coef_x0 * x_0 + coef_xt * x_t.
            "coef_x0": betas * alpha_bar_prev.sqrt() / (1.0 - alpha_bar),
            "coef_xt": (1.0 - alpha_bar_prev) * (1.0 - betas).sqrt() / (1.0 - alpha_bar),
            # Step 0's posterior variance is 0; its log is clipped to step 1's.
            "posterior_log_var": torch.log(torch.cat([posterior_var[1:2], posterior_var[1:]])
                                           if steps > 1 else posterior_var.clamp(min=1e-20)),
            # SNR(t-1) - SNR(t): the ELBO's weight of an x_0 predictor's error at step t.
            "x0_weight": torch.cat([torch.ones(1, dtype=torch.float64), snr[:-1] - snr[1:]]),
            # The same for a noise predictor, as the authors weigh it.
            "eps_weight": torch.cat([torch.ones(1, dtype=torch.float64),
                                     ((1.0 - alpha_bar) / ((1.0 - alpha_bar_prev) ** 2
                                                           * (1.0 - betas)))[1:]]),
        }
        for name, value in constants.items():
            self.register_buffer(name, value.to(torch.float32), persistent=False)
        self.register_buffer("loss_history", torch.zeros(steps, history_per_step,
                                                         dtype=torch.float64))
        self.register_buffer("losses_seen", torch.zeros(steps, dtype=torch.int64))
        # Attached last (its own initialisation): DiffRec's network draws the same numbers and
        # holds the same keys as before the option existed.
        self.codec = codec

    @property
    def steps(self) -> int:
        return self.loss_history.shape[0]

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The denoiser's output (an x_0 or a noise estimate) for noisy rows at steps ``t``."""
        if self.normalize_input:
            # L2 rows as Mult-DAE's input: a user's scale no longer grows with their history.
            x_t = F.normalize(x_t, dim=-1)
        emb = self.time_layer(timestep_embedding(t, self.emb_size))
        return self.decoder(self.encoder(torch.cat([self.dropout(x_t), emb], dim=-1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t ~ q(x_t | x_0), one step per row."""
        return (self.sqrt_alpha_bar[t, None] * x0
                + self.sqrt_one_minus_alpha_bar[t, None] * noise)


# -- importance sampling of the step -------------------------------------------------------------


def step_distribution(network: DiffRecNetwork) -> torch.Tensor:
    """P(t): proportional to sqrt(E[L_t^2]) over each step's loss history, with a uniform share;
    uniform until every step's history is full (a branch-free choice, no host sync)."""
    steps, per_step = network.loss_history.shape
    rms = network.loss_history.pow(2).mean(dim=1).sqrt()
    importance = rms / rms.sum().clamp(min=torch.finfo(rms.dtype).tiny)
    importance = importance * (1.0 - UNIFORM_SHARE) + UNIFORM_SHARE / steps
    uniform = torch.full_like(importance, 1.0 / steps)
    full = (network.losses_seen >= per_step).all()
    return torch.where(full, importance, uniform)


def record_losses(network: DiffRecNetwork, t: torch.Tensor, losses: torch.Tensor) -> None:
    """Push each step's newest losses of the batch into its ring of the last ``per_step``
    (vectorised: rows are grouped by step with a stable sort, each group's last ``per_step``
    entries written to distinct slots)."""
    steps, per_step = network.loss_history.shape
    order = torch.argsort(t, stable=True)
    t_sorted, loss_sorted = t[order], losses[order].detach().to(torch.float64)
    counts = torch.bincount(t_sorted, minlength=steps)
    first = torch.cumsum(counts, dim=0) - counts
    position = torch.arange(len(t_sorted), device=t.device) - first[t_sorted]
    keep = position >= counts[t_sorted] - per_step
    slot = (network.losses_seen[t_sorted] + position) % per_step
    network.loss_history[t_sorted[keep], slot[keep]] = loss_sorted[keep]
    network.losses_seen += counts


# -- the model -----------------------------------------------------------------------------------


class DiffRecConfig(TrainConfig):
    # The authors' [1000] on un-normalised input did worse on ml-100k's validation part than
    # [200] on L2-normalised rows (configs/diffrec.yaml has the figures).
    hidden_dims: list[PositiveInt] = [200]  # pydantic copies mutable defaults
    emb_size: int = Field(10, ge=1)
    dropout: float = Field(0.5, ge=0, lt=1)
    normalize_input: bool = True
    mean_type: Literal["x0", "eps"] = "x0"
    noise_schedule: Literal["linear-var", "linear", "cosine"] = "linear-var"
    noise_scale: float = Field(0.0001, ge=0, le=1)
    noise_min: float = Field(0.0005, ge=0, le=1)
    noise_max: float = Field(0.005, ge=0, le=1)
    steps: int = Field(5, ge=1)
    sampling_steps: int = Field(0, ge=0)
    sampling_noise: bool = False
    reweight: bool = True
    importance_sampling: bool = True
    history_per_step: int = Field(10, ge=1)
    # L-DiffRec: 0 is off (DiffRec over the items); C > 0 diffuses a latent code of items in C
    # k-means groups (1: one encoder over all items).
    latent_clusters: int = Field(0, ge=0)
    latent_dim: int = Field(200, ge=1)
    latent_kl_cap: float = Field(0.2, ge=0)
    latent_anneal_epochs: float = Field(125.0, ge=0)  # 0: the cap from the first step
    latent_diffusion_weight: float = Field(1.0, ge=0)
    # The shared engine's keys, with the values validation chose (configs/diffrec.yaml).
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = "adamw"
    batch_size: int = Field(128, ge=1)
    epochs: int = Field(300, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> DiffRecConfig:
        if self.noise_min > self.noise_max:
            raise ValueError(f"noise_min ({self.noise_min}) is larger than noise_max "
                             f"({self.noise_max})")
        if self.sampling_steps > self.steps:
            raise ValueError(f"sampling_steps ({self.sampling_steps}) exceeds the diffusion's "
                             f"steps ({self.steps})")
        if self.mean_type == "eps" and self.noise_scale == 0:
            raise ValueError("mean_type eps predicts the noise, and noise_scale 0 adds none; "
                             "use mean_type x0 or a noise_scale > 0")
        if self.latent_clusters > self.latent_dim:
            raise ValueError(f"latent_clusters ({self.latent_clusters}) exceeds latent_dim "
                             f"({self.latent_dim}): each item group needs a latent unit")
        return self


class DiffRec(NeuralRecommender):
    """DiffRec; ``score`` denoises any user's history vector (no retraining)."""

    name = "diffrec"
    family = "diffusion"
    Config = DiffRecConfig
    config: DiffRecConfig
    network: DiffRecNetwork
    # What --tune searches: the grid, and the Optuna study's space (`recsys.models.tuning`).
    tune_grid = {"noise_scale": [1e-05, 0.0001, 0.001]}
    search_space = {
        **NEURAL_SPACE,
        "dropout": {"low": 0.0, "high": 0.8},
        "hidden_dims": {"choices": [[200], [600], [1000]]},
        "noise_scale": {"low": 1e-05, "high": 0.1, "log": True},
        "steps": {"low": 2, "high": 50, "log": True},
    }

    # L-DiffRec's item groups: from the training data in ``fit``, or from saved weights.
    item_groups_: torch.Tensor | None = None

    def fit(self, train: Interactions, valid: EvalSplit | None = None,
            ctx: FitContext | None = None) -> Self:
        c = self.config
        if c.latent_clusters:
            # Before the engine builds the network: the groups' sizes shape its layers. A
            # refit clusters its own (train + valid) matrix; a resume gets the same groups back
            # from the checkpoint.
            self.item_groups_ = torch.from_numpy(
                item_clusters(self.training_matrix(train), c.latent_clusters, c.seed))
        return super().fit(train, valid, ctx)

    def build(self, n_users: int, n_items: int) -> None:
        c = self.config
        self.n_users, self.n_items = n_users, n_items
        betas = diffusion_betas(c.noise_schedule, c.steps, c.noise_scale, c.noise_min,
                                c.noise_max)
        if not c.latent_clusters:
            check_dims(self.name, list(c.hidden_dims), n_items, "hidden_dims")
            self.network = DiffRecNetwork(n_items, list(c.hidden_dims), c.emb_size, c.dropout,
                                          c.normalize_input, betas, c.history_per_step)
            return
        check_dims(self.name, [c.latent_dim], n_items, "latent_dim")
        groups = self.item_groups_
        if groups is None or groups.shape != (n_items,):
            raise RecsysError(f"{self.name}: latent_clusters={c.latent_clusters} and no item "
                              f"groups for {n_items} items to build the network with (fit it, "
                              "or load a saved model)")
        codec = LatentCodec(groups, c.latent_dim, c.dropout, c.normalize_input)
        # The code is no history: its scale carries the signal (no L2 normalisation) and the
        # encoders' input already has the dropout.
        self.network = DiffRecNetwork(c.latent_dim, list(c.hidden_dims), c.emb_size, 0.0,
                                      False, betas, c.history_per_step, codec)

    def setup(self, train: Interactions, ctx: FitContext) -> None:
        # The KL ramp counts epochs; the data fixes the batches in one (as for Mult-VAE).
        self.steps_per_epoch_ = batches_per_epoch(self, train)

    def training_matrix(self, train: Interactions) -> sp.csr_matrix:
        return train.binary()

    def sample_steps(self, rows: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """A step per row and the factor its loss is divided by (P(t) * T; 1 when uniform)."""
        steps = self.network.steps
        if not self.config.importance_sampling:
            return (torch.randint(0, steps, (rows,), device=device),
                    torch.ones(rows, device=device))
        probs = step_distribution(self.network)
        t = torch.multinomial(probs, rows, replacement=True)
        return t, (probs[t] * steps).to(torch.float32)

    def training_step(self, batch: Batch, step: int) -> dict[str, Any]:
        net = self.network
        if net.codec is None:
            loss, mse, t, _ = self.diffusion_loss(batch.rows)
            # mean_step: where importance sampling puts the batch's steps (uniform: (steps - 1)
            # / 2).
            return {"loss": loss, "mse": mse, "mean_step": t.float().mean().detach()}
        c = self.config
        x = batch.rows
        mu, logvar = net.codec.encode(x)
        z0 = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        diffusion, mse, t, z0_hat = self.diffusion_loss(z0)
        # The decoders learn from the denoiser's estimate, the code scoring decodes.
        nll = multinomial_nll(net.codec.decode(z0_hat), x)
        kl = kl_standard_normal(mu, logvar)
        beta = kl_beta(step, c.latent_kl_cap, c.latent_anneal_epochs * self._steps_per_epoch())
        loss = c.latent_diffusion_weight * diffusion + nll + beta * kl
        return {"loss": loss, "diffusion": diffusion.detach(), "mse": mse, "nll": nll.detach(),
                "kl": kl.detach(), "beta": beta, "mean_step": t.float().mean().detach()}

    def _steps_per_epoch(self) -> int:
        spe = getattr(self, "steps_per_epoch_", None)
        if spe is None:
            raise RuntimeError("diffrec: latent_anneal_epochs needs the batches per epoch, "
                               "which setup() computes from the training data; call it first")
        return int(spe)

    def diffusion_loss(self, x0: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The diffusion's loss on rows ``x0`` (histories, or L-DiffRec's codes): (the weighted
        loss, the plain mean squared error, the steps drawn, the x_0 estimates)."""
        c = self.config
        net = self.network
        t, scale = self.sample_steps(x0.shape[0], x0.device)
        noise = torch.randn_like(x0)
        x_t = net.q_sample(x0, t, noise) if c.noise_scale > 0 else x0
        out = net(x_t, t)
        if c.mean_type == "x0":
            per_row = (x0 - out).pow(2).mean(dim=1)
            weight = net.x0_weight[t]
            x0_hat = out
        else:
            per_row = (noise - out).pow(2).mean(dim=1)
            weight = net.eps_weight[t]
            # Step 0 is scored as the likelihood of x_0 itself, as the authors do.
            x0_hat = (net.recip_sqrt_alpha_bar[t, None] * x_t
                      - net.sqrt_recip_alpha_bar_m1[t, None] * out)
            per_row = torch.where(t == 0, (x0 - x0_hat).pow(2).mean(dim=1) / 2, per_row)
        # Without noise every step sees x_0 itself: the SNR weights are undefined there.
        weighted = weight * per_row if c.reweight and c.noise_scale > 0 else per_row
        if c.importance_sampling:
            with torch.no_grad():
                record_losses(net, t, weighted)
        return (weighted / scale).mean(), per_row.mean().detach(), t, x0_hat

    def denoise(self, x0: torch.Tensor) -> torch.Tensor:
        """The reverse process from the (optionally noised) history: ``steps`` reverse steps over
        the whole batch, each one forward pass of the denoiser."""
        c = self.config
        net = self.network
        rows = x0.shape[0]
        x_t = x0
        if c.sampling_steps > 0 and c.noise_scale > 0:
            t = torch.full((rows,), c.sampling_steps - 1, dtype=torch.long, device=x0.device)
            x_t = net.q_sample(x0, t, torch.randn_like(x0))
        for i in reversed(range(net.steps)):
            t = torch.full((rows,), i, dtype=torch.long, device=x0.device)
            out = net(x_t, t)
            if c.noise_scale == 0:
                x_t = out
                continue
            x0_hat = out if c.mean_type == "x0" else (
                net.recip_sqrt_alpha_bar[i] * x_t - net.sqrt_recip_alpha_bar_m1[i] * out)
            x_t = net.coef_x0[i] * x0_hat + net.coef_xt[i] * x_t
            if c.sampling_noise and i > 0:
                x_t = x_t + torch.exp(0.5 * net.posterior_log_var[i]) * torch.randn_like(x_t)
        return x_t

    def forward_scores(self, history: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        check_history(self.name, history, self.n_items)
        codec = self.network.codec
        if codec is None:
            return self.denoise(binarize(history))
        mu, _ = codec.encode(binarize(history))
        return codec.decode(self.denoise(mu))

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if self.config.latent_clusters:
            groups = state.get(GROUPS_KEY)
            if groups is None or groups.shape != (self.n_items,):
                raise RecsysError(f"{self.name}: the saved weights hold no {self.n_items}-item "
                                  f"'{GROUPS_KEY}' vector; the saved model is damaged")
            self.item_groups_ = groups.to(torch.int64)
        with weights_must_match(self.name, "the config"):
            super().load_state_dict(state)


__all__ = ["DiffRec", "DiffRecConfig", "diffusion_betas", "record_losses", "step_distribution",
           "timestep_embedding"]
