"""The shared training engine: one epoch loop for every neural model.

The engine owns everything that is not the model: batching rows of the training matrix on the
device, the optimiser and learning-rate schedule, gradient clipping, bf16 autocast, validation on
the harness metric, early stopping with the best weights restored, checkpoints and exact resume,
seeds and determinism, the progress bar, the NaN guard and the tracker hook (and, given
``FitContext.refit_epochs``, the refit on train + valid of `recsys.training.refit`). The model
owns its network, its loss and its step (`recsys.models.neural.NeuralRecommender`); nothing here
knows which model it trains.

Two seams are kept for distributed training (DDP): `RowSampler` is the only place that decides
which rows form which batch (a sharded sampler replaces it), and `Trainer._reduce` /
`Trainer._validate` are the only places that turn per-process numbers into reported ones.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from recsys.config import TrainConfig
from recsys.data.interactions import EvalSplit, Interactions
from recsys.errors import RecsysError
from recsys.evaluation.metrics import lower_is_better
from recsys.models.base import resolve_device
from recsys.models.neural import NeuralRecommender
from recsys.models.nn import build_optimizer
from recsys.training.api import (
    Batch,
    FitContext,
    TrainResult,
    batches_per_epoch,
    trained_rows,
)
from recsys.training.checkpoint import (
    CHECKPOINT_DIR,
    latest_checkpoint,
    load_checkpoint,
    refit_checkpoint_dir,
    save_checkpoint,
)

# Config keys that may differ between an interrupted run and its resumption: they change how long
# or where training runs, not what one epoch computes.
RESUMABLE_CHANGES = frozenset({"epochs", "patience", "device", "checkpoint_every", "cuda_graph",
                               "tf32"})

Validator = Callable[["NeuralRecommender", EvalSplit], float]


class TrainingDiverged(RecsysError):
    """The loss became NaN or infinite; training stopped and the last good checkpoint is kept."""


# -- seeds, determinism, RNG state ---------------------------------------------------------------

def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure_determinism(deterministic: bool) -> None:
    """Ask torch for deterministic kernels (warn, not fail, where one has none)."""
    if deterministic:
        # cuBLAS needs this set before its first call to be deterministic.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic


@contextlib.contextmanager
def deterministic_threads(deterministic: bool) -> Iterator[None]:
    """With ``deterministic``, run the block on one CPU thread (torch's intra-op pool), then
    put the count back. torch splits work at thread boundaries: reductions sum their chunks in
    another order, and element-wise kernels (a sigmoid) give the elements a chunk boundary puts
    in a scalar tail rather than a vector lane other last bits, so float results move in the
    last digits with the thread count (1 vs 2 threads changed AutoRec's weights). On one thread
    a deterministic run's numbers do not depend on the machine's thread settings. CUDA kernels
    are unaffected (`configure_determinism` covers them)."""
    if not deterministic:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def rng_state() -> dict[str, Any]:
    """Global RNG states as tensors and plain values (loadable with ``weights_only=True``)."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": int(version), "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached"]))
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- batches ---------------------------------------------------------------------------------------

class RowSampler:
    """Which rows form which batch, epoch after epoch.

    Rows are shuffled each epoch by a dedicated, seeded `torch.Generator` (its state is part of
    a checkpoint, so a resumed run draws the same permutations). For DDP every rank builds the
    same permutation from the same seed and keeps every ``world_size``-th row from its ``rank``,
    as `torch.utils.data.DistributedSampler` does; the permutation is padded by wrapping so every
    rank gets the same number of batches.
    """

    def __init__(self, rows: np.ndarray | torch.Tensor, batch_size: int, seed: int = 0,
                 shuffle: bool = True, rank: int = 0, world_size: int = 1) -> None:
        self.rows = torch.as_tensor(np.asarray(rows), dtype=torch.int64)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.rank, self.world_size = int(rank), int(world_size)
        self.generator = torch.Generator().manual_seed(int(seed))

    def __len__(self) -> int:
        return batches_per_epoch(len(self.rows), self.batch_size, self.world_size)

    def epoch_batches(self) -> list[torch.Tensor]:
        """Row ids of each batch of the next epoch (advances the generator once)."""
        order = self.rows
        if self.shuffle:
            order = order[torch.randperm(len(order), generator=self.generator)]
        if self.world_size > 1:
            total = math.ceil(len(order) / self.world_size) * self.world_size
            order = torch.cat([order, order[: total - len(order)]])[self.rank::self.world_size]
        return list(order.split(self.batch_size))

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


