"""Data-parallel training (PyTorch DistributedDataParallel) for the neural models, under torchrun.

    torchrun --nproc_per_node=4 -m recsys.cli train multvae --data DIR --out RUN_DIR

torchrun starts one process per GPU (or per CPU worker) and sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and the rendezvous address; `recsys train` sees them (`launched_by_torchrun`) and
joins the process group (`init_from_env`: NCCL with one GPU per process on CUDA, gloo on CPU).
From then on `recsys.training.fit` trains with `DistributedTrainer`, the shared `Trainer` with
these changes:

- rows are sharded: every rank draws the same seeded permutation and keeps every
  ``world_size``-th row (`RowSampler`, as `torch.utils.data.DistributedSampler` does). The
  config's ``batch_size`` is the *global* batch: each rank takes ``batch_size // world_size``
  rows, so one config gives the same optimisation on any number of processes, and the rows of
  global batch ``j`` are exactly those of batch ``j`` of a one-process run;
- gradients are averaged over ranks by `DistributedDataParallel`: ``model.network`` is the DDP
  wrapper while an epoch trains (model code keeps reading its attributes, ``self.network.encoder``
  and the like) and the plain network otherwise (validation, checkpoints, saving). A model whose
  loss *sums* over its rows (``loss_reduction = "sum"``: AutoRec) back-propagates
  ``world_size * loss``, so the averaged gradient is the global batch's sum;
- per-epoch means of the step outputs are all-reduced (sums and batch counts);
- validation runs on rank 0 and its value is broadcast, so every rank takes the same
  early-stopping and best-epoch decisions;
- only rank 0 writes checkpoints, logs to the tracker and prints (see `Trainer.is_main`);
  `recsys train` writes the run directory and logs to MLflow from rank 0 only;
- torch's global RNG (dropout, VAE noise) is reseeded at each epoch from (seed, epoch, rank):
  ranks draw independent noise, and a resumed run draws what an uninterrupted one would.

Models that step their own optimisers (``manual_optimization``: RecVAE, CFGAN) are refused with
one line: their several optimisers and alternating phases would each need their own gradient
synchronisation.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from recsys.data.interactions import EvalSplit, Interactions
from recsys.errors import RecsysError
from recsys.models.base import FitContext
from recsys.models.neural import NeuralRecommender
from recsys.training.trainer import RowSampler, Trainer, TrainResult, Validator

# What torchrun (torch.distributed.run) sets in every worker's environment.
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the group and the device it trains on."""

    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun(environ: Mapping[str, str] | None = None) -> bool:
    """True in a worker started by torchrun (or any launcher that sets its variables)."""
    environ = os.environ if environ is None else environ
    return all(key in environ for key in TORCHRUN_ENV)


def env_rank(environ: Mapping[str, str] | None = None) -> int:
    """This worker's global rank from the environment (0 outside a launch)."""
    environ = os.environ if environ is None else environ
    return int(environ.get("RANK", "0"))


def is_distributed() -> bool:
    """A process group is initialised: training is data-parallel."""
    return dist.is_available() and dist.is_initialized()


def refuse(message: str) -> NoReturn:
    """A user error in a distributed launch: rank 0 reports it in one line (exit 2), the other
    ranks exit with the same code silently, so the message is printed once."""
    if env_rank() == 0:
        raise RecsysError(message)
    raise SystemExit(RecsysError.exit_code)


def _device_for(requested: str | None, local_rank: int) -> torch.device:
    """One device per process: ``cuda:LOCAL_RANK`` when CUDA is asked for (or ``auto`` finds it),
    else the CPU. An explicit ``cuda:N`` is replaced too: torchrun, not the flag, picks the GPU."""
    requested = (requested or "auto").lower()
    if requested.startswith("mps"):
        refuse("--device mps: distributed training runs on CUDA (NCCL) or the CPU (gloo); "
               "use --device cuda or cpu")
    wants_cuda = requested.startswith("cuda") or (requested == "auto"
                                                  and torch.cuda.is_available())
    if not wants_cuda:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        refuse(f"--device {requested}: CUDA is not available on this node")
    count = torch.cuda.device_count()
    if local_rank >= count:
        refuse(f"torchrun started more processes on this node than it has GPUs (local rank "
               f"{local_rank}, {count} GPUs); set --nproc_per_node={count} or less")
    return torch.device("cuda", local_rank)


def init_from_env(device: str | None = None) -> DistInfo:
    """Join the process group torchrun prepared (``env://``); idempotent."""
    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    where = _device_for(device, local_rank)
    backend = "nccl" if where.type == "cuda" else "gloo"
    if where.type == "cuda":
        torch.cuda.set_device(where)
    if not is_distributed():
        kwargs: dict[str, Any] = {"device_id": where} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, init_method="env://", **kwargs)
    return DistInfo(rank, world_size, local_rank, dist.get_backend(), where)


@contextlib.contextmanager
def distributed_session(device: str | None = None) -> Iterator[DistInfo | None]:
    """Within a torchrun launch: join the group (and leave it at the end if this call joined it);
    otherwise yield ``None`` and do nothing."""
    if not launched_by_torchrun():
        yield None
        return
    owned = not is_distributed()
    info = init_from_env(device)
    try:
        yield info
    finally:
        if owned and is_distributed():
            dist.destroy_process_group()


