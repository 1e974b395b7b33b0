"""Strong non-neural baselines behind the `Recommender` protocol: pop, itemknn, ease, als, bpr.

All of them treat the training matrix as implicit feedback (any stored interaction is a 1) and
score a batch of users over the whole catalogue in one vectorised step. Popularity, ItemKNN and
EASE read only the history passed to ``score``, so new users are folded in for free. The two
matrix-factorisation models wrap the `implicit` library (CPU build unless CUDA is available to
it) and keep their factors as float32 arrays.
"""

from __future__ import annotations

from typing import Any, ClassVar, Self

import numpy as np
import scipy.sparse as sp
import torch
from pydantic import Field
from threadpoolctl import threadpool_limits

from recsys.config import StrictConfig
from recsys.data.interactions import EvalSplit, Interactions
from recsys.errors import RecsysError
from recsys.models.base import FitContext, Recommender, csr_to_dense, resolve_device

# Largest dense block (entries) materialised while building item-item matrices: 2**26 float32
# values are 256 MiB, which bounds memory whatever the catalogue size.
_BLOCK_ENTRIES = 1 << 26


def binarize(matrix: sp.spmatrix) -> sp.csr_matrix:
    """The 0/1 float32 CSR of stored interactions (ratings or counts become 1)."""
    out = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
    out.eliminate_zeros()
    out.data[:] = 1.0
    return out


