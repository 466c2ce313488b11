"""The one training loop for every policy: ``protege-train policy=<name> task=<name> dataset=<store>``.

A policy differs only in its model and loss (:meth:`Policy.compute_loss`); everything else is
here: data, AdamW with a warmup + cosine schedule, EMA weights (diffusers), bf16 autocast (on CUDA by
default, on a CPU when asked: ``train.bf16``),
TensorBoard scalars, periodic and atomic checkpoints, ``resume=true`` and an optional evaluation
every N steps (the evaluator is chosen in config, e.g. a simulator rollout).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import hydra
from hydra.core.hydra_config import HydraConfig
import numpy as np
import torch
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from .. import configs  # noqa: F401 - registers the configs' resolvers
from ..data.dataset import TaskData, load_training_data
from ..data.store import EpisodeStore, is_url
from .distributed import all_max, batch_shard, init_from_env, shutdown
from ..data.fetch import data_dir, resolve_store
from ..errors import job, run as run_cli
from ..data.sampler import SequenceSampler
from .base import Policy
from .normalizer import Normalizer
from . import malloc
from .onednn import check_setting, describe, onednn_matmul
from .tensors import select_device, to_torch
from .checkpoint import build_policy, read_checkpoint, save_checkpoint
from ..configs.checks import check_settings
from ..errors import is_expected

log = logging.getLogger("protege.train")


class StopRequest:
    """Ctrl-C (SIGINT) as a request: the training loop finishes its step, saves and returns,
    so an interrupted run loses nothing and resumes; a second Ctrl-C raises KeyboardInterrupt."""

    def __init__(self):
        self.requested = False
        try:
            self._old = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: Ctrl-C keeps its default
            self._old = None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("Ctrl-C: saving a checkpoint after this step (Ctrl-C again to abort)")

    def restore(self) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None


def policy_kwargs(policy_cfg: DictConfig) -> dict[str, Any]:
    """The policy constructor's arguments: its config without ``_target_`` and ``name``."""
    kwargs = OmegaConf.to_container(policy_cfg, resolve=True)
    kwargs.pop("_target_", None)
    kwargs.pop("name", None)
    return kwargs


def rng_state(np_rng: np.random.Generator) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np_rng.bit_generator.state, "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], np_rng: np.random.Generator) -> None:
    torch.set_rng_state(state["torch"])
    np_rng.bit_generator.state = state["numpy"]
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def infinite_batches(sampler: SequenceSampler, batch_size: int, rng: np.random.Generator, epoch: list[int]) -> Iterator[dict]:
    while True:
        yield from sampler.batches(batch_size, rng)
        epoch[0] += 1


def images_out_of_memory(stores, obs_spec: dict, cfg: DictConfig) -> bool:
    """``data.in_memory``: true (every array in memory), false (images read from the store's chunks
    as windows are drawn), auto (false when the task's images would take more than
    ``data.max_memory_gb``). Says which and why in the log."""
    setting = cfg.data.get("in_memory", "auto")
    if setting not in (True, False, "auto"):
        raise ValueError(f"data.in_memory must be true, false or auto, got {setting!r}")
    paths = stores if isinstance(stores, list) else [stores]
    need = 0
    for p in paths:
        st = EpisodeStore(p, check_rows=False)
        rows = int(st.episode_ends[: cfg.max_episodes][-1]) if st.n_episodes else 0
        for spec in obs_spec.values():
            if spec.get("type") == "rgb" and spec["source"] in st.keys:
                need += rows * int(np.prod(st.spec(spec["source"]).shape))  # uint8 pixels
    limit = float(cfg.data.get("max_memory_gb", 16)) * 1e9
    lazy = (setting is False) or (setting == "auto" and need > limit)
    if need:
        log.info("data: the task's images (%.2f GB as uint8) %s", need / 1e9,
                 f"read from the store's chunks as windows are drawn (data.in_memory={setting}; a cache of "
                 f"{cfg.data.get('cache_mb', 512)} MB of decoded chunks in each of {cfg.data.get('workers', 2)} workers)"
                 if lazy else f"held in memory (data.in_memory={setting}, max_memory_gb={cfg.data.get('max_memory_gb', 16)})")
    return lazy


class _WindowBatches(torch.utils.data.Dataset):
    """A sampler's batches by their window ids, gathered in DataLoader workers."""

    def __init__(self, sampler: SequenceSampler):
        self.sampler = sampler

    def __getitem__(self, ids):
        return self.sampler.sample(ids)


