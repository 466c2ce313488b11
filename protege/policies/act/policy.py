"""ACT: Action Chunking with Transformers (Zhao et al., "Learning Fine-Grained Bimanual
Manipulation with Low-Cost Hardware", RSS 2023).

A conditional VAE predicts ``chunk_size`` actions at once from one observation: in training the
CVAE encoder reads the true chunk and the state to give the latent z; at inference z = 0 (the
prior's mean). Loss (section 4): L1 over the chunk, padded steps zeroed + ``kl_weight`` x KL.
Every camera's ResNet18 feature map becomes tokens with a 2-D sine position embedding; with the
latent and the state tokens they form the transformer encoder's input.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import batch_randn_like
from ..normalizer import Normalizer
from ..base import Policy
from ..encoders import ImageNetInput, load_resnet18_weights, resnet18_backbone
from .model import ACTTransformer, CVAEEncoder, sine_2d


class ACTPolicy(Policy):
    """ACT behind the Policy API.

    Args:
        shape_meta, normalizer: as for every policy.
        chunk_size: actions predicted per query (the paper's k, 100).
        n_action_steps: steps executed per chunk under receding horizon (temporal ensembling
            queries every step instead, see :class:`~protege.control.schedulers.TemporalEnsembling`).
        kl_weight: beta of the KL term (10).
        latent_dim: size of z (32).
        hidden_dim, dim_feedforward, n_heads, enc_layers, dec_layers, dropout: transformer sizes
            (paper: 512, 3200, 8, 4, 7, 0.1).
        vae_enc_layers: layers of the CVAE encoder (4).
        backbone_width: ResNet18 first-stage channels (64 = torchvision's ResNet18).
        pretrained_backbone: ``imagenet`` (torchvision's IMAGENET1K_V1, from torch's hub cache) or
            the path of a ResNet18 state dict: start the backbones from it, with frozen BatchNorm
            statistics and ImageNet input normalization, as the reference does (needs width 64).
            None: from scratch, GroupNorm. The weights are loaded by :meth:`init_pretrained`
            (the trainer, on a fresh run), never when a checkpoint is loaded.

    Observations use one step (n_obs_steps = 1): low-dim keys are concatenated into the state.
    """

    n_obs_steps = 1
    inference_methods = ("_decode",)
    # compiled, every weight is prepacked for oneDNN's inner product: what is left to the run-time
    # flag is the attention kernel's blocks, which run faster in MKL (benchmarks/chunk_profile.py)
    runtime_products_in_mkl = True
    # autotune_gemms stays off: torch 2.14.1's C++ GEMM template gets the attention's in-projection
    # wrong (a slice of the packed weight; see _frozen_compile), which compile_for_inference refuses

    def __init__(
        self,
        shape_meta: Mapping[str, Any],
        normalizer: Normalizer,
        chunk_size: int = 100,
        n_action_steps: int = 100,
        kl_weight: float = 10.0,
        latent_dim: int = 32,
        hidden_dim: int = 512,
        dim_feedforward: int = 3200,
        n_heads: int = 8,
        enc_layers: int = 4,
        dec_layers: int = 7,
        vae_enc_layers: int = 4,
        dropout: float = 0.1,
        backbone_width: int = 64,
        pretrained_backbone: str | None = None,
    ):
        super().__init__(shape_meta, normalizer)
        if n_action_steps > chunk_size:
            raise ValueError(f"n_action_steps={n_action_steps} exceeds chunk_size={chunk_size}")
        self.horizon = self.chunk_size = chunk_size
        self.n_action_steps, self.kl_weight, self.latent_dim = n_action_steps, kl_weight, latent_dim
        obs = shape_meta["obs"]
        self.rgb_keys = sorted(k for k, m in obs.items() if m["type"] == "rgb")
        self.low_dim_keys = sorted(k for k, m in obs.items() if m["type"] == "low_dim")
        state_dim = sum(int(torch.tensor(obs[k]["shape"]).prod()) for k in self.low_dim_keys)
        self.action_dim = int(shape_meta["action"]["shape"][0])
        d = hidden_dim
        if pretrained_backbone is not None and backbone_width != 64:
            raise ValueError(f"pretrained_backbone needs backbone_width=64 (torchvision's ResNet18), got {backbone_width}")
        self.pretrained_backbone = pretrained_backbone
        norm = "group" if pretrained_backbone is None else "frozen_batch"
        self.backbones = nn.ModuleDict({k: resnet18_backbone(backbone_width, norm) for k in self.rgb_keys})
        # Frozen-BatchNorm backbones run channels-last (weights here, images in _decode), oneDNN's
        # layout for convolutions. An ad-hoc A/B of vs_lerobot.py's ACT training step (such a
        # backbone) found it faster on the CPU, and no difference with GroupNorm, which stays NCHW;
        # no benchmark measures it on its own yet.
        self.channels_last = norm == "frozen_batch"
        if self.channels_last:
            self.backbones.to(memory_format=torch.channels_last)
        self.image_input = ImageNetInput() if pretrained_backbone is not None else nn.Identity()
        self.feature_proj = nn.Conv2d(backbone_width * 8, d, kernel_size=1)
        self.state_proj = nn.Linear(state_dim, d) if state_dim else None
        self.latent_proj = nn.Linear(latent_dim, d)
        self.extra_pos = nn.Embedding(2, d)  # latent and state tokens
        self.transformer = ACTTransformer(d, n_heads, dim_feedforward, enc_layers, dec_layers, dropout, chunk_size)
        self.vae_encoder = CVAEEncoder(self.action_dim, state_dim, d, n_heads, dim_feedforward, vae_enc_layers, dropout,
                                       chunk_size, latent_dim)
        self.action_head = nn.Linear(d, self.action_dim)

    def init_pretrained(self) -> None:
        """Load the ImageNet weights into every camera's backbone (a fresh training run only).

        Raises:
            PretrainedWeightsError: they cannot be loaded (the message says how to provide them).
        """
        if self.pretrained_backbone is not None:
            for backbone in self.backbones.values():
                load_resnet18_weights(backbone, self.pretrained_backbone)

    @property
    def sampler_padding(self) -> tuple[int, int]:
        # every step of an episode starts a chunk; steps past its end are padded and masked
        return 0, self.chunk_size - 1

    def _state(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        if not self.low_dim_keys:
            return None
        return torch.cat([self.normalizer.normalize(k, obs[k][:, -1]).flatten(1) for k in self.low_dim_keys], dim=-1)

    def _decode(self, obs: Mapping[str, torch.Tensor], z: torch.Tensor) -> torch.Tensor:
        """Normalized action chunk (B, chunk_size, Da) from the latest observation and latent z."""
        state = self._state(obs)
        tokens = [self.latent_proj(z)[:, None]]
        pos = [self.extra_pos.weight[:1]]
        if state is not None:
            tokens.append(self.state_proj(state)[:, None])
            pos.append(self.extra_pos.weight[1:])
        for k in self.rgb_keys:
            img = self.normalizer.normalize(k, obs[k][:, -1])
            img = self.image_input(img)
            if self.channels_last:
                img = img.contiguous(memory_format=torch.channels_last)
            fmap = self.feature_proj(self.backbones[k](img))  # (B, d, h, w)
            tokens.append(fmap.flatten(2).transpose(1, 2))
            pos.append(sine_2d(fmap.shape[2], fmap.shape[3], fmap.shape[1], device=fmap.device))
        hidden = self.transformer(torch.cat(tokens, dim=1), torch.cat(pos, dim=0))
        return self.action_head(hidden)

    def compute_loss(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """L1 + kl_weight * KL(q(z | a, s) || N(0, I)) (paper, section 4).

        The L1 term is averaged over every step of the chunk with the padded ones zeroed (past an
        episode's end), as the reference implementation (``act/policy.py``) and LeRobot do, so
        chunks near an episode's end weigh less against the KL term than full ones. Steps outside
        ``batch["learn"]`` (where given: a policy's actions after an operator's correction) are
        treated as padding, for the L1 term and the CVAE encoder alike.
        """
        actions = self.normalizer.normalize("action", batch["action"])
        mask = batch["mask"] & batch["learn"] if "learn" in batch else batch["mask"]
        mu, logvar = self.vae_encoder(actions, self._state(batch["obs"]), ~mask)
        z = mu + batch_randn_like(mu) * torch.exp(0.5 * logvar)
        pred = self._decode(batch["obs"], z)
        l1 = (F.l1_loss(pred, actions, reduction="none") * mask[..., None]).mean()
        kl = kl_divergence(mu, logvar)
        return l1 + self.kl_weight * kl

    @torch.no_grad()
    def predict_action(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Action chunk (B, chunk_size, Da) from the latest observation, with z = 0."""
        b = next(iter(obs.values())).shape[0]
        z = torch.zeros(b, self.latent_dim, device=self.device)
        return self.normalizer.unnormalize("action", self._decode(obs, z))


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)), summed over latent dims, averaged over the batch."""
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).sum(-1).mean()