def item_gram_blocks(matrix: sp.csr_matrix, block: int | None = None):
    """Yield ``(start, stop, G[:, start:stop])`` of the item-item co-occurrence ``X^T X``.

    ``G`` blocks are dense float32 numpy arrays; counts of 0/1 data are exact in float32 up to
    2**24 users. Blocks keep memory bounded for large catalogues (ML-20M has 20k items).
    """
    x = binarize(matrix)
    n_items = x.shape[1]
    block = block or max(1, min(n_items, _BLOCK_ENTRIES // max(n_items, 1)))
    xt = x.T.tocsr()
    xc = x.tocsc()
    for start in range(0, n_items, block):
        stop = min(start + block, n_items)
        yield start, stop, (xt @ xc[:, start:stop]).toarray().astype(np.float32, copy=False)


class _Baseline(Recommender):
    """Shared plumbing: the device scores come back on, and a guard against scoring unfitted."""

    family: ClassVar[str] = "baseline"

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.device = torch.device("cpu")
        self._fitted = False

    def _resolve_device(self) -> torch.device:
        return resolve_device(getattr(self.config, "device", "cpu"))

    def to(self, device: str | torch.device) -> Self:
        """Move what scoring uses to ``device`` (evaluation calls this); scores come back there."""
        self.device = torch.device(device)
        if self._fitted:
            self._move()
        return self

    def _move(self) -> None:
        """Move fitted tensors to ``self.device`` (models that keep none there need nothing)."""

    def _check_fitted(self) -> None:
        if not self._fitted:
            raise RecsysError(f"model '{self.name}' is not fitted yet; call fit() or load a run")

    def _start_fit(self, train: Interactions) -> sp.csr_matrix:
        self.n_users, self.n_items = train.n_users, train.n_items
        self.device = self._resolve_device()
        return binarize(train.matrix)


# -- Popularity -------------------------------------------------------------------------------


class PopularityConfig(StrictConfig):
    """Popularity has nothing to tune: every user gets the items ranked by training count."""


class Popularity(_Baseline):
    """Items ranked by how many training users interacted with them (the same list for all)."""

    name: ClassVar[str] = "pop"
    Config: ClassVar[type[StrictConfig]] = PopularityConfig
    # What --tune searches: the grid, and the Optuna study's space (`recsys.models.tuning`).
    tune_grid = {}
    search_space = {}

    def fit(self, train: Interactions, valid: EvalSplit | None = None,
            ctx: FitContext | None = None) -> Self:
        x = self._start_fit(train)
        counts = np.bincount(x.indices, minlength=self.n_items).astype(np.float32)
        self.item_counts = torch.from_numpy(counts)
        self._fitted = True
        return self

    def _move(self) -> None:
        self.item_counts = self.item_counts.to(self.device)

    def score(self, users: np.ndarray, history: sp.csr_matrix) -> torch.Tensor:
        self._check_fitted()
        return self.item_counts.unsqueeze(0).expand(len(users), -1).clone()

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._check_fitted()
        return {"item_counts": self.item_counts.cpu()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.item_counts = state["item_counts"].float().cpu()
        self.n_items = int(self.item_counts.shape[0])
        self._fitted = True


# -- ItemKNN ----------------------------------------------------------------------------------


class ItemKNNConfig(StrictConfig):
    k: int = Field(100, ge=1, description="neighbours kept per item")
    shrink: float = Field(10.0, ge=0, description="added to the cosine denominator")
    device: str = "auto"


class ItemKNN(_Baseline):
    """Item-based kNN: cosine similarity with shrinkage, the k nearest neighbours of each item.

    ``sim(i, j) = |U_i ∩ U_j| / (sqrt|U_i| sqrt|U_j| + shrink)``; the score of item j for a user
    is the sum of ``sim(i, j)`` over the items i in the user's history that are among j's k
    nearest neighbours.
    """

    name: ClassVar[str] = "itemknn"
    Config: ClassVar[type[StrictConfig]] = ItemKNNConfig
    # What --tune searches: the grid, and the Optuna study's space (`recsys.models.tuning`).
    tune_grid = {"k": [10, 20, 50, 100, 200, 500], "shrink": [0.0, 10.0, 50.0, 100.0]}
    search_space = {
        "k": {"low": 5, "high": 1000, "log": True},
        "shrink": {"low": 0.0, "high": 200.0},
    }

    def fit(self, train: Interactions, valid: EvalSplit | None = None,
            ctx: FitContext | None = None) -> Self:
        x = self._start_fit(train)
        cfg = self.config
        n = self.n_items
        k = min(cfg.k, n)
        norms = torch.from_numpy(np.sqrt(np.bincount(x.indices, minlength=n)).astype(np.float32))
        norms = norms.to(self.device)
        ids = torch.empty(n, k, dtype=torch.int64)
        sims = torch.empty(n, k, dtype=torch.float32)
        for start, stop, gram in item_gram_blocks(x):
            # column j of the block: co-counts of every item i with target item start + j
            co = torch.from_numpy(gram).to(self.device)
            denom = norms[:, None] * norms[None, start:stop] + cfg.shrink
            sim = torch.where(denom > 0, co / denom.clamp_min(1e-12), torch.zeros_like(co))
            cols = torch.arange(stop - start, device=self.device)
            sim[start + cols, cols] = 0.0  # an item is not its own neighbour
            top = torch.topk(sim, k, dim=0)
            ids[start:stop] = top.indices.T.cpu()
            sims[start:stop] = top.values.T.cpu()
        self.neighbour_ids, self.neighbour_sims = ids, sims
        self._build_operator()
        self._fitted = True
        return self

    def _build_operator(self) -> None:
        # Row j of the (n x n) sparse operator holds j's neighbours, so that
        # scores^T = operator @ history^T: one sparse-dense product per batch.
        n, k = self.neighbour_ids.shape
        rows = torch.arange(n).repeat_interleave(k)
        index = torch.stack([rows, self.neighbour_ids.reshape(-1)])
        self._operator = torch.sparse_coo_tensor(
            index, self.neighbour_sims.reshape(-1), (n, n), check_invariants=False
        ).coalesce().to(self.device)

    def _move(self) -> None:
        self._operator = self._operator.to(self.device)

    def score(self, users: np.ndarray, history: sp.csr_matrix) -> torch.Tensor:
        self._check_fitted()
        dense = csr_to_dense(history, self.device, binary=True)
        return torch.sparse.mm(self._operator, dense.T).T.contiguous()

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._check_fitted()
        return {"neighbour_ids": self.neighbour_ids, "neighbour_sims": self.neighbour_sims}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.neighbour_ids = state["neighbour_ids"].long().cpu()
        self.neighbour_sims = state["neighbour_sims"].float().cpu()
        self.n_items = int(self.neighbour_ids.shape[0])
        self.device = self._resolve_device()
        self._build_operator()
        self._fitted = True


# -- EASE -------------------------------------------------------------------------------------


class EASEConfig(StrictConfig):
    lambda_: float = Field(200.0, gt=0, description="L2 penalty (Steck 2019's lambda)")
    device: str = "auto"


class EASE(_Baseline):
    """EASE (Steck, WWW 2019): ``B = I - P / diag(P)`` with ``P = (X^T X + lambda I)^-1``.

    The inverse is taken in float64 (a Cholesky factorisation of the positive-definite Gram
    matrix) on the GPU when one is present; ``B`` (zero diagonal) is kept in float32 and a
    user's scores are ``history @ B``.
    """

    name: ClassVar[str] = "ease"
    Config: ClassVar[type[StrictConfig]] = EASEConfig
    # What --tune searches: the grid, and the Optuna study's space (`recsys.models.tuning`).
    tune_grid = {"lambda_": [50.0, 100.0, 200.0, 300.0, 500.0, 800.0, 1000.0, 2000.0]}
    search_space = {"lambda_": {"low": 10.0, "high": 10000.0, "log": True}}

    def fit(self, train: Interactions, valid: EvalSplit | None = None,
            ctx: FitContext | None = None) -> Self:
        x = self._start_fit(train)
        # float64 is unsupported on MPS: solve on the CPU there and move B afterwards.
        solve_on = self.device if self.device.type == "cuda" else torch.device("cpu")
        gram = torch.zeros(self.n_items, self.n_items, dtype=torch.float64, device=solve_on)
        for start, stop, block in item_gram_blocks(x):
            gram[:, start:stop] = torch.from_numpy(block).to(solve_on, torch.float64)
        gram.diagonal().add_(self.config.lambda_)
        # Free each n x n float64 matrix as soon as the next exists: at most two live at once
        # (20k items: 6.4 GB rather than 9.6 GB).
        factor = torch.linalg.cholesky(gram)
        del gram
        p = torch.cholesky_inverse(factor)
        del factor
        p.div_(-p.diagonal().clone()[None, :])  # B_ij = -P_ij / P_jj for i != j
        p.diagonal().zero_()
        self.weights = p.float().to(self.device)
        self._fitted = True
        return self

    def _move(self) -> None:
        self.weights = self.weights.to(self.device)

    def score(self, users: np.ndarray, history: sp.csr_matrix) -> torch.Tensor:
        self._check_fitted()
        return csr_to_dense(history, self.device, binary=True) @ self.weights

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._check_fitted()
        return {"weights": self.weights}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.device = self._resolve_device()
        self.weights = state["weights"].float().to(self.device)
        self.n_items = int(self.weights.shape[0])
        self._fitted = True


# -- implicit ALS / BPR -----------------------------------------------------------------------


def _blas_single_thread() -> threadpool_limits:
    """implicit parallelises itself and asks for single-threaded BLAS while it fits."""
    return threadpool_limits(1, "blas")


class _FactorModel(_Baseline):
    """A wrapped `implicit` matrix-factorisation model: float32 user and item factors."""

    user_factors: np.ndarray
    item_factors: np.ndarray

    def _use_gpu(self) -> bool:
        import implicit.gpu

        return bool(implicit.gpu.HAS_CUDA) and self._resolve_device().type == "cuda"

    def _make_implicit(self, use_gpu: bool) -> Any:
        raise NotImplementedError

    def fit(self, train: Interactions, valid: EvalSplit | None = None,
            ctx: FitContext | None = None) -> Self:
        x = self._start_fit(train)
        use_gpu = self._use_gpu()
        model = self._make_implicit(use_gpu)
        quiet = ctx.quiet if ctx is not None else True
        with _blas_single_thread():
            model.fit(x, show_progress=not quiet)
        if use_gpu:
            model = model.to_cpu()  # scoring and fold-in run on the float32 CPU factors
        self._set_factors(np.asarray(model.user_factors), np.asarray(model.item_factors))
        self._fitted = True
        return self

    def _set_factors(self, users: np.ndarray, items: np.ndarray) -> None:
        self.user_factors = np.ascontiguousarray(users, dtype=np.float32)
        self.item_factors = np.ascontiguousarray(items, dtype=np.float32)
        self._item_factors_t = torch.from_numpy(self.item_factors).to(self.device)
        self.n_users, self.n_items = len(self.user_factors), len(self.item_factors)

    def _move(self) -> None:
        self._item_factors_t = self._item_factors_t.to(self.device)

    def _fold_in(self, history: sp.csr_matrix) -> np.ndarray:
        """Factors for users the model has no (or no current) factors for, from their history."""
        raise NotImplementedError

    def _user_vectors(self, users: np.ndarray, history: sp.csr_matrix) -> np.ndarray:
        users = np.asarray(users, dtype=np.int64)
        known = (users >= 0) & (users < self.n_users)
        out = np.empty((len(users), self.user_factors.shape[1]), dtype=np.float32)
        out[known] = self.user_factors[users[known]]
        if not known.all():
            out[~known] = self._fold_in(binarize(history[~known]))
        return out

    def score(self, users: np.ndarray, history: sp.csr_matrix) -> torch.Tensor:
        self._check_fitted()
        vectors = torch.from_numpy(self._user_vectors(users, history)).to(self.device)
        return vectors @ self._item_factors_t.T

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._check_fitted()
        return {"user_factors": torch.from_numpy(self.user_factors),
                "item_factors": torch.from_numpy(self.item_factors)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.device = self._resolve_device()
        self._set_factors(state["user_factors"].float().numpy(),
                          state["item_factors"].float().numpy())
        self._fitted = True


class ALSConfig(StrictConfig):
    factors: int = Field(64, ge=1)
    regularization: float = Field(0.01, ge=0)
    alpha: float = Field(1.0, gt=0, description="confidence of an observed interaction")
    iterations: int = Field(15, ge=1)
    recalculate_user: bool = Field(
        True, description="fold every scored user in from the history given to score")
    seed: int = 0
    num_threads: int = Field(0, ge=0, description="0: all cores")
    device: str = "auto"


class ALS(_FactorModel):
    """implicit's ALS (Hu, Koren & Volinsky 2008) with conjugate-gradient updates.

    Scoring folds users in from the history it is given: one exact least-squares solve against
    the item factors (implicit's ``recalculate_user``, the same step ALS training makes). By
    default every scored user is folded in (``recalculate_user=True``), so interactions that
    arrived after training (the validation part, when scoring the test part) count, exactly as
    they do for EASE, ItemKNN and the autoencoders; with ``recalculate_user=False`` known users
    keep their trained factors and only unknown users (``-1``) are folded in.
    """

    name: ClassVar[str] = "als"
    Config: ClassVar[type[StrictConfig]] = ALSConfig
    # What --tune searches: the grid, and the Optuna study's space (`recsys.models.tuning`).
    tune_grid = {
        "factors": [64, 256],
        "regularization": [1.0, 10.0, 30.0, 100.0],
        "alpha": [1.0, 10.0, 30.0],
    }
    search_space = {
        "factors": {"low": 16, "high": 512, "log": True},
        "regularization": {"low": 0.01, "high": 300.0, "log": True},
        "alpha": {"low": 0.5, "high": 100.0, "log": True},
    }

    def _make_implicit(self, use_gpu: bool) -> Any:
        from implicit.als import AlternatingLeastSquares

        c = self.config
        return AlternatingLeastSquares(
            factors=c.factors, regularization=c.regularization, alpha=c.alpha,
            iterations=c.iterations, random_state=c.seed, num_threads=c.num_threads,
            use_gpu=use_gpu)

    def _set_factors(self, users: np.ndarray, items: np.ndarray) -> None:
        super()._set_factors(users, items)
        # A CPU model holding the trained item factors, for implicit's fold-in solver.
        self._solver = self._make_implicit(use_gpu=False)
        self._solver.item_factors = self.item_factors
        self._solver.user_factors = self.user_factors

    def _fold_in(self, history: sp.csr_matrix) -> np.ndarray:
        if history.shape[0] == 0:
            return np.zeros((0, self.item_factors.shape[1]), np.float32)
        rows = np.arange(history.shape[0])
        return np.asarray(self._solver.recalculate_user(rows, history), dtype=np.float32)

    def _user_vectors(self, users: np.ndarray, history: sp.csr_matrix) -> np.ndarray:
        if self.config.recalculate_user:
            return self._fold_in(binarize(history))
        return super()._user_vectors(users, history)


class BPRConfig(StrictConfig):
    factors: int = Field(64, ge=1)
    learning_rate: float = Field(0.01, gt=0)
    regularization: float = Field(0.01, ge=0)
    iterations: int = Field(100, ge=1)
    verify_negative_samples: bool = True
    seed: int = 0
    num_threads: int = Field(0, ge=0, description="0: all cores (Hogwild: not bit-reproducible)")
    device: str = "auto"


class BPR(_FactorModel):
    """implicit's BPR (Rendle et al. 2009), trained by parallel SGD over sampled triples.

    implicit appends an item-bias column to the item factors (and a constant 1 to the user
    factors). BPR has no closed-form fold-in, so a user unknown to the model (``-1``) gets the
    bias-only vector ``(0, ..., 0, 1)``: items ranked by their learned bias, a popularity-like
    list, rather than a guess at latent factors.
    """

    name: ClassVar[str] = "bpr"
    Config: ClassVar[type[StrictConfig]] = BPRConfig
    # What --tune searches: the grid, and the Optuna study's space (`recsys.models.tuning`).
    tune_grid = {
        "factors": [32, 64, 128],
        "learning_rate": [0.003, 0.01, 0.03],
        "regularization": [0.01, 0.1],
    }
    search_space = {
        "factors": {"low": 16, "high": 256, "log": True},
        "learning_rate": {"low": 0.001, "high": 0.1, "log": True},
        "regularization": {"low": 0.0001, "high": 1.0, "log": True},
    }

    def _make_implicit(self, use_gpu: bool) -> Any:
        from implicit.bpr import BayesianPersonalizedRanking

        c = self.config
        return BayesianPersonalizedRanking(
            factors=c.factors, learning_rate=c.learning_rate, regularization=c.regularization,
            iterations=c.iterations, verify_negative_samples=c.verify_negative_samples,
            random_state=c.seed, num_threads=c.num_threads, use_gpu=use_gpu)

    def _fold_in(self, history: sp.csr_matrix) -> np.ndarray:
        out = np.zeros((history.shape[0], self.item_factors.shape[1]), dtype=np.float32)
        out[:, -1] = 1.0
        return out


__all__ = ["ALS", "BPR", "EASE", "ItemKNN", "Popularity", "binarize", "item_gram_blocks"]