def lazy_batches(sampler: SequenceSampler, batch_size: int, rng: np.random.Generator, epoch: list[int],
                 workers: int) -> Iterator[dict]:
    """:func:`infinite_batches` with the windows read from the store in ``workers`` processes (the
    batch order drawn here, in the trainer's process)."""
    def ids():
        while True:
            yield from sampler.batch_ids(batch_size, rng)
            epoch[0] += 1

    from ..data.lazy import LazyArray

    # a store in object storage: workers are spawned and open it afresh (a forked one inherits an
    # fsspec client bound to this process's event loop, which fails there)
    remote = any(isinstance(a, LazyArray) and a.remote for a in sampler.arrays.values())
    loader = torch.utils.data.DataLoader(_WindowBatches(sampler), sampler=ids(), batch_size=None, num_workers=workers,
                                         prefetch_factor=2 if workers else None, persistent_workers=workers > 0,
                                         multiprocessing_context="spawn" if remote and workers else None)
    for batch in loader:
        yield {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AMX or AVX512-BF16, as oneDNN sees it)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def bf16_autocast(setting: Any, device: torch.device) -> torch.autocast:
    """The autocast context of a training step for ``train.bf16``: ``auto`` = bf16 on CUDA only,
    ``true`` = bf16 on CUDA or the CPU, ``false`` = never (fp32).

    On a CPU, bf16 pays only where it has native bf16 instructions (AMX or AVX512-BF16, e.g. Intel
    Sapphire Rapids; benchmarks/train_speed.py measures it): elsewhere oneDNN emulates them and a
    step is slower, so ``true`` on such a CPU logs a warning.

    Raises:
        ValueError: ``setting`` is none of auto / true / false.
    """
    if setting not in ("auto", True, False):
        raise ValueError(f"train.bf16 must be auto, true or false, got {setting!r}")
    on = device.type == "cuda" if setting == "auto" else bool(setting)
    if on and device.type == "cpu" and not cpu_has_native_bf16():
        log.warning("train.bf16=true on a CPU without native bf16 instructions: steps will be slower, not faster")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=on)


def adamw(params, device: torch.device, **kwargs) -> torch.optim.AdamW:
    """``torch.optim.AdamW(params, **kwargs)`` as the trainer builds it: PyTorch's fused
    implementation on the CPU and CUDA (one pass over each parameter's weights, gradient and
    moments, where the default CPU implementation makes about ten and allocates temporaries the
    size of the weights, which counts at the paper-size Diffusion Policy's 263 M parameters:
    ``benchmarks/train_speed.py``). The same update up to float rounding; its state dict is the
    default implementation's (checkpoints resume either way)."""
    return torch.optim.AdamW(params, fused=device.type in ("cpu", "cuda") or None, **kwargs)


def sweep_job_dir() -> Path | None:
    """Under ``--multirun``, this job's own folder (``<run_dir>/<job number>``), else None."""
    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if str(hc.mode) != "RunMode.MULTIRUN":
        return None
    return Path(hc.runtime.output_dir)


class LossModule(torch.nn.Module):
    """A policy's ``compute_loss`` as ``forward``, for DistributedDataParallel to wrap."""

    def __init__(self, policy: Policy):
        super().__init__()
        self.policy = policy

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.policy.compute_loss(batch)


