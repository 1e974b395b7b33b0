"""Pieces the neural models share: layers, activations, initialisations, input checks, weight
loading, a cache of values computed from the weights, and the optimiser.

Each model file holds its own network and loss; what two or more of them need lives here once:

- `ACTIVATIONS` (module classes by config name; `activation_function` for a layer computed by
  hand) and `mlp`, the stack of linear layers every encoder/decoder/discriminator is built from;
- the initialisations of the authors' code, one named function per scheme (`init_like_multvae`
  for Mult-VAE/Mult-DAE, `init_like_cfgan` for CFGAN), both `xavier_init` with their own biases;
- `binarize`, `check_dims`, `check_history`, `l2_penalty`, `multinomial_nll`, `log_normal_pdf`;
- `weights_must_match`, which turns a shape/key mismatch of saved weights into one line;
- `WeightsCache`, a value derived from a module's weights (hidden codes of every row) that is
  recomputed as soon as any parameter changed in place;
- `build_optimizer`, the one place an optimiser is made from a `TrainConfig` (the trainer, and
  the models that step their own optimisers: CFGAN, RecVAE).

Only torch and the configuration/error types are imported: nothing here knows the trainer.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Annotated, Any, Generic, Literal, TypeVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from recsys.config import TrainConfig
from recsys.errors import RecsysError

PositiveInt = Annotated[int, Field(ge=1)]

# -- activations and layers ----------------------------------------------------------------------

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "identity": nn.Identity, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU,
    "elu": nn.ELU, "selu": nn.SELU, "softplus": nn.Softplus, "leaky_relu": nn.LeakyReLU,
}
Activation = Literal["identity", "sigmoid", "tanh", "relu", "elu", "selu", "softplus",
                     "leaky_relu"]


def activation_function(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation ``name`` as a callable, for a layer whose sum is computed by hand (these
    modules hold no state, so an instance is the function)."""
    return ACTIVATIONS[name]()


def mlp(dims: list[int], activation: str = "tanh", last_activation: bool = False
        ) -> nn.Sequential:
    """Linear layers ``dims[0] -> ... -> dims[-1]`` with ``activation`` between them (and after
    the last one, if asked)."""
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        layers.append(nn.Linear(d_in, d_out))
        if i < len(dims) - 2 or last_activation:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


# -- initialisations -------------------------------------------------------------------------

def xavier_init(module: nn.Module, bias_init: Callable[[torch.Tensor], Any]) -> None:
    """Xavier-uniform weights and ``bias_init`` biases for every linear layer of ``module``, in
    module order (weight, then bias): a seeded build draws the same numbers every time."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                bias_init(m.bias)


def init_like_multvae(module: nn.Module) -> None:
    """Xavier-uniform weights and N(0, 0.001^2) biases, as in Liang et al.'s Mult-VAE code."""
    xavier_init(module, lambda bias: nn.init.normal_(bias, std=0.001))


def init_like_cfgan(module: nn.Module) -> None:
    """Xavier-uniform weights and U(-0.01, 0.01) biases, as in Chae et al.'s CFGAN code."""
    xavier_init(module, lambda bias: nn.init.uniform_(bias, -0.01, 0.01))


# -- inputs, losses, penalties ---------------------------------------------------------------

def binarize(x: torch.Tensor) -> torch.Tensor:
    """0/1 implicit feedback from a history that may hold ratings."""
    return (x > 0).to(torch.float32)