def share_error(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run ``fn`` on rank 0 only (a check with side effects, such as clearing ``--out``); a
    `RecsysError` it raises stops every rank (`refuse`), not just rank 0 while the others wait."""
    message = [None]
    result = None
    if dist.get_rank() == 0:
        try:
            result = fn(*args, **kwargs)
        except RecsysError as exc:
            message = [str(exc)]
    dist.broadcast_object_list(message, src=0)
    if message[0] is not None:
        refuse(message[0])
    return result


class _SharedDDP(DistributedDataParallel):
    """DDP that lends the wrapped network's attributes: model code written for the plain network
    (``self.network.encoder.weight``, ``self.network.weights()``) runs unchanged on the wrapper,
    while calling it (``self.network(x)``) goes through DDP's forward and gradient hooks."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            modules = self.__dict__.get("_modules") or {}
            if name == "module" or "module" not in modules:
                raise
            return getattr(modules["module"], name)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of torch's global RNG for one epoch on one rank (independent streams per rank)."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1, np.uint64)[0]
               % (2**63))


class DistributedTrainer(Trainer):
    """`Trainer` for one rank of a data-parallel run (see the module docstring)."""

    def __init__(self, model: NeuralRecommender, ctx: FitContext | None = None, *,
                 validate: Validator | None = None) -> None:
        if not is_distributed():
            raise RuntimeError("DistributedTrainer needs an initialised process group "
                               "(launch with torchrun; see recsys.training.distributed)")
        if model.manual_optimization:
            raise RecsysError(f"{model.name} steps its own optimisers (manual_optimization), "
                              "which distributed training does not support; train it in one "
                              "process (without torchrun)")
        super().__init__(model, ctx, validate=validate)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        reduction = type(model).loss_reduction
        if reduction not in ("mean", "sum"):
            raise ValueError(f"{type(model).__name__}.loss_reduction must be 'mean' or 'sum'")
        self.summed_loss = reduction == "sum"
        self.ddp: _SharedDDP | None = None

    # -- setup -----------------------------------------------------------------------------------

    def _setup(self, train: Interactions) -> None:
        super()._setup(train)
        cfg = self.config
        # The config's batch is the global one; each rank takes its share of it.
        per_rank = max(1, cfg.batch_size // self.world_size)
        if per_rank * self.world_size != cfg.batch_size and self.is_main and not self.ctx.quiet:
            print(f"note: batch_size {cfg.batch_size} is the global batch; {self.world_size} "
                  f"processes take {per_rank} rows each ({per_rank * self.world_size} per step)",
                  file=sys.stderr)
        self.sampler = RowSampler(self.sampler.rows, per_rank, seed=cfg.seed, rank=self.rank,
                                  world_size=self.world_size)
        # NCCL moves only CUDA tensors; gloo takes CPU ones.
        self.comm_device = self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def _resume(self) -> int | None:
        epoch = super()._resume()
        # Every rank must continue from the same checkpoint: the run directory has to be on
        # storage that every node sees.
        found = torch.tensor([-1 if epoch is None else epoch] * 2, dtype=torch.int64,
                             device=self.comm_device)
        found[1].neg_()
        dist.all_reduce(found, op=dist.ReduceOp.MAX)
        newest, oldest = int(found[0]), -int(found[1])
        if newest != oldest:
            refuse(f"--resume: the ranks found different checkpoints under "
                   f"{self.checkpoint_dir} (epochs {oldest} to {newest}); the run directory must "
                   "be on storage that every node sees")
        return epoch

    # -- training --------------------------------------------------------------------------------

    def fit(self, train: Interactions, valid: EvalSplit | None = None) -> TrainResult:
        try:
            return super().fit(train, valid)
        finally:
            # Drop the wrapper and its gradient hooks now, while the process group is alive: the
            # hooks hold reference cycles that would otherwise outlive the group until exit.
            self.ddp = None
            gc.collect()

    def _train_epoch(self) -> dict[str, Any]:
        net = self.model.network
        if self.ddp is None:
            # Built after any resume: DDP starts by copying rank 0's parameters and buffers to
            # every rank, so all ranks begin identical.
            ids = [self.device] if self.device.type == "cuda" else None
            self.ddp = _SharedDDP(net, device_ids=ids)
        torch.manual_seed(epoch_seed(self.config.seed, self.epoch, self.rank))
        self.model.network = self.ddp
        try:
            return super()._train_epoch()
        finally:
            self.model.network = net

    def _backward(self, loss: torch.Tensor) -> None:
        # DDP averages gradients over ranks; for a loss summed over rows the global batch's
        # gradient is their sum.
        (loss * self.world_size if self.summed_loss else loss).backward()

    # -- reporting -------------------------------------------------------------------------------

    def _reduce(self, sums: dict[str, torch.Tensor], count: int) -> dict[str, float]:
        keys = sorted(sums)  # the same order on every rank
        packed = torch.stack(
            [torch.as_tensor(sums[k]).detach().to(self.comm_device, torch.float64).reshape(())
             for k in keys]
            + [torch.tensor(float(count), dtype=torch.float64, device=self.comm_device)])
        dist.all_reduce(packed)
        total = max(float(packed[-1]), 1.0)
        means = {k: float(packed[i]) / total for i, k in enumerate(keys)}
        if self.summed_loss and "loss" in means:
            # The global batch's loss is the sum of the ranks' losses, not their mean.
            means["loss"] *= self.world_size
        return means

    def _validate(self, valid: EvalSplit) -> float:
        value = torch.full((1,), float("nan"), dtype=torch.float64, device=self.comm_device)
        if self.is_main:
            value[0] = super()._validate(valid)
        dist.broadcast(value, src=0)
        return float(value[0])