class DeviceRows:
    """A CSR matrix kept on the device; `rows` builds dense float32 batches there.

    The three CSR arrays are copied once (pinned, non-blocking on CUDA); a batch is gathered with
    a handful of vectorised index operations, with no Python loop over rows and no dense copy on
    the host. The row pointers are also kept on the host: a batch's number of stored entries is
    summed there, so building a batch never waits for the GPU (a host sync per batch cost a
    third of a Mult-VAE epoch on an H100).
    """

    def __init__(self, matrix: sp.csr_matrix, device: torch.device) -> None:
        matrix = matrix.tocsr()
        matrix.sort_indices()
        self.shape = matrix.shape
        self.device = device
        self.host_indptr = matrix.indptr.astype(np.int64)
        arrays = (torch.from_numpy(self.host_indptr),
                  torch.from_numpy(matrix.indices.astype(np.int64)),
                  torch.from_numpy(matrix.data.astype(np.float32)))
        if device.type == "cuda":
            arrays = tuple(a.pin_memory().to(device, non_blocking=True) for a in arrays)
        else:
            arrays = tuple(a.to(device) for a in arrays)
        self.indptr, self.indices, self.data = arrays

    def rows(self, index: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Dense rows ``index`` (a host or device tensor), written into ``out`` if given."""
        host = index.cpu().numpy()  # a no-op for the trainer's host-side batches
        total = int((self.host_indptr[host + 1] - self.host_indptr[host]).sum())
        index = index.to(self.device, non_blocking=True)
        starts = self.indptr[index]
        lengths = self.indptr[index + 1] - starts
        # output_size: repeat_interleave would otherwise read the total back from the device.
        row_ids = torch.repeat_interleave(torch.arange(len(index), device=self.device), lengths,
                                          output_size=total)
        # Position of every stored entry of the batch inside the CSR arrays.
        first = torch.repeat_interleave(starts - (torch.cumsum(lengths, 0) - lengths), lengths,
                                        output_size=total)
        positions = first + torch.arange(total, device=self.device)
        if out is None:
            out = torch.zeros(len(index), self.shape[1], dtype=torch.float32, device=self.device)
        else:
            out.zero_()
        out[row_ids, self.indices[positions]] = self.data[positions]
        return out


class GraphedStep:
    """The training step of a full-size batch, captured once as a CUDA graph and replayed.

    A Mult-VAE step at ML-20M shape is ~60 small kernels; launched one by one from Python the GPU
    waits on the CPU most of the time (1.0-1.2 s per epoch on an H100, whatever the precision).
    Replaying them as one graph removes the launch cost. The batch is gathered into fixed
    buffers outside the graph (its number of entries varies); the step number reaches the model
    as a 0-dim device tensor (models that opt in, ``cuda_graph_safe``, compute schedules such as
    KL annealing from it with tensor ops). The first ``WARMUP`` steps run eagerly on a side
    stream, as capture requires; they are real training steps. A smaller last batch runs eagerly.
    """

    WARMUP = 3

    def __init__(self, trainer: Trainer, batch_size: int, n_columns: int) -> None:
        dev = trainer.device
        self.trainer = trainer
        self.x = torch.zeros(batch_size, n_columns, dtype=torch.float32, device=dev)
        self.index = torch.zeros(batch_size, dtype=torch.int64, device=dev)
        self.step = torch.zeros((), dtype=torch.int64, device=dev)
        self.stream = torch.cuda.Stream(dev)
        # Capture and warm-up run on side streams and the last, smaller batch on the default
        # one, so autograd warns that gradients accumulate across streams: expected here (the
        # streams are ordered by wait_stream), so the warning is off while graphs are used.
        quiet = getattr(torch.autograd.graph, "set_warn_on_accumulate_grad_stream_mismatch", None)
        if quiet is not None:
            quiet(False)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: dict[str, Any] = {}
        self.warm = 0

    def run(self, index: torch.Tensor, step: int) -> dict[str, Any]:
        t = self.trainer
        t.batcher.rows(index, out=self.x)
        self.index.copy_(index, non_blocking=True)
        self.step.fill_(step)
        batch = Batch(rows=self.x, index=self.index)
        if self.graph is None and self.warm < self.WARMUP:
            self.stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.stream):
                out = t._step(batch, self.step)
            torch.cuda.current_stream().wait_stream(self.stream)
            self.warm += 1
            return out
        if self.graph is None:
            for opt in t.optimizers:
                opt.zero_grad(set_to_none=True)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.out = t._step(batch, self.step)
        self.graph.replay()  # capture records without running: replay runs this step too
        return self.out


# -- optimisers and schedules ---------------------------------------------------------------------

def build_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, metric_lower: bool
                    ) -> Any:
    """One scheduler per optimiser, stepped once per epoch (``plateau``: on validation)."""
    if config.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    if config.lr_schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step_size,
                                               gamma=config.lr_gamma)
    if config.lr_schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min" if metric_lower else "max", factor=config.lr_gamma,
            patience=config.lr_step_size)
    return None


# -- the engine ------------------------------------------------------------------------------------

class Trainer:
    """Fits a `NeuralRecommender` with the options of its config (a `TrainConfig`).

    Each epoch: shuffled batches of non-empty rows of ``model.training_matrix(train)``, one
    ``training_step`` (and, unless the model steps itself, backward, clipping, optimiser step)
    per batch; every ``eval_every`` epochs (and after the last) the config's ``metric`` on
    ``valid`` (direction from `lower_is_better`); ``patience`` counts validations without
    improvement; then the LR schedule, a checkpoint every ``checkpoint_every`` epochs (and at the
    end), the tracker and the progress line. At the end the best validated weights are restored
    (the last ones without ``valid``).

    A refit (``ctx.refit_epochs``, see `recsys.training.refit`) trains exactly that many epochs
    with no validation and checkpoints into its own folder; everything else is as above (the LR
    schedule still spans the config's ``epochs``, as it did in the fit that chose the count).

    ``validate`` replaces the harness evaluation (a function ``(model, valid) -> value`` of the
    config's metric); it exists for tests and for callers with their own protocol.
    """

    def __init__(self, model: NeuralRecommender, ctx: FitContext | None = None, *,
                 validate: Validator | None = None) -> None:
        self.model = model
        self.ctx = ctx or FitContext()
        self.config: TrainConfig = model.config  # type: ignore[assignment]
        self.metric = self.config.metric
        self.lower = lower_is_better(self.metric)
        self._custom_validate = validate
        # How many epochs this fit runs: the config's, or a refit's count.
        self.refit = self.ctx.refit_epochs is not None
        self.epochs = int(self.ctx.refit_epochs) if self.refit else self.config.epochs
        self.checkpoint_dir: Path | None = None
        if self.ctx.run_dir is not None:
            self.checkpoint_dir = (refit_checkpoint_dir(self.ctx.run_dir, self.epochs)
                                   if self.refit else Path(self.ctx.run_dir) / CHECKPOINT_DIR)
        self.last_checkpoint: Path | None = None
        # A distributed run (one process per rank) sets these before `fit`: the sampler shards
        # rows by them, and only rank 0 writes checkpoints, reports to the tracker and prints.
        self.rank, self.world_size = 0, 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- setup -------------------------------------------------------------------------------

    def _setup(self, train: Interactions) -> None:
        cfg, model = self.config, self.model
        configure_determinism(cfg.deterministic)
        seed_everything(cfg.seed)
        self.device = resolve_device(cfg.device)
        if cfg.bf16 and self.device.type != "cuda":
            warnings.warn(f"bf16 autocast needs CUDA; training in float32 on {self.device}",
                          stacklevel=3)
        self.autocast = cfg.bf16 and self.device.type == "cuda"
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
        model.n_users, model.n_items = train.n_users, train.n_items
        model.device = self.device
        model.build(train.n_users, train.n_items)
        model.setup(train, self.ctx)
        model.network.to(self.device)

        matrix = model.training_matrix(train).tocsr().astype(np.float32)
        self.matrix_shape = tuple(int(x) for x in matrix.shape)
        rows = trained_rows(matrix, model.train_on_empty_rows)
        if len(rows) == 0:
            raise RecsysError(f"{model.name}: the training data has no interactions")
        self.sampler = RowSampler(rows, cfg.batch_size, seed=cfg.seed, rank=self.rank,
                                  world_size=self.world_size)
        self.batcher = DeviceRows(matrix, self.device)

        if model.manual_optimization:
            self.optimizers = list(model.configure_optimizers())
            if not self.optimizers:
                raise RuntimeError(f"{type(model).__name__} sets manual_optimization but "
                                   "configure_optimizers returned no optimiser")
        else:
            self.optimizers = [build_optimizer(cfg, model.network.parameters(),
                                               cuda=self.device.type == "cuda")]
        self.schedulers = [build_scheduler(cfg, opt, self.lower) for opt in self.optimizers]
        # On CUDA the NaN guard records the first bad step on the device (read once per epoch):
        # reading the loss back every step would make the CPU wait for the GPU.
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=self.device)
        self.bad_value = torch.zeros((), dtype=torch.float32, device=self.device)
        self.graphed: GraphedStep | None = None
        if (cfg.cuda_graph and self.device.type == "cuda" and model.cuda_graph_safe
                and not model.manual_optimization and self.world_size == 1
                and cfg.lr_schedule == "none"):  # a schedule would change lr under the graph
            self.graphed = GraphedStep(self, cfg.batch_size, matrix.shape[1])

        self.epoch = 0
        self.global_step = 0
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad_evals = 0
        self.stopped_early = False
        self.history: list[dict[str, float]] = []

    # -- checkpoints -------------------------------------------------------------------------

    def _payload(self) -> dict[str, Any]:
        def cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {k: v.detach().cpu() for k, v in state.items()}

        return {
            "model": self.model.name,
            "shape": list(self.matrix_shape),
            "config": self.config.model_dump(),
            "epoch": self.epoch,
            "global_step": self.global_step,
            "network": cpu(self.model.network.state_dict()),
            "optimizers": [opt.state_dict() for opt in self.optimizers],
            "schedulers": [s.state_dict() if s is not None else None for s in self.schedulers],
            "sampler": self.sampler.state_dict(),
            "rng": rng_state(),
            "best": {"value": self.best_value, "epoch": self.best_epoch,
                     "bad_evals": self.bad_evals,
                     "state": cpu(self.best_state) if self.best_state is not None else None},
            "stopped_early": self.stopped_early,
            "history": self.history,
        }

    def _save_checkpoint(self) -> None:
        if self.checkpoint_dir is None or not self.is_main:
            return
        self.last_checkpoint = save_checkpoint(self.checkpoint_dir, self._payload(), self.epoch)

    def _resume(self) -> int | None:
        """Restore the newest checkpoint, if any; return its epoch."""
        if self.checkpoint_dir is None:
            raise RecsysError("resume needs a run directory (FitContext.run_dir) to read "
                              "checkpoints from")
        path = latest_checkpoint(self.checkpoint_dir)
        if path is None:
            return None
        payload = load_checkpoint(path)
        if payload.get("model") != self.model.name:
            raise RecsysError(f"{path}: checkpoint of model '{payload.get('model')}', "
                              f"cannot resume '{self.model.name}' from it")
        if tuple(payload["shape"]) != self.matrix_shape:
            raise RecsysError(f"{path}: checkpoint trained on a {tuple(payload['shape'])} "
                              f"matrix, the data now gives {self.matrix_shape}; resume with the "
                              "same prepared data")
        current = self.config.model_dump()
        changed = sorted(k for k in current
                         if k not in RESUMABLE_CHANGES and payload["config"].get(k) != current[k])
        if changed:
            k = changed[0]
            raise RecsysError(f"{path}: config key '{k}' was {payload['config'].get(k)!r} in "
                              f"the interrupted run and is {current[k]!r} now; resume with the "
                              f"same config (only {', '.join(sorted(RESUMABLE_CHANGES))} may "
                              "change)")
        self.model.network.load_state_dict(payload["network"])
        for opt, state in zip(self.optimizers, payload["optimizers"], strict=True):
            opt.load_state_dict(state)
        for sched, state in zip(self.schedulers, payload["schedulers"], strict=True):
            if sched is not None and state is not None:
                sched.load_state_dict(state)
        self.sampler.load_state_dict(payload["sampler"])
        set_rng_state(payload["rng"])
        self.epoch = int(payload["epoch"])
        self.global_step = int(payload["global_step"])
        best = payload["best"]
        self.best_value, self.best_epoch = best["value"], best["epoch"]
        self.bad_evals = int(best["bad_evals"])
        self.best_state = ({k: v.to(self.device) for k, v in best["state"].items()}
                           if best["state"] is not None else None)
        self.stopped_early = bool(payload["stopped_early"])
        self.history = list(payload["history"])
        self.last_checkpoint = path
        return self.epoch

    # -- reporting seams (one place each, for DDP) ---------------------------------------------

    def _reduce(self, sums: dict[str, torch.Tensor], count: int) -> dict[str, float]:
        """Per-epoch means of the step outputs (a distributed run all-reduces sums here)."""
        return {k: float(v) / max(count, 1) for k, v in sums.items()}

    def _validate(self, valid: EvalSplit) -> float:
        self.model.network.eval()
        with torch.no_grad():
            if self._custom_validate is not None:
                return float(self._custom_validate(self.model, valid))
            from recsys.evaluation.evaluate import evaluate

            result = evaluate(self.model, valid, [self.metric],
                              batch_size=self.config.batch_size, device=self.device)
            return float(result.summary[self.metric])

    def _improved(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best_value is None:
            return True
        return value < self.best_value if self.lower else value > self.best_value

    # -- the loop ------------------------------------------------------------------------------

    def fit(self, train: Interactions, valid: EvalSplit | None = None) -> TrainResult:
        # TF32 is a process-wide switch: set for this fit (on CUDA) and put back after it.
        before = torch.backends.cuda.matmul.allow_tf32
        try:
            with deterministic_threads(self.config.deterministic):
                return self._fit(train, valid)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = before

    def _fit(self, train: Interactions, valid: EvalSplit | None = None) -> TrainResult:
        started = time.perf_counter()
        self._setup(train)
        cfg, model = self.config, self.model
        resumed_from = self._resume() if self.ctx.resume else None
        if self.is_main:
            self.ctx.callbacks.on_fit_start({"model": model.name, **cfg.model_dump(),
                                             "resolved_device": str(self.device)})
            if resumed_from is not None:
                # Epochs checkpointed but never logged (a kill between the two) are not trained
                # again: send them now, so that a resume killed in turn loses none.
                self.ctx.callbacks.on_resumed(self.history)
        if valid is None and not self.refit and self.is_main:
            # Even with --quiet: a run that silently trains to `epochs` looks like one that
            # early-stopped (a refit has no validation by design, and its caller says so).
            print(f"note: no validation part: early stopping is off, the model of the last "
                  f"epoch ({self.epochs}) is kept", file=sys.stderr)
        epoch_seconds: list[float] = []
        while self.epoch < self.epochs and not self.stopped_early:
            self.epoch += 1
            tick = time.perf_counter()
            record = self._train_epoch()
            last = self.epoch == self.epochs
            if valid is not None and (self.epoch % cfg.eval_every == 0 or last):
                value = self._validate(valid)
                record[f"valid_{self.metric}"] = value
                if self._improved(value):
                    self.best_value, self.best_epoch, self.bad_evals = value, self.epoch, 0
                    self.best_state = {k: v.detach().clone()
                                       for k, v in model.network.state_dict().items()}
                else:
                    self.bad_evals += 1
                    if cfg.patience is not None and self.bad_evals >= cfg.patience:
                        self.stopped_early = True
                for sched in self.schedulers:
                    if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                        sched.step(value)
            for sched in self.schedulers:
                if sched is not None and not isinstance(
                        sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    sched.step()
            record["seconds"] = time.perf_counter() - tick
            epoch_seconds.append(record["seconds"])
            self.history.append(record)
            model.history_ = self.history
            model.on_epoch_end(self.epoch, record)
            if self.epoch % cfg.checkpoint_every == 0 or last or self.stopped_early:
                self._save_checkpoint()
            if self.is_main:
                self.ctx.callbacks.on_epoch_end(self.epoch, record)
                self._report(record, epoch_seconds)
            key = f"valid_{self.metric}"
            if key in record:
                # Last in the epoch: the hook may end the fit (a search's pruner raises), and the
                # epoch it judged is then logged and checkpointed like any other.
                self.ctx.callbacks.on_validation(self.epoch, record[key])

        if self.best_state is not None:
            model.network.load_state_dict(self.best_state)
        model.network.eval()
        model.history_ = self.history
        result = TrainResult(
            epochs_run=self.epoch, global_step=self.global_step,
            best_epoch=self.best_epoch if self.best_state is not None else self.epoch,
            best_value=self.best_value, metric=self.metric if valid is not None else None,
            stopped_early=self.stopped_early, resumed_from=resumed_from,
            seconds=time.perf_counter() - started, history=self.history)
        model.train_result_ = result
        if self.is_main and not self.ctx.quiet and result.best_value is not None:
            print(fit_summary(result, self.epochs), file=sys.stderr)
        return result

    def _train_epoch(self) -> dict[str, Any]:
        cfg, model = self.config, self.model
        model.network.train()
        batches = self.sampler.epoch_batches()
        lr = float(self.optimizers[0].param_groups[0]["lr"])
        sums: dict[str, torch.Tensor] = {}
        self.first_bad.fill_(-1)
        bar = self._bar(batches)
        shown_at = 0.0
        for index in bar:
            if self.graphed is not None and len(index) == cfg.batch_size:
                out = self.graphed.run(index, self.global_step)
            else:
                out = self._step(Batch(rows=self.batcher.rows(index),
                                       index=index.to(self.device, non_blocking=True)),
                                 self.global_step)
            for key, value in out.items():
                value = torch.as_tensor(value).detach().float()
                # clone: a graph's outputs are overwritten by its next replay
                sums[key] = sums[key] + value if key in sums else value.clone()
            self.global_step += 1
            if not bar.disable and time.monotonic() - shown_at >= 0.5:
                # Reading the loss waits for the GPU: twice a second, not every step.
                shown_at = time.monotonic()
                shown = {"loss": f"{float(torch.as_tensor(out['loss']).detach()):.4g}"}
                if self.history and f"valid_{self.metric}" in self.history[-1]:
                    shown[self.metric] = f"{self.history[-1][f'valid_{self.metric}']:.4f}"
                bar.set_postfix(shown, refresh=False)
        bar.close()
        bad_step = int(self.first_bad)
        if bad_step >= 0:
            self._diverged(float(self.bad_value), bad_step)
        record = {"epoch": self.epoch, **self._reduce(sums, len(batches)), "lr": lr}
        return record

    def _step(self, batch: Batch, step: int | torch.Tensor) -> dict[str, Any]:
        """One batch: the model's loss, the NaN guard, backward, clipping, optimiser step."""
        cfg, model = self.config, self.model
        with self._autocast():
            out = model.training_step(batch, step)
        loss = torch.as_tensor(out["loss"])
        self._guard(loss.detach(), step)
        if not model.manual_optimization:
            for opt in self.optimizers:
                opt.zero_grad(set_to_none=True)
            self._backward(loss)
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.network.parameters(), cfg.grad_clip)
            for opt in self.optimizers:
                opt.step()
        return out

    def _guard(self, loss: torch.Tensor, step: int | torch.Tensor) -> None:
        """Stop on a NaN/Inf loss: on the CPU at once, before the step touches the weights; on
        CUDA the first bad step is kept on the device and `_train_epoch` stops at the epoch's end
        (no checkpoint is written of the weights it spoiled)."""
        if loss.device.type == "cpu":
            if not bool(torch.isfinite(loss).all()):
                self._diverged(float(loss.float()), int(step))
            return
        bad = ~torch.isfinite(loss).all() & (self.first_bad < 0)
        # torch.where, not masked_fill_: a tensor fill value is read back to the host.
        self.first_bad.copy_(torch.where(bad, step, self.first_bad))
        self.bad_value.copy_(torch.where(bad, loss.float(), self.bad_value))

    def _backward(self, loss: torch.Tensor) -> None:
        """Back-propagate one step's loss (a distributed run scales it here, see
        `recsys.training.distributed`)."""
        loss.backward()

    def _diverged(self, value: float, step: int) -> None:
        where = f"epoch {self.epoch}, step {step}"
        keep = (f"the last good checkpoint is {self.last_checkpoint}; resume from it with a "
                "lower lr or a grad_clip" if self.last_checkpoint is not None
                else "no checkpoint was written yet; retry with a lower lr or a grad_clip")
        raise TrainingDiverged(f"{self.model.name}: training stopped, the loss is {value} at "
                               f"{where}; {keep}")

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast:
            # No cast cache under a CUDA graph: each replay must recast the weights.
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16,
                                  cache_enabled=self.graphed is None)
        return contextlib.nullcontext()

    def _bar(self, batches: list[torch.Tensor]) -> Any:
        from tqdm import tqdm  # plain: tqdm.auto warns in notebooks without ipywidgets

        what = "refit epoch" if self.refit else "epoch"
        # disable=None: tqdm draws the bar on a terminal only, so that a log file gets the
        # per-epoch lines of `_report` and no per-batch carriage returns.
        return tqdm(batches, desc=f"{what} {self.epoch}/{self.epochs}", unit="batch",
                    leave=False, disable=True if self.ctx.quiet or not self.is_main else None,
                    dynamic_ncols=True)

    def _report(self, record: dict[str, float], epoch_seconds: list[float]) -> None:
        if self.ctx.quiet:
            return
        from tqdm import tqdm  # plain: tqdm.auto warns in notebooks without ipywidgets

        left = (self.epochs - self.epoch) * float(np.mean(epoch_seconds[-5:]))
        what = "refit epoch" if self.refit else "epoch"
        parts = [f"{what} {self.epoch}/{self.epochs}", f"loss {_number(record['loss'])}"]
        key = f"valid_{self.metric}"
        if key in record:
            best = "" if self.best_epoch != self.epoch else " *"
            parts.append(f"valid {self.metric} {record[key]:.4f}{best}")
        parts.append(f"{record['seconds']:.1f} s")
        if self.epoch < self.epochs and not self.stopped_early:
            parts.append(f"at most ~{_duration(left)} left")
        elif self.stopped_early:
            parts.append(f"early stop (best epoch {self.best_epoch})")
        tqdm.write("  ".join(parts))


def fit_summary(result: TrainResult, epochs: int) -> str:
    """The end of a validated fit in words: the epoch whose weights were kept and its validation
    value, and a note when the fit ran out of epochs while still improving."""
    line = (f"best epoch {result.best_epoch} of {result.epochs_run} restored (valid "
            f"{result.metric} {result.best_value:.4f})")
    if still_improving(result, epochs):
        line += (f"; note: still improving at the last epoch ({epochs}): more epochs may help "
                 f"(--set epochs={2 * epochs})")
    return line


def still_improving(result: TrainResult, epochs: int) -> bool:
    """Whether a validated fit hit its epoch budget with its best epoch the last one."""
    return (result.best_value is not None and not result.stopped_early
            and result.epochs_run >= epochs and result.best_epoch == result.epochs_run)


def _number(value: float) -> str:
    """A loss in one format: about four significant digits with a fixed number of decimals per
    magnitude (0.6931, 12.50, 503.3, 559.0), whole thousands separated (93,314), no exponent."""
    size = abs(value)
    decimals = 0 if size >= 1000 else 1 if size >= 100 else 2 if size >= 10 else 4
    return f"{value:,.{decimals}f}"


def _duration(seconds: float) -> str:
    """Seconds as the other durations of the CLI read: 20 s, 3 min 05 s, 2 h 07 min."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds // 60 % 60:02d} min"


def fit(model: NeuralRecommender, train: Interactions, valid: EvalSplit | None = None,
        ctx: FitContext | None = None, *, validate: Validator | None = None) -> TrainResult:
    """Train ``model`` on ``train`` (early stopping on ``valid``) with the shared engine.

    Inside a distributed launch (torchrun; a process group is initialised, see
    `recsys.training.distributed`) the data-parallel engine trains it instead.
    """
    from recsys.training.distributed import DistributedTrainer, is_distributed

    engine = DistributedTrainer if is_distributed() else Trainer
    return engine(model, ctx, validate=validate).fit(train, valid)