def check_dims(model: str, dims: list[int], n_items: int, key: str) -> None:
    """The bottleneck of an autoencoder (``dims[-1]``, set by config ``key``) must not be wider
    than the catalogue it reconstructs."""
    if n_items < 1:
        raise RecsysError(f"{model}: the training data has no items")
    if dims and dims[-1] > n_items:
        smaller = max(1, n_items // 4)
        hint = f"[{smaller}]" if key == "hidden_dims" else str(smaller)
        raise RecsysError(
            f"{model} dims {dims} do not match the data: the bottleneck ({dims[-1]}) is wider "
            f"than the catalogue ({n_items} items); set smaller dims, e.g. --set {key}={hint}")


def check_history(model: str, history: torch.Tensor, n_items: int) -> None:
    """A scoring history must have one column per item the model was trained on."""
    if history.dim() != 2 or history.shape[1] != n_items:
        raise RecsysError(
            f"{model}: the history has {history.shape[-1]} item columns but the model was trained "
            f"on {n_items} items; score with the dataset the model was trained on")


class _MultinomialNLL(torch.autograd.Function):
    """The multinomial loss with its gradient written out: d/dlogits of -sum(x * log_softmax)
    is softmax * sum(x) - x. Autograd's version of the same loss keeps the product x *
    log_softmax, backs it through the sum, the product and log_softmax's own backward (which
    recomputes the softmax); here the forward keeps only log_softmax and the backward is one
    expression over it (7-8% less time for loss and gradient of a 500 x 20,108 batch on one CPU
    thread, the same memory). The gradient of ``x`` is not needed: it is the data."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits, dim=-1)  # float32 under bf16 autocast, as before
        x = x.to(log_p.dtype)
        ctx.save_for_backward(log_p, x, x.sum(dim=-1, keepdim=True))
        ctx.logits_dtype = logits.dtype
        return -torch.linalg.vecdot(x, log_p, dim=-1).mean()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        log_p, x, counts = ctx.saved_tensors
        scale = grad / log_p.shape[0]
        out = torch.exp(log_p).mul_(counts).sub_(x).mul_(scale)
        return out.to(ctx.logits_dtype), None


def multinomial_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Negative multinomial log-likelihood of the counts ``x`` under softmax(logits), per-user
    sum averaged over the batch (the constant multinomial coefficient is dropped); equal to
    ``-(log_softmax(logits) * x).sum(-1).mean()`` and its autograd gradient (tested to 1e-5)."""
    if x.requires_grad:  # not the models' case; autograd then derives both gradients itself
        return -(F.log_softmax(logits, dim=-1) * x).sum(dim=-1).mean()
    return _MultinomialNLL.apply(logits, x)


def log_normal_pdf(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Element-wise log N(z; mu, exp(logvar))."""
    return -0.5 * (logvar + math.log(2 * math.pi) + (z - mu).pow(2) * torch.exp(-logvar))


def l2_penalty(modules: list[nn.Linear]) -> torch.Tensor:
    """Sum of squared weights (biases excluded), the paper's form of weight decay."""
    return sum(m.weight.pow(2).sum() for m in modules)  # type: ignore[return-value]


# -- saved weights -------------------------------------------------------------------------------

@contextlib.contextmanager
def weights_must_match(model: str, against: str = "the configured dims") -> Iterator[None]:
    """Turn torch's multi-line shape/key mismatch of a ``load_state_dict`` in the block into one
    line: ``<model>: saved weights do not match <against> (<torch's first detail>)``."""
    try:
        yield
    except RuntimeError as exc:
        first = next((ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()), str(exc))
        raise RecsysError(f"{model}: saved weights do not match {against} ({first})") from None


# -- values derived from the weights -----------------------------------------------------------

T = TypeVar("T")


class WeightsCache(Generic[T]):
    """One value computed from a module's weights (e.g. the hidden codes of every row), kept
    until the weights change.

    The key holds the parameters' version counters, which every in-place update (an optimiser
    step, ``load_state_dict``) advances: a validation pass during training and the restored best
    weights never see a stale value. Anything else the value depends on (the device, the rows it
    encodes) is the owner's to ``clear``.
    """

    def __init__(self) -> None:
        self._key: tuple[Any, ...] | None = None
        self._value: T | None = None

    def get(self, module: nn.Module, device: torch.device, compute: Callable[[], T]) -> T:
        key = (id(module), device, tuple(p._version for p in module.parameters()))
        if self._value is None or self._key != key:
            self._value = compute()
            self._key = key
        return self._value

    def clear(self) -> None:
        self._key = self._value = None


# -- optimisers ----------------------------------------------------------------------------------

def build_optimizer(config: TrainConfig, params: Iterable[torch.nn.Parameter] | list[Any],
                    cuda: bool = False, lr: float | None = None) -> torch.optim.Optimizer:
    """The config's optimiser (``lr``: another step size than ``config.lr``, e.g. CFGAN's
    discriminator); on CUDA, Adam(W) is the fused kernel (one launch for all parameters) and
    capturable (its step count stays on the device), so a CUDA graph can hold it.
    """
    kwargs: dict[str, Any] = {"lr": config.lr if lr is None else lr,
                              "weight_decay": config.weight_decay}
    adam = {"fused": True, "capturable": True} if cuda else {}
    if config.optimizer == "adam":
        return torch.optim.Adam(params, **kwargs, **adam)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, **kwargs, **adam)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, **kwargs)
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, **kwargs)
    raise RecsysError(f"unknown optimizer '{config.optimizer}'")  # the config forbids it


