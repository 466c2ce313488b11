"""The Policy API shared by every policy family (DESIGN.md, "Policy")."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from .normalizer import Normalizer


class Policy(nn.Module):
    """A visuomotor policy: tensors in, tensors out; it never sees hardware or the simulator.

    Observations are {key: (B, To, ...)} tensors: low-dim keys float32 (B, To, D) in the store's
    units, images float32 (B, To, C, H, W) in [0, 1]. Actions are float32 (B, Ta, Da) in the
    store's units. The normalizer lives inside the policy, so its statistics are saved with the
    weights.

    Subclasses implement :meth:`compute_loss` and :meth:`predict_action`; their constructor takes
    ``shape_meta``, ``normalizer`` and the keyword arguments of their hydra config (whose
    ``_target_`` names the class), which the checkpoint stores so that loading needs no dataset.
    """

    n_obs_steps: int = 1
    horizon: int = 1  # action steps per training sample
    n_action_steps: int = 1  # actions executed per chunk under receding horizon
    num_inference_steps: int | None = None  # denoising steps per prediction (diffusion); None: one pass

    def __init__(self, shape_meta: Mapping[str, Any], normalizer: Normalizer):
        super().__init__()
        self.shape_meta = shape_meta
        self.normalizer = normalizer

    def compute_loss(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Scalar training loss of a batch ``{"obs": {...}, "action": (B, horizon, Da), "mask": (B, horizon)}``."""
        raise NotImplementedError

    @torch.no_grad()
    def predict_action(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Action chunk (B, Ta, Da) starting at the latest observation step."""
        raise NotImplementedError

    @property
    def sampler_padding(self) -> tuple[int, int]:
        """(pad_before, pad_after) steps a training window may reach outside its episode
        (Diffusion Policy: To - 1 before, Ta - 1 after)."""
        return self.n_obs_steps - 1, self.n_action_steps - 1

    def set_num_inference_steps(self, n: int) -> None:
        """Use ``n`` denoising steps per prediction from now on.

        Raises:
            ValueError: the policy predicts in one pass (``num_inference_steps`` is None), or n < 1.
        """
        if self.num_inference_steps is None:
            raise ValueError(f"{type(self).__name__} predicts in one pass; it has no inference steps to set")
        if n < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {n}")
        self.num_inference_steps = int(n)

    def init_pretrained(self) -> None:
        """Load pretrained weights the config asks for (a fresh training run only; a checkpoint
        already holds them). Nothing by default."""

    def reset(self) -> None:
        """Forget per-episode state (none by default)."""

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device
