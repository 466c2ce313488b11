"""The normalizer that lives inside a policy and its checkpoint."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import nn

from ..data.stats import STAT_NAMES


class Normalizer(nn.Module):
    """Maps each key to [-1, 1]: low-dim keys and actions by their [min, max] range, images
    (floats in [0, 1]) by ``2x - 1``. Its buffers travel in the policy's ``state_dict``.

    A dimension whose range is at most ``eps`` (a constant in the data) is only centred, not
    scaled, and :meth:`unnormalize` returns that constant there whatever the input holds: a policy
    has nothing to learn in such a dimension, and what a sampler leaves in it is noise. (Diffusion
    sampling drives such dimensions to the clip bound: with the 6-D rotation of a top-down grasp,
    two constant-zero components came back near +-1 and tilted the gripper ~45 degrees.)
    """

    def __init__(self, stats: Mapping[str, Mapping[str, np.ndarray]] | None = None, image_keys=(), eps: float = 1e-4):
        super().__init__()
        self.eps = float(eps)
        self.keys: list[str] = []
        for key, s in (stats or {}).items():
            lo, hi = torch.as_tensor(s["min"], dtype=torch.float32), torch.as_tensor(s["max"], dtype=torch.float32)
            span = hi - lo
            ok = span > self.eps
            scale = torch.where(ok, 2.0 / torch.where(ok, span, torch.ones_like(span)), torch.ones_like(span))
            offset = torch.where(ok, -1.0 - lo * scale, -(lo + hi) / 2)
            self._add(key, scale, offset, s)
        for key in image_keys:
            self._add(key, torch.tensor(2.0), torch.tensor(-1.0), None)

    def _add(self, key: str, scale: torch.Tensor, offset: torch.Tensor, stats) -> None:
        self.keys.append(key)
        self.register_buffer(f"{key}__scale", scale)
        self.register_buffer(f"{key}__offset", offset)
        for name in STAT_NAMES if stats is not None else ():
            self.register_buffer(f"{key}__{name}", torch.as_tensor(stats[name], dtype=torch.float32))

    def _params(self, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        if key not in self.keys:
            raise KeyError(f"normalizer has no key {key!r}; it has {self.keys}")
        return getattr(self, f"{key}__scale"), getattr(self, f"{key}__offset")

    def normalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        """x (..., D) for low-dim keys, (..., C, H, W) in [0, 1] for images -> same shape in [-1, 1]."""
        scale, offset = self._params(key)
        return x * scale + offset

    def unnormalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`normalize`, except in constant dimensions, which come back as the data's constant."""
        scale, offset = self._params(key)
        out = (x - offset) / scale
        if hasattr(self, f"{key}__min"):
            lo, hi = getattr(self, f"{key}__min"), getattr(self, f"{key}__max")
            out = torch.where(hi - lo > self.eps, out, (lo + hi) / 2)
        return out

    @property
    def image_keys(self) -> list[str]:
        return [k for k in self.keys if not hasattr(self, f"{k}__min")]

    def stats(self) -> dict[str, dict[str, list]]:
        """{key: {stat: list}} for the keys with data statistics (JSON-able); with
        :attr:`image_keys` it rebuilds an identical normalizer: ``Normalizer(n.stats(), n.image_keys)``."""
        out = {}
        for key in self.keys:
            if hasattr(self, f"{key}__min"):
                out[key] = {n: getattr(self, f"{key}__{n}").tolist() for n in STAT_NAMES}
        return out
