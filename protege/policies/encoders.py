"""Observation encoders: per-step features from normalized observations.

The image encoder follows Diffusion Policy (Chi et al., RSS 2023, section 3.3) and robomimic: a
torchvision ResNet18 trained from scratch with every BatchNorm replaced by GroupNorm, its global
pooling replaced by a spatial softmax (Levine et al., JMLR 2016), random crops in training and a
center crop at inference; one encoder per camera.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torchvision
from torch import nn

from .distributed import batch_randint


class SpatialSoftmax(nn.Module):
    """Feature map (N, C, H, W) -> expected 2-D keypoint positions (N, 2K) in [-1, 1].

    A 1x1 convolution makes K keypoint maps; a softmax over each map's pixels gives a distribution
    whose expected (x, y) is the keypoint (Levine et al., "End-to-End Training of Deep
    Visuomotor Policies", JMLR 2016, section 4.2).
    """

    def __init__(self, in_channels: int, num_kp: int = 32):
        super().__init__()
        self.keypoints = nn.Conv2d(in_channels, num_kp, kernel_size=1)
        self.num_kp = num_kp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        att = torch.softmax(self.keypoints(x).flatten(2), dim=-1)  # (N, K, H*W)
        ys, xs = torch.meshgrid(
            torch.linspace(-1, 1, h, device=x.device, dtype=att.dtype),
            torch.linspace(-1, 1, w, device=x.device, dtype=att.dtype),
            indexing="ij",
        )
        grid = torch.stack([xs.flatten(), ys.flatten()], dim=-1)  # (H*W, 2)
        return (att @ grid).reshape(n, 2 * self.num_kp)


def replace_batchnorm(module: nn.Module, group_size: int = 16) -> nn.Module:
    """Replace every BatchNorm2d in ``module`` by GroupNorm(channels // group_size groups), in place."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.GroupNorm(max(1, child.num_features // group_size), child.num_features))
        else:
            replace_batchnorm(child, group_size)
    return module


def crop(x: torch.Tensor, size: tuple[int, int], random: bool) -> torch.Tensor:
    """Crop (N, C, H, W) to ``size``: an independent random window per image, or the center.

    Raises:
        ValueError: the crop is larger than the image.
    """
    n, c, h, w = x.shape
    ch, cw = size
    if ch > h or cw > w:
        raise ValueError(f"crop {size} is larger than the image {(h, w)}")
    if (ch, cw) == (h, w):
        return x
    if not random:
        top, left = (h - ch) // 2, (w - cw) // 2
        return x[:, :, top : top + ch, left : left + cw]
    top = batch_randint(0, h - ch + 1, n, x.device)  # the whole batch's draws, sliced, under data parallelism
    left = batch_randint(0, w - cw + 1, n, x.device)
    rows = (top[:, None] + torch.arange(ch, device=x.device))[:, :, None]  # (N, ch, 1)
    cols = (left[:, None] + torch.arange(cw, device=x.device))[:, None, :]  # (N, 1, cw)
    out = x.permute(0, 2, 3, 1)[torch.arange(n, device=x.device)[:, None, None], rows, cols]  # (N, ch, cw, C)
    return out.permute(0, 3, 1, 2)


class ResNetImageEncoder(nn.Module):
    """One camera's image (N, 3, H, W), normalized to [-1, 1] -> feature (N, feature_dim).

    Args:
        crop_shape: (h, w) random crop in training, center crop in eval; None for no crop.
        feature_dim: output size after the spatial softmax's linear projection.
        num_kp: spatial-softmax keypoints.
        width: channels of ResNet18's first stage (64 in the paper; smaller for CPU defaults).
    """

    def __init__(self, crop_shape=(84, 84), feature_dim: int = 64, num_kp: int = 32, width: int = 64):
        super().__init__()
        self.backbone = resnet18_backbone(width)
        out_channels = width * 8
        self.pool = SpatialSoftmax(out_channels, num_kp)
        self.proj = nn.Linear(2 * num_kp, feature_dim)
        self.crop_shape = tuple(crop_shape) if crop_shape else None
        self.feature_dim = feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.crop_shape:
            x = crop(x, self.crop_shape, random=self.training)
        return self.proj(self.pool(self.backbone(x)))


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class PretrainedWeightsError(RuntimeError):
    """ImageNet weights were asked for and cannot be loaded (offline, a missing or wrong file)."""


class ImageNetInput(nn.Module):
    """Images normalized to [-1, 1] -> ImageNet's normalization ((x01 - mean) / std), the input a
    pretrained torchvision ResNet expects."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x + 1) / 2 - self.mean) / self.std


def imagenet_resnet18_state_dict(source: str) -> dict[str, torch.Tensor]:
    """torchvision's ResNet18 ImageNet weights: ``"imagenet"`` (IMAGENET1K_V1 from torch's hub
    cache, downloaded there when missing) or the path of a saved state dict of that model.

    Raises:
        PretrainedWeightsError: not in the cache and no download possible, or an unreadable file.
    """
    try:
        if source == "imagenet":
            return torchvision.models.ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
        return torch.load(source, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure is the same problem for the user
        cache = torch.hub.get_dir() + "/checkpoints/resnet18-f37072fd.pth"
        raise PretrainedWeightsError(
            f"cannot load ResNet18 ImageNet weights from {source!r} ({type(e).__name__}: {e}). Offline? Put "
            f"torchvision's resnet18-f37072fd.pth into {cache}, or give its path (policy.pretrained_backbone=<file>), "
            "or train from scratch (policy.pretrained_backbone=null)") from e


def resnet18_backbone(width: int = 64, norm: str = "group") -> nn.Sequential:
    """torchvision's ResNet18 without its pooling and classifier, with ``width`` channels in the
    first stage (64 is ResNet18's): (N, 3, H, W) -> (N, 8*width, H/32, W/32).

    ``norm``: ``group`` replaces every BatchNorm by GroupNorm (Diffusion Policy, robomimic);
    ``frozen_batch`` keeps BatchNorm's statistics fixed (torchvision's FrozenBatchNorm2d, as ACT's
    reference and DETR do with ImageNet weights, loaded by :func:`load_resnet18_weights`).
    """
    if norm not in ("group", "frozen_batch"):
        raise ValueError(f"norm must be 'group' or 'frozen_batch', got {norm!r}")
    model = torchvision.models.resnet18(weights=None)
    if width != 64:
        model.inplanes = width
        model.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        model.bn1 = nn.BatchNorm2d(width)
        block = torchvision.models.resnet.BasicBlock
        model.layer1 = model._make_layer(block, width, 2)
        model.layer2 = model._make_layer(block, width * 2, 2, stride=2)
        model.layer3 = model._make_layer(block, width * 4, 2, stride=2)
        model.layer4 = model._make_layer(block, width * 8, 2, stride=2)
    body = nn.Sequential(*list(model.children())[:-2])
    if norm == "group":
        return replace_batchnorm(body)
    return _freeze_batchnorm(body)


def _freeze_batchnorm(module: nn.Module) -> nn.Module:
    from torchvision.ops import FrozenBatchNorm2d

    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, FrozenBatchNorm2d(child.num_features))
        else:
            _freeze_batchnorm(child)
    return module


def load_resnet18_weights(backbone: nn.Sequential, source: str) -> None:
    """Load ImageNet weights (see :func:`imagenet_resnet18_state_dict`) into a width-64,
    ``frozen_batch`` :func:`resnet18_backbone`, in place.

    Raises:
        PretrainedWeightsError: the weights cannot be loaded or do not fit.
    """
    state = {k: v for k, v in imagenet_resnet18_state_dict(source).items() if not k.startswith("fc.")}
    names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    mapped = {}
    for k, v in state.items():
        head, _, rest = k.partition(".")
        if head in names and not k.endswith("num_batches_tracked"):
            mapped[f"{names.index(head)}.{rest}"] = v
    try:
        backbone.load_state_dict(mapped, strict=True)
    except RuntimeError as e:
        raise PretrainedWeightsError(f"the weights from {source!r} do not fit torchvision's ResNet18: {e}") from e


class ObsEncoder(nn.Module):
    """Normalized observations {key: (B, To, ...)} -> per-step features (B, To, F).

    Each ``rgb`` key has its own :class:`ResNetImageEncoder`; ``low_dim`` keys are concatenated as
    they are (a state-only policy is just this concatenation). Keys are taken in sorted order so
    features are laid out the same way on every load.
    """

    def __init__(self, obs_meta: Mapping[str, Mapping[str, Any]], image: Mapping[str, Any] | None = None):
        super().__init__()
        self.rgb_keys = sorted(k for k, m in obs_meta.items() if m["type"] == "rgb")
        self.low_dim_keys = sorted(k for k, m in obs_meta.items() if m["type"] == "low_dim")
        self.cameras = nn.ModuleDict({k: ResNetImageEncoder(**(image or {})) for k in self.rgb_keys})
        self.feature_dim = sum(c.feature_dim for c in self.cameras.values()) + sum(
            int(torch.tensor(obs_meta[k]["shape"]).prod()) for k in self.low_dim_keys
        )

    def forward(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        feats = []
        for key in self.rgb_keys:
            x = obs[key]
            b, t = x.shape[:2]
            feats.append(self.cameras[key](x.flatten(0, 1)).unflatten(0, (b, t)))
        for key in self.low_dim_keys:
            feats.append(obs[key].flatten(2))
        return torch.cat(feats, dim=-1)
