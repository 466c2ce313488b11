"""Numeric settings of ``protege-train``, ``-eval``, ``-record`` and ``-deploy``, checked before any
work starts (before a model is built, a store opened or an arm connected): each out-of-range
value is named with its key and allowed range, all of them in one error."""

from __future__ import annotations

import math
from typing import Any

from omegaconf import DictConfig, OmegaConf

# key: (kind, low, high, may be null); kind "int" or "float"; the bounds are inclusive unless a
# tuple (bound, "open")
_INT, _FLOAT = "int", "float"
RULES: dict[str, dict[str, tuple]] = {
    "train": {
        "train.steps": (_INT, 1, None, False), "train.max_minutes": (_FLOAT, (0, "open"), None, True),
        "train.batch_size": (_INT, 1, None, False), "train.lr": (_FLOAT, (0, "open"), None, False),
        "train.warmup_steps": (_INT, 0, None, False), "train.weight_decay": (_FLOAT, 0, None, False),
        "train.val_ratio": (_FLOAT, 0, (1, "open"), False), "train.val_every": (_INT, 0, None, False),
        "train.log_every": (_INT, 1, None, False), "train.checkpoint_every": (_INT, 1, None, False),
        "train.eval_every": (_INT, 0, None, False), "train.ema.power": (_FLOAT, (0, "open"), None, False),
        "train.ema.max_decay": (_FLOAT, 0, 1, False), "max_episodes": (_INT, 1, None, True),
        "train.num_workers": (_INT, 0, None, True), "train.nproc": (_INT, 1, None, False),
        "train.grad_accum_steps": (_INT, 1, None, False), "evaluator.n_episodes": (_INT, 1, None, True),
    },
    "eval": {
        "n_episodes": (_INT, 1, None, False), "batch_envs": (_INT, 1, None, False), "n_videos": (_INT, 0, None, False),
        "num_inference_steps": (_INT, 1, None, True), "scheduler.n_action_steps": (_INT, 1, None, True),
        "scheduler.blend_steps": (_INT, 0, None, True), "scheduler.k": (_FLOAT, 0, None, True),
    },
    "deploy": {
        "episodes": (_INT, 1, None, False), "time_limit_s": (_FLOAT, (0, "open"), None, True),
        "num_inference_steps": (_INT, 1, None, True), "inference_delay_s": (_FLOAT, 0, None, False),
        "action_offset": (_FLOAT, 0, None, False), "loop.max_frame_age_s": (_FLOAT, (0, "open"), None, False),
        "loop.first_chunk_timeout_s": (_FLOAT, (0, "open"), None, False), "loop.latency_margin_s": (_FLOAT, 0, None, False),
        "scheduler.n_action_steps": (_INT, 1, None, True), "scheduler.blend_steps": (_INT, 0, None, True),
        "scheduler.k": (_FLOAT, 0, None, True), "torch_threads": (_INT, 1, None, True),
    },
    "record": {
        "episodes": (_INT, 1, None, False), "max_attempts": (_INT, 1, None, True),
        "time_limit_s": (_FLOAT, (0, "open"), None, True), "task.fps": (_FLOAT, (0, "open"), None, True),
    },
}


def _bound_text(low, high, kind) -> str:
    parts = []
    if low is not None:
        lo, open_ = (low[0], True) if isinstance(low, tuple) else (low, False)
        parts.append(f"{'>' if open_ else '>='} {lo}")
    if high is not None:
        hi, open_ = (high[0], True) if isinstance(high, tuple) else (high, False)
        parts.append(f"{'<' if open_ else '<='} {hi}")
    return ("an integer " if kind == _INT else "a number ") + " and ".join(parts)


def _ok(v: Any, kind: str, low, high) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    if kind == _INT and not (isinstance(v, int) or (isinstance(v, float) and v.is_integer())):
        return False
    if not math.isfinite(float(v)):
        return False
    if low is not None:
        lo = low[0] if isinstance(low, tuple) else low
        if v < lo or (isinstance(low, tuple) and v == lo):
            return False
    if high is not None:
        hi = high[0] if isinstance(high, tuple) else high
        if v > hi or (isinstance(high, tuple) and v == hi):
            return False
    return True


def check_settings(cfg: DictConfig, tool: str) -> None:
    """Raises:
        ValueError: every setting of ``tool``'s rules that is out of range, named with its key and
            allowed range (e.g. ``train.steps=-5: must be an integer >= 1``)."""
    problems = []
    for key, (kind, low, high, nullable) in RULES[tool].items():
        try:
            v = OmegaConf.select(cfg, key, throw_on_missing=False, default="__absent__")
        except Exception:  # noqa: BLE001 - an interpolation that does not resolve is reported by the tool itself
            continue
        if v == "__absent__" or (v is None and nullable):
            continue
        if not _ok(v, kind, low, high):
            problems.append(f"{key}={v}: must be {_bound_text(low, high, kind)}" + (" or null" if nullable else ""))
    if problems:
        raise ValueError("; ".join(problems))
