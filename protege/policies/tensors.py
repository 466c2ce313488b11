"""Device selection and the conversion of numpy batches and observations to policy tensors."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; any torch device string is accepted."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def obs_to_torch(obs: Mapping[str, np.ndarray], image_keys, device: torch.device, keys=None) -> dict[str, torch.Tensor]:
    """Observation windows {key: (B, To, ...)} (images uint8 (B, To, H, W, 3)) -> policy tensors
    (images float32 (B, To, 3, H, W) in [0, 1], low-dim float32) on ``device``; ``keys`` default: all."""
    out = {}
    for k in obs if keys is None else keys:
        a = np.ascontiguousarray(obs[k])
        # a size-1 axis may carry any stride in numpy (e.g. a [None] batch axis: 0); the view makes
        # them canonical, so a compiled policy's stride guards hold from call to call
        x = torch.from_numpy(a).view(-1).view(a.shape).to(device, non_blocking=True)
        if k in image_keys:
            # channels-first in memory, not a permuted view: at batch 1 eager convolutions are
            # slower on the view's channels-last strides
            x = x.permute(0, 1, 4, 2, 3).contiguous().float().div_(255.0)
        elif x.dtype != torch.float32:  # e.g. the control loop's interpolated float64 robot states
            x = x.float()
        out[k] = x
    return out


def to_torch(batch: Mapping[str, np.ndarray], obs_keys, image_keys, device: torch.device) -> dict[str, Any]:
    """Sampler batch -> policy batch {"obs": see :func:`obs_to_torch`, "action", "mask"} and, where
    the sampler gives it, "learn" ((B, horizon) bool: the action steps the loss learns)."""
    out = {
        "obs": obs_to_torch(batch, image_keys, device, keys=obs_keys),
        "action": torch.from_numpy(batch["action"]).to(device),
        "mask": torch.from_numpy(batch["mask"]).to(device),
    }
    if "learn" in batch:
        out["learn"] = torch.from_numpy(batch["learn"]).to(device)
    return out