# -- the contractive penalty (Rifai, Vincent, Muller, Glorot & Bengio, ICML 2011) ------------

# d activation / d pre-activation, as a function of the pre-activation, for every entry of
# `ACTIVATIONS` (all element-wise): the Jacobian of a layer s(Wx + b) is diag(s'(a)) W.
ACTIVATION_DERIVATIVES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": torch.ones_like,
    "sigmoid": lambda a: torch.sigmoid(a) * (1 - torch.sigmoid(a)),
    "tanh": lambda a: 1 - torch.tanh(a).pow(2),
    "relu": lambda a: (a > 0).to(a.dtype),
    "elu": lambda a: torch.where(a > 0, torch.ones_like(a), torch.exp(a)),
    # torch's SELU constants (scale, alpha).
    "selu": lambda a: 1.0507009873554805 * torch.where(a > 0, torch.ones_like(a),
                                                       1.6732632423543772 * torch.exp(a)),
    "softplus": torch.sigmoid,
    "leaky_relu": lambda a: torch.where(a > 0, torch.ones_like(a), torch.full_like(a, 0.01)),
}


def layers_of(stack: nn.Sequential) -> list[tuple[nn.Linear, str]]:
    """The linear layers of an `mlp` with the name of the activation after each ("identity"
    where none follows), the form `contractive_encode` reads."""
    names = {cls: name for name, cls in ACTIVATIONS.items()}
    modules = list(stack)
    return [(m, names[type(nxt)] if type(nxt) in names else "identity")
            for m, nxt in zip(modules, [*modules[1:], None], strict=True)
            if isinstance(m, nn.Linear)]


def contractive_encode(layers: list[tuple[nn.Linear, str]], x: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """The code of ``x`` through ``layers`` (each a linear layer and its activation's name) and,
    per row, the contractive penalty: the squared Frobenius norm of each layer's Jacobian with
    respect to that layer's own input, summed over the layers.

    One layer h = s(Wx + b) has ||J||_F^2 = sum_j s'(a_j)^2 ||W_j||^2 (the closed form of the
    CAE paper): a (batch, hidden) product with the rows' squared norms, no Jacobian is built.
    For a deeper encoder the penalty is the sum of the layers' own terms, the layer-wise
    penalty of a stacked CAE, rather than the norm of the composed Jacobian (a product of
    per-row matrices that costs a batch x hidden x hidden product per layer).
    """
    penalty = x.new_zeros(x.shape[0])
    h = x
    for linear, activation in layers:
        a = linear(h)
        slope = ACTIVATION_DERIVATIVES[activation](a)
        penalty = penalty + slope.pow(2) @ linear.weight.pow(2).sum(dim=1)
        h = ACTIVATIONS[activation]()(a)
    return h, penalty
