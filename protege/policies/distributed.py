"""Data-parallel training under ``torchrun`` (PyTorch's DistributedDataParallel).

``torchrun --nproc-per-node=N -m protege.policies.train ...`` (or ``protege-train train.nproc=N``,
which launches it) runs the unchanged training loop in N processes: one per GPU with NCCL, or N
shares of the CPU with gloo. ``train.batch_size`` is the *global* batch: every step, every rank
draws the same global batch of windows (the sampler's shuffle is seeded alike on every rank) and
trains on its slice of it; DDP averages the gradients, which is the gradient of the whole batch.
The random draws of a loss (diffusion noise and timesteps, ACT's latent sample, random crops) are
made for the whole batch on every rank and sliced (:func:`batch_randn_like`, :func:`batch_randint`),
so N processes train as one process with the same global batch would, to float tolerance
(dropout excepted: its masks are per rank). Rank 0 alone logs, writes TensorBoard, evaluates and
saves checkpoints; every rank resumes from them. One rank failing makes torchrun stop the others
and name the failed rank; ``resume=true`` then continues from the last checkpoint.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch


@dataclass(frozen=True)
class Dist:
    """Where this process stands: its rank among ``world`` processes (1: no distribution)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, global_batch: int) -> slice:
        """This rank's slice of a global batch.

        Raises:
            ValueError: a global batch that the processes cannot share evenly.
        """
        if global_batch % self.world:
            raise ValueError(f"train.batch_size={global_batch} is the global batch: it must divide evenly over "
                             f"{self.world} processes")
        per = global_batch // self.world
        return slice(self.rank * per, (self.rank + 1) * per)


def init_from_env(device_setting: str = "auto") -> tuple[Dist, torch.device | None]:
    """Join the process group torchrun set up (``WORLD_SIZE`` > 1 in the environment): NCCL on
    CUDA, gloo on the CPU. Returns (Dist, this rank's device or None to choose as usual)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), None
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and device_setting != "cpu"
    backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return Dist(rank, world, local, backend), device


def all_max(values: list[float], d: Dist) -> list[float]:
    """The largest of each value over every rank (one small all-reduce; the values as they are with one process)."""
    if not d.enabled:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def shutdown(d: Dist) -> None:
    if d.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


# -- the random draws of a loss, the same whichever rank holds a sample ------------------------
_local = threading.local()


@contextmanager
def batch_shard(part: slice, total: int) -> Iterator[None]:
    """Within it, :func:`batch_randn_like` and :func:`batch_randint` draw for the whole batch of
    ``total`` samples and return this rank's ``part``."""
    old = getattr(_local, "shard", None)
    _local.shard = (part, total)
    try:
        yield
    finally:
        _local.shard = old


@contextmanager
def cpu_draws() -> Iterator[None]:
    """Within it, :func:`batch_randn_like` and :func:`batch_randint` draw from the CPU's generator
    whatever the tensors' device (the same noise on a GPU as on the CPU: ``benchmarks/gpu_check.py``)."""
    old = getattr(_local, "cpu", False)
    _local.cpu = True
    try:
        yield
    finally:
        _local.cpu = old


def _rows(n: int) -> tuple[slice, int] | None:
    """The global rows a leading dimension of ``n`` covers under :func:`batch_shard`: ``n`` may be the
    rank's batch or a multiple of it, batch-major (an encoder's batch x observation steps)."""
    shard = getattr(_local, "shard", None)
    if shard is None:
        return None
    part, total = shard
    local = part.stop - part.start
    if n % local:
        raise ValueError(f"a random draw for {n} rows under a batch shard of {local} samples")
    k = n // local
    return slice(part.start * k, part.stop * k), total * k


def batch_randn_like(x: torch.Tensor) -> torch.Tensor:
    """``torch.randn_like(x)`` for a batch-first ``x``, drawn for the whole batch under :func:`batch_shard`."""
    rows = _rows(x.shape[0])
    on = "cpu" if getattr(_local, "cpu", False) else x.device
    if rows is None:
        return torch.randn(x.shape, dtype=x.dtype, device=on).to(x.device)
    part, total = rows
    return torch.randn((total, *x.shape[1:]), dtype=x.dtype, device=on)[part].to(x.device)


def batch_randint(low: int, high: int, n: int, device) -> torch.Tensor:
    """``torch.randint(low, high, (n,))``, drawn for the whole batch under :func:`batch_shard`."""
    rows = _rows(n)
    on = "cpu" if getattr(_local, "cpu", False) else device
    if rows is None:
        return torch.randint(low, high, (n,), device=on).to(device)
    part, total = rows
    return torch.randint(low, high, (total,), device=on)[part].to(device)