class Trainer:
    """Runs one training job described by the full hydra config (see ``configs/train.yaml``)."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.run_dir = sweep_job_dir() or Path(cfg.run_dir)  # --multirun: each job in its own folder
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.dist, rank_device = init_from_env(cfg.device)  # torchrun: this process's rank and device
        self.device = rank_device or select_device(cfg.device)
        self.dist.shard(cfg.train.batch_size)  # a global batch the processes cannot share evenly fails here
        self.accum = int(cfg.train.get("grad_accum_steps", 1))
        if cfg.train.batch_size // self.dist.world < self.accum:
            raise ValueError(f"train.grad_accum_steps={self.accum} exceeds the {cfg.train.batch_size // self.dist.world} "
                             f"samples each process gets of train.batch_size={cfg.train.batch_size}")
        if not self.dist.is_main:
            logging.getLogger().setLevel(logging.WARNING)  # rank 0 speaks for the run
        self.autocast = bf16_autocast(cfg.train.bf16, self.device)  # a bad setting fails before data loads
        check_setting(cfg.train.onednn_matmul, "train.onednn_matmul")
        if not isinstance(cfg.train.keep_freed_memory, bool):
            raise ValueError(f"train.keep_freed_memory must be true or false, got {cfg.train.keep_freed_memory!r}")
        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.np_rng = np.random.default_rng(cfg.seed)

        t = cfg.train
        datasets = OmegaConf.to_container(cfg.dataset) if OmegaConf.is_list(cfg.dataset) else cfg.dataset
        stores = [resolve_store(d) for d in datasets] if isinstance(datasets, list) else resolve_store(datasets)
        weights = OmegaConf.to_container(cfg.data.weights) if cfg.data.get("weights") is not None else None
        obs_spec = OmegaConf.to_container(cfg.task.obs)
        self.lazy = images_out_of_memory(stores, obs_spec, cfg)
        if self.lazy:  # images read during training from a store at a URL: through a local copy of what is read
            cache = Path(cfg.data.get("chunk_cache") or data_dir() / "chunk_cache").expanduser()
            opened = [EpisodeStore(p, check_rows=False, chunk_cache=cache) if is_url(p) else p
                      for p in (stores if isinstance(stores, list) else [stores])]
            if any(isinstance(p, EpisodeStore) for p in opened):
                log.info("data: chunks read from %s are kept in %s (data.chunk_cache)",
                         ", ".join(str(p.path) for p in opened if isinstance(p, EpisodeStore)), cache)
                stores = opened if isinstance(stores, list) else opened[0]
        self.data: TaskData = load_training_data(
            stores, obs_spec, OmegaConf.to_container(cfg.task.action), cfg.max_episodes,
            skip_damaged=cfg.data.skip_damaged, weights=weights, rollouts=cfg.data.get("rollouts", "human"),
            lazy_images=self.lazy, cache_mb=float(cfg.data.get("cache_mb", 512)),
        )
        if self.data.skipped:
            print(f"protege-train: skipping {len(self.data.skipped)} damaged episode(s) {self.data.skipped} "
                  f"(data.skip_damaged=true); training on {len(self.data.episode_ends)}:", file=sys.stderr)
            for p in self.data.problems[:10]:
                print(f"  {p}", file=sys.stderr)
        self.target = cfg.policy._target_
        self.kwargs = policy_kwargs(cfg.policy)
        normalizer = Normalizer(self.data.stats, self.data.image_keys)
        self.policy: Policy = build_policy(self.target, self.kwargs, self.data.shape_meta, normalizer)
        if not cfg.resume:
            self.policy.init_pretrained()  # ImageNet backbones, before the optimizer and EMA see the weights
        self.policy = self.policy.to(self.device)
        self.train_sampler, self.val_sampler = self.data.samplers(
            self.policy.horizon, self.policy.n_obs_steps, *self.policy.sampler_padding, t.val_ratio, cfg.seed
        )
        self.optimizer = adamw(self.policy.parameters(), self.device, lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)
        self.lr_scheduler = get_scheduler(t.lr_schedule, self.optimizer, num_warmup_steps=t.warmup_steps, num_training_steps=t.steps)
        self.ema = (
            EMAModel(self.policy.parameters(), decay=t.ema.max_decay, use_ema_warmup=True, power=t.ema.power, foreach=True)
            if t.ema.enabled else None
        )
        self.step, self.epoch, self.train_seconds = 0, [0], 0.0
        self.evaluator = hydra.utils.instantiate(cfg.evaluator) if t.eval_every and self.dist.is_main else None
        self.ddp = None
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = DistributedDataParallel(LossModule(self.policy), device_ids=[self.device.index] if self.device.type == "cuda" else None)

    # -- state ------------------------------------------------------------------------------
    def ema_weights(self) -> dict[str, torch.Tensor] | None:
        if self.ema is None:
            return None
        self.ema.store(self.policy.parameters())
        self.ema.copy_to(self.policy.parameters())
        weights = {k: v.detach().cpu().clone() for k, v in self.policy.state_dict().items()}
        self.ema.restore(self.policy.parameters())
        return weights

    def save(self, name: str) -> Path | None:
        """Rank 0 writes the checkpoint (the others return None)."""
        if not self.dist.is_main:
            return None
        return self._save(name)

    def _save(self, name: str) -> Path:
        train_state = {
            "step": self.step,
            "epoch": self.epoch[0],
            "train_seconds": self.train_seconds,
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "rng": rng_state(self.np_rng),
        }
        config = OmegaConf.to_container(self.cfg, resolve=True)
        return save_checkpoint(self.ckpt_dir / name, self.policy, self.target, self.kwargs, config, self.ema_weights(), train_state)

    def resume(self) -> None:
        path = self.ckpt_dir / "latest.pt"
        if not path.is_file():
            raise FileNotFoundError(f"resume=true but {path} does not exist; name the run with run_dir=<dir of an earlier run>")
        ckpt = read_checkpoint(path)
        self.policy.load_state_dict(ckpt["state_dict"])
        s = ckpt["train_state"]
        self.optimizer.load_state_dict(s["optimizer"])
        self.lr_scheduler.load_state_dict(s["lr_scheduler"])
        if self.ema is not None and s["ema"] is not None:
            self.ema.load_state_dict(s["ema"])
            self.ema.to(self.device)
        set_rng_state(s["rng"], self.np_rng)
        self.step, self.epoch[0], self.train_seconds = s["step"], s["epoch"], s["train_seconds"]
        log.info("resumed %s at step %d", path, self.step)

    # -- loop -------------------------------------------------------------------------------
    def progress_bar(self, budget_s: float, disable: bool) -> tqdm:
        """Steps out of ``train.steps``; with a time budget (``train.max_minutes``), minutes of
        training out of the budget (or the steps' share, when they will end first), the step in
        the postfix."""
        t = self.cfg.train
        if budget_s == math.inf:
            return tqdm(total=t.steps, initial=self.step, desc="train", dynamic_ncols=True, disable=disable)
        total = round(budget_s / 60, 2)
        return tqdm(total=total, initial=self.done(budget_s) * total, desc="train", unit="min", dynamic_ncols=True, disable=disable,
                    bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} min [{elapsed}<{remaining}{postfix}]")

    def done(self, budget_s: float) -> float:
        """The share of the run behind it, 0-1: of its steps or of its time budget, whichever ends first."""
        return min(1.0, max(self.step / self.cfg.train.steps, self.train_seconds / budget_s))

    def follow_time_budget(self, budget_s: float) -> None:
        """With ``train.max_minutes`` set, run the learning-rate schedule (warm-up, cosine decay) on
        whichever ends first, steps or minutes: the lr is the schedule's value at step
        ``steps * done``, so a run stopped by its time budget still ends annealed instead of at a
        high learning rate."""
        steps = self.cfg.train.steps
        virtual = int(steps * self.done(budget_s))
        for group, base, f in zip(self.optimizer.param_groups, self.lr_scheduler.base_lrs, self.lr_scheduler.lr_lambdas):
            group["lr"] = base * f(virtual)

    @torch.no_grad()
    def val_loss(self, max_batches: int = 20) -> float | None:
        if self.val_sampler is None:
            return None
        self.policy.eval()
        rng = np.random.default_rng(0)  # the same validation batches every time
        losses = []
        for i, b in enumerate(self.val_sampler.batches(self.cfg.train.batch_size, rng, drop_last=False)):
            if i >= max_batches:
                break
            losses.append(self.policy.compute_loss(self.batch(b)).item())
        self.policy.train()
        return float(np.mean(losses))

    def check_loss(self, loss: torch.Tensor, last: Path | None) -> None:
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {self.step}; last checkpoint: {last}")

    def sharded_backward(self, global_batch: dict[str, np.ndarray], last: Path | None) -> torch.Tensor:
        """Gradients of this process's slice of the batch drawn (shorter than batch_size on a small
        store), in ``train.grad_accum_steps`` micro-batches: each micro-batch's loss, weighted by its
        share of the slice, is back-propagated (DDP averages the processes' gradients at the last
        one only). Every micro-batch draws the loss's random numbers for the whole batch and takes
        its rows (:func:`~protege.policies.distributed.batch_shard`, from the same generator state),
        so N processes x K micro-batches draw what one pass over the batch draws. Returns the
        slice's loss (detached).

        Raises:
            FloatingPointError: a micro-batch's loss is not finite.
        """
        n = len(global_batch["action"])
        mine = self.dist.shard(n) if self.dist.enabled else slice(0, n)
        bounds = np.linspace(mine.start, mine.stop, min(self.accum, mine.stop - mine.start) + 1).round().astype(int)
        cuda = [self.device] if self.device.type == "cuda" else []
        state = (torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in cuda])
        total = torch.zeros((), device=self.device)
        for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            if i:  # the same draws for the whole batch as the first micro-batch took its rows of
                torch.set_rng_state(state[0])
                for d, st in zip(cuda, state[1]):
                    torch.cuda.set_rng_state(st, d)
            last_micro = i == len(bounds) - 2
            share = (b - a) / (mine.stop - mine.start)
            sync = self.ddp.no_sync() if self.ddp is not None and not last_micro else contextlib.nullcontext()
            with sync:
                with self.autocast, batch_shard(slice(a, b), n):
                    micro = self.batch({k: v[a:b] for k, v in global_batch.items()})
                    loss = self.ddp(micro) if self.ddp is not None else self.policy.compute_loss(micro)
                self.check_loss(loss, last)
                (loss * share).backward()
            total += loss.detach() * share
        return total

    def batch(self, b: dict[str, np.ndarray]) -> dict[str, Any]:
        return to_torch(b, self.data.shape_meta["obs"], self.data.image_keys, self.device)

    def evaluate(self) -> dict[str, Any]:
        self.policy.eval()
        if self.ema is not None:
            self.ema.store(self.policy.parameters())
            self.ema.copy_to(self.policy.parameters())
        try:
            return self.evaluator(self.policy)
        finally:
            if self.ema is not None:
                self.ema.restore(self.policy.parameters())
            self.policy.train()

    def run(self) -> Path:
        """Train until ``train.steps``, ``train.max_minutes`` or Ctrl-C; returns the last checkpoint."""
        t = self.cfg.train
        with onednn_matmul(t.onednn_matmul, self.device, "train.onednn_matmul") as on, \
                malloc.keep_freed_memory(t.keep_freed_memory, self.device) as kept:
            log.info(describe(on, t.onednn_matmul, self.device))
            log.info(malloc.describe(kept, t.keep_freed_memory, self.device))
            return self._run()

    def _run(self) -> Path:
        cfg, t = self.cfg, self.cfg.train
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if cfg.resume:
            self.resume()
        main = self.dist.is_main
        tb = SummaryWriter(str(self.run_dir / "tb")) if main else None
        batches = (lazy_batches(self.train_sampler, t.batch_size, self.np_rng, self.epoch, int(cfg.data.get("workers", 2)))
                   if self.lazy else infinite_batches(self.train_sampler, t.batch_size, self.np_rng, self.epoch))
        budget = math.inf if t.max_minutes is None else 60.0 * t.max_minutes
        log.info("training %s on %s: %d train windows, %d params, device %s", self.target.rsplit(".", 1)[-1], cfg.dataset,
                 len(self.train_sampler), sum(p.numel() for p in self.policy.parameters()), self.device)
        if self.dist.enabled:
            log.info("data parallel: %d processes (%s), global batch %d (%d per process), lr %g",
                     self.dist.world, self.dist.backend, t.batch_size, t.batch_size // self.dist.world, t.lr)
        if self.accum > 1:
            log.info("gradient accumulation: %d micro-batches of about %d samples per process and step (batch %d)",
                     self.accum, t.batch_size // self.dist.world // self.accum, t.batch_size)
        self.policy.train()
        bar = self.progress_bar(budget, disable=not t.progress or not main)
        window_start, window_samples = time.perf_counter(), 0
        last = None
        stop = StopRequest()  # Ctrl-C: finish this step, save, exit; a second Ctrl-C interrupts at once
        while self.step < t.steps and self.train_seconds < budget and not stop.requested:
            t0 = time.perf_counter()
            global_batch = next(batches)
            self.optimizer.zero_grad(set_to_none=True)
            if self.dist.enabled or self.accum > 1:
                loss = self.sharded_backward(global_batch, last)
            else:
                with self.autocast:
                    loss = self.policy.compute_loss(self.batch(global_batch))
                self.check_loss(loss, last)
                loss.backward()
            self.optimizer.step()
            self.lr_scheduler.step()
            if self.ema is not None:
                self.ema.step(self.policy.parameters())
            self.step += 1
            self.train_seconds += time.perf_counter() - t0
            if self.dist.enabled:  # every rank stops at the same step: Ctrl-C or the time budget on any of them
                flag, self.train_seconds = all_max([float(stop.requested), self.train_seconds], self.dist)
                stop.requested = stop.requested or bool(flag)
            if budget < math.inf:
                self.follow_time_budget(budget)
            window_samples += len(global_batch["action"])
            if budget < math.inf:  # the bar follows whichever ends first, the steps or the minutes
                bar.n = self.done(budget) * bar.total  # set, never stepped past the total
                bar.update(0)  # redraws at tqdm's pace
            else:
                bar.update(1)
            if main and (self.step % t.log_every == 0 or self.step == t.steps):
                rate = window_samples / (time.perf_counter() - window_start)  # samples/s of the run (global batches)
                window_start, window_samples = time.perf_counter(), 0
                bar.set_postfix(loss=f"{loss.item():.4f}", samples_s=f"{rate:.0f}", epoch=self.epoch[0],
                                **({"step": self.step} if budget < math.inf else {}))
                tb.add_scalar("train/loss", loss.item(), self.step)
                tb.add_scalar("train/lr", self.optimizer.param_groups[0]["lr"], self.step)
                tb.add_scalar("train/samples_per_s", rate, self.step)
            if main and t.val_every and self.step % t.val_every == 0:
                v = self.val_loss()
                if v is not None:
                    tb.add_scalar("val/loss", v, self.step)
            if t.checkpoint_every and self.step % t.checkpoint_every == 0:
                last = self.save("latest.pt")
                if t.keep_checkpoints:
                    self.save(f"step_{self.step:07d}.pt")
            if self.evaluator is not None and self.step % t.eval_every == 0:
                metrics = self.evaluate()
                for k, v in metrics.items():
                    if isinstance(v, (int, float)):
                        tb.add_scalar(f"eval/{k}", v, self.step)
                with open(self.run_dir / "eval_log.jsonl", "a") as f:
                    f.write(json.dumps({"step": self.step, "train_minutes": self.train_seconds / 60, **metrics}) + "\n")
                window_start, window_samples = time.perf_counter(), 0
        stop.restore()
        bar.close()
        last = self.save("latest.pt")
        if tb is not None:
            tb.close()
        if self.dist.enabled:
            import torch.distributed as dist

            dist.barrier()  # the checkpoint is written before any rank leaves
            last = self.ckpt_dir / "latest.pt"
        why = "interrupted" if stop.requested else "time budget" if self.step < t.steps else "all steps"
        log.info("stopped after %d steps (%s, %.1f train minutes); checkpoint %s", self.step, why, self.train_seconds / 60, last)
        if main:
            result = {"run_dir": str(self.run_dir), "step": self.step, "train_minutes": round(self.train_seconds / 60, 3),
                      "loss": float(loss.item()) if self.step and "loss" in locals() else None,
                      "val_loss": self.val_loss() if self.val_sampler is not None else None, "stopped": why,
                      "overrides": list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []}
            (self.run_dir / "result.json").write_text(json.dumps(result, indent=2))
            print(f"checkpoint: {last}" + (f" (go on with: protege-train ... run_dir={self.run_dir} resume=true)"
                                           if stop.requested else ""))
        return last


@hydra.main(config_path="../configs", config_name="train", version_base=None)
@job
def _hydra_main(cfg: DictConfig) -> None:
    trainer = None
    try:
        check_settings(cfg, "train")
        trainer = Trainer(cfg)
        trainer.run()
    except Exception as e:
        if is_expected(e) and (trainer is None or trainer.dist.is_main):
            _remove_empty_run_dir(Path(cfg.run_dir))
        raise
    finally:
        if trainer is not None:
            shutdown(trainer.dist)


def _remove_empty_run_dir(run_dir: Path) -> None:
    """A run refused before it trained leaves no folder behind: remove ``run_dir`` when it holds
    only what hydra wrote at start (``.hydra/``, ``train.log``), never an earlier run's files."""
    import shutil

    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {".hydra", "train.log"}:
        shutil.rmtree(run_dir, ignore_errors=True)
        parent = run_dir.parent
        if parent.name == "runs" and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()  # the default runs/ folder, made just now for it


def main() -> None:
    """Train a policy; see ``protege-train --help`` and ``configs/train.yaml``. Expected errors
    (a missing or damaged store, a bad override) are one line and exit 2 (:mod:`protege.errors`).
    ``train.nproc=N`` (N > 1) starts the same run under torchrun, N processes on this machine."""
    nproc = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("train.nproc=")]
    if nproc and "WORLD_SIZE" not in os.environ:
        try:
            n = int(nproc[-1])
        except ValueError:
            n = 0
        if n < 1:
            print(f"protege-train: error: train.nproc={nproc[-1]}: must be an integer >= 1", file=sys.stderr)
            sys.exit(2)
        if n > 1:
            args = [a for a in sys.argv[1:] if not a.startswith("train.nproc=")]
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
                   "-m", "protege.policies.train", *args]
            os.execv(sys.executable, cmd)
    run_cli("protege-train", _hydra_main)


if __name__ == "__main__":
    main()
