"""Diffusion Policy (Chi et al., "Diffusion Policy: Visuomotor Policy Learning via Action
Diffusion", RSS 2023): a conditional denoising diffusion model over action sequences.

Training (section 3.1): DDPM with 100 steps, the squaredcos_cap_v2 schedule and epsilon
prediction; the network is conditioned on the features of ``n_obs_steps`` observations
(global FiLM conditioning, section 3.2). Inference runs DDIM with ``num_inference_steps`` steps
(Song et al., ICLR 2021) from the same trained model, or DDPM as the paper's evaluation does.
Schedulers come from diffusers.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler

from ..distributed import batch_randint, batch_randn_like
from ..normalizer import Normalizer
from ..base import Policy
from ..encoders import ObsEncoder
from .unet import ConditionalUnet1D


class DiffusionPolicy(Policy):
    """Diffusion Policy with the 1-D temporal conditional U-Net.

    Args:
        shape_meta: {"obs": {key: {"shape", "type"}}, "action": {"shape": [Da]}}.
        normalizer: statistics of the training data (kept inside the policy).
        horizon: steps of each denoised action sequence (the paper's Tp, 16).
        n_obs_steps: observation steps the policy conditions on (To, 2).
        n_action_steps: steps executed per chunk under receding horizon (Ta, 8); the chunk
            returned by :meth:`predict_action` is ``horizon - n_obs_steps + 1`` steps long.
        num_train_timesteps: DDPM steps in training (100).
        num_inference_steps: DDIM steps at inference (e.g. 10 or 16).
        beta_schedule, prediction_type, clip_sample: passed to diffusers' schedulers.
        inference_scheduler: ``ddim`` (Song et al., ICLR 2021; few steps) or ``ddpm`` (the paper's
            own evaluation: ancestral sampling, usually over all ``num_train_timesteps``).
        unet: keyword arguments of :class:`ConditionalUnet1D` (down_dims, kernel_size, ...).
        image_encoder: keyword arguments of the ResNet image encoder (crop_shape, feature_dim, ...).
    """

    inference_methods = ("_condition", "_epsilon")
    autotune_gemms = True  # on the CPU: see _frozen_compile and benchmarks/chunk_profile.py

    def __init__(
        self,
        shape_meta: Mapping[str, Any],
        normalizer: Normalizer,
        horizon: int = 16,
        n_obs_steps: int = 2,
        n_action_steps: int = 8,
        num_train_timesteps: int = 100,
        num_inference_steps: int = 10,
        beta_schedule: str = "squaredcos_cap_v2",
        prediction_type: str = "epsilon",
        clip_sample: bool = True,
        inference_scheduler: str = "ddim",
        unet: Mapping[str, Any] | None = None,
        image_encoder: Mapping[str, Any] | None = None,
    ):
        super().__init__(shape_meta, normalizer)
        if n_action_steps > horizon - n_obs_steps + 1:
            raise ValueError(f"n_action_steps={n_action_steps} exceeds the predicted future horizon - n_obs_steps + 1 = {horizon - n_obs_steps + 1}")
        self.horizon, self.n_obs_steps, self.n_action_steps = horizon, n_obs_steps, n_action_steps
        self.action_dim = int(shape_meta["action"]["shape"][0])
        self.obs_encoder = ObsEncoder(shape_meta["obs"], image_encoder)
        self.model = ConditionalUnet1D(self.action_dim, self.obs_encoder.feature_dim * n_obs_steps, **(unet or {}))
        self.noise_scheduler = DDPMScheduler(
            num_train_timesteps=num_train_timesteps,
            beta_schedule=beta_schedule,
            clip_sample=clip_sample,
            prediction_type=prediction_type,
        )
        samplers = {"ddim": DDIMScheduler, "ddpm": DDPMScheduler}
        if inference_scheduler not in samplers:
            raise ValueError(f"inference_scheduler must be one of {sorted(samplers)}, got {inference_scheduler!r}")
        self.inference_scheduler = samplers[inference_scheduler].from_config(self.noise_scheduler.config)
        self.num_inference_steps = num_inference_steps

    def _compiled_form(self, on: bool) -> None:
        """On the CPU the compiled U-Net computes its convolutions as matrix products
        (:class:`~.unet.TemporalConv1d`: PyTorch's batch-1 1-D convolutions are slow; inductor's
        autotuned GEMMs are not); off, back to TemporalConv1d's default."""
        self.model.convs_as_matmul(True if on and self.device.type == "cpu" else None)

    def _condition(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Normalized, encoded features of the first n_obs_steps observation steps -> (B, To*F)."""
        nobs = {k: self.normalizer.normalize(k, obs[k][:, : self.n_obs_steps]) for k in self.shape_meta["obs"]}
        return self.obs_encoder(nobs).flatten(1)

    def _epsilon(self, x: torch.Tensor, k: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The U-Net's prediction for noisy actions x (B, horizon, Da) at steps k (B,)."""
        return self.model(x, k, cond)

    def compute_loss(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """MSE between the true and predicted noise over the whole horizon (padded steps included,
        as in the reference: edge padding teaches the policy to hold still at the end). Where the
        batch gives ``batch["learn"]`` (B, horizon) bool, the steps outside it (a policy's actions
        after an operator's correction) are zeroed, as ACT zeroes padding: the mean stays over every
        step, so a batch split across processes or micro-batches adds up to the whole batch's loss."""
        cond = self._condition(batch["obs"])
        action = self.normalizer.normalize("action", batch["action"])
        noise = batch_randn_like(action)  # the whole batch's draws, sliced, under data parallelism
        k = batch_randint(0, self.noise_scheduler.config.num_train_timesteps, action.shape[0], action.device)
        noisy = self.noise_scheduler.add_noise(action, noise, k)
        pred = self.model(noisy, k, cond)
        target = noise if self.noise_scheduler.config.prediction_type == "epsilon" else action
        if "learn" not in batch:
            return F.mse_loss(pred, target)
        return (F.mse_loss(pred, target, reduction="none") * batch["learn"].to(pred.dtype)[..., None]).mean()

    @torch.no_grad()
    def predict_action(self, obs: Mapping[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        """Denoise an action sequence with DDIM and return the chunk (B, horizon - To + 1, Da)
        that starts at the latest observation step, in the store's action units."""
        cond = self._condition(obs)
        b = cond.shape[0]
        x = torch.randn((b, self.horizon, self.action_dim), device=cond.device, dtype=cond.dtype, generator=generator)
        sched = self.inference_scheduler
        sched.set_timesteps(self.num_inference_steps, device=cond.device)
        for k in sched.timesteps:
            x = sched.step(self._epsilon(x, k.expand(b), cond), k, x, generator=generator).prev_sample
        return self.normalizer.unnormalize("action", x)[:, self.n_obs_steps - 1 :]
