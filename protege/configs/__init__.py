"""Hydra config groups (robot/, task/, policy/, ...), shipped as package data, and the resolvers
they use (registered when this package is imported: by hydra's config-module lookup and by the
tools' entry points)."""

from __future__ import annotations

from omegaconf import OmegaConf

# Diffusion Policy's published configs (Chi et al., RSS 2023; diffusion_policy/config/): the
# low-dim (state) U-Net and the image one differ in size.
DP_PAPER_UNET = {
    "state": {"down_dims": [256, 512, 1024], "diffusion_step_embed_dim": 256},  # train_diffusion_unet_lowdim_workspace
    "image": {"down_dims": [512, 1024, 2048], "diffusion_step_embed_dim": 128},  # train_diffusion_unet_hybrid_workspace
}


def dp_paper_unet(obs, field: str):
    """``${dp_paper_unet:${task.obs},down_dims}``: the paper's U-Net ``field`` for a task whose
    observations ``obs`` include a camera (the image config) or not (the state config)."""
    image = any((spec or {}).get("type") == "rgb" for spec in (obs or {}).values())
    return DP_PAPER_UNET["image" if image else "state"][field]


OmegaConf.register_new_resolver("dp_paper_unet", dp_paper_unet, replace=True)
