"""1-D temporal conditional U-Net with FiLM conditioning.

Source: Chi et al., "Diffusion Policy: Visuomotor Policy Learning via Action Diffusion", RSS 2023,
section 3.2 ("CNN-based"): convolutions over the action sequence's time axis, each residual block
modulated per channel by FiLM (Perez et al., AAAI 2018) from the diffusion step embedding
concatenated with the observation features.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class SinusoidalPosEmb(nn.Module):
    """Diffusion step k (B,) -> (B, dim) sinusoidal embedding (Vaswani et al., 2017)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, k: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freq = torch.exp(torch.arange(half, device=k.device) * -(math.log(10000) / (half - 1)))
        arg = k.float()[:, None] * freq[None]
        return torch.cat([arg.sin(), arg.cos()], dim=-1)


class TemporalConv1d(nn.Conv1d):
    """``nn.Conv1d`` (zero padding, no groups or dilation) over the time axis that can compute the
    same convolution as one matrix product: the input's sliding windows (B, L_out, C_in * K)
    times the flattened weight (C_out, C_in * K) transposed. ``as_matmul``: None (the default)
    takes that form on the CPU whenever gradients are being recorded (training) and
    ``nn.Conv1d``'s kernels otherwise (eager inference, any GPU); True always takes it (a
    compiled policy's inference); False never (``benchmarks/train_speed.py``'s baseline).

    Why, in training: the matrix product's backward is two matrix products, which the CPU's math
    library runs at its full rate, while PyTorch's convolution backward over these short sequences
    (L = 16, 8, 4, the U-Net's levels) and wide channels runs at a fraction of it
    (``benchmarks/train_speed.py --size paper`` times both). At inference, batch 1: PyTorch's
    CPU convolution (``_slow_conv2d_forward``: im2col, then a GEMM with L columns) is slow too;
    compiled with frozen weights (inductor lowers the product to a prepacked kernel, the CPU math
    library's or its own C++ GEMM template's, whichever times faster, and fuses the windowing into
    the kernel before it), a U-Net call takes a fraction of the time
    (``DiffusionPolicy.compile_for_inference``); eager, the windowing's copy makes it a little
    slower than the convolution, so eager inference keeps the convolution. The result equals the
    convolution's up to float rounding; the weights and state dict are ``nn.Conv1d``'s.

    Shapes: (B, C_in, L) float -> (B, C_out, L_out), ``L_out = (L + 2p - K) // stride + 1``.
    """

    as_matmul: bool | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.groups != 1 or self.dilation != (1,) or self.padding_mode != "zeros" or isinstance(self.padding, str):
            raise ValueError("TemporalConv1d supports zero padding given as a number, no groups and no dilation")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        matmul = self.as_matmul if self.as_matmul is not None else torch.is_grad_enabled() and x.device.type == "cpu"
        if not matmul:
            return super().forward(x)
        (k,), (stride,), (pad,) = self.kernel_size, self.stride, self.padding
        windows = F.pad(x, (pad, pad)).unfold(2, k, stride).transpose(1, 2)  # (B, L_out, C_in, K)
        windows = windows.reshape(x.shape[0], windows.shape[1], self.in_channels * k)
        return F.linear(windows, self.weight.reshape(self.out_channels, -1), self.bias).transpose(1, 2)


class Conv1dBlock(nn.Sequential):
    """Conv1d -> GroupNorm -> Mish, length preserving."""

    def __init__(self, cin: int, cout: int, kernel_size: int, n_groups: int = 8):
        super().__init__(
            TemporalConv1d(cin, cout, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, cout),
            nn.Mish(),
        )


class ConditionalResidualBlock1D(nn.Module):
    """Two conv blocks; the condition sets a per-channel scale and bias (FiLM) between them."""

    def __init__(self, cin: int, cout: int, cond_dim: int, kernel_size: int = 5, n_groups: int = 8):
        super().__init__()
        self.block1 = Conv1dBlock(cin, cout, kernel_size, n_groups)
        self.block2 = Conv1dBlock(cout, cout, kernel_size, n_groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * cout))
        self.residual = TemporalConv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, bias = self.film(cond).unsqueeze(-1).chunk(2, dim=1)
        out = self.block1(x) * scale + bias
        return self.block2(out) + self.residual(x)


class ConditionalUnet1D(nn.Module):
    """Noise prediction network eps(x_k, k, obs_features).

    Args:
        input_dim: action dimension Da.
        global_cond_dim: size of the flattened observation features (To * F).
        diffusion_step_embed_dim: size of the step embedding.
        down_dims: channels per U-Net level; the horizon must be divisible by
            2 ** (len(down_dims) - 1).
        kernel_size, n_groups: convolution kernel over time and GroupNorm groups.

    Shapes: ``forward(sample (B, horizon, Da), timestep (B,) int, global_cond (B, To*F)) -> (B, horizon, Da)``.
    """

    def __init__(
        self,
        input_dim: int,
        global_cond_dim: int,
        diffusion_step_embed_dim: int = 128,
        down_dims: tuple[int, ...] = (256, 512, 1024),
        kernel_size: int = 5,
        n_groups: int = 8,
    ):
        super().__init__()
        dsed = diffusion_step_embed_dim
        self.step_encoder = nn.Sequential(
            SinusoidalPosEmb(dsed), nn.Linear(dsed, dsed * 4), nn.Mish(), nn.Linear(dsed * 4, dsed)
        )
        cond_dim = dsed + global_cond_dim
        dims = [input_dim, *down_dims]
        block = lambda i, o: ConditionalResidualBlock1D(i, o, cond_dim, kernel_size, n_groups)  # noqa: E731
        self.down = nn.ModuleList()
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            last = i == len(down_dims) - 1
            self.down.append(nn.ModuleList([
                block(cin, cout), block(cout, cout),
                TemporalConv1d(cout, cout, 3, stride=2, padding=1) if not last else nn.Identity(),
            ]))
        self.mid = nn.ModuleList([block(down_dims[-1], down_dims[-1]), block(down_dims[-1], down_dims[-1])])
        self.up = nn.ModuleList()
        # as in the reference, every up level upsamples and the finest skip is left unused
        for cin, cout in reversed(list(zip(dims[1:-1], dims[2:]))):
            self.up.append(nn.ModuleList([
                block(cout * 2, cin), block(cin, cin), nn.ConvTranspose1d(cin, cin, 4, stride=2, padding=1),
            ]))
        self.final = nn.Sequential(Conv1dBlock(down_dims[0], down_dims[0], kernel_size, n_groups), TemporalConv1d(down_dims[0], input_dim, 1))
        self.downsampling = 2 ** (len(down_dims) - 1)

    def convs_as_matmul(self, on: bool | None) -> None:
        """Compute every convolution except the upsampling ones as a matrix product (``True``),
        with ``nn.Conv1d``'s kernels (``False``), or as :class:`TemporalConv1d` chooses by default
        (``None``: matrix products in training on the CPU)."""
        for m in self.modules():
            if isinstance(m, TemporalConv1d):
                m.as_matmul = on

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, global_cond: torch.Tensor) -> torch.Tensor:
        if sample.shape[1] % self.downsampling:
            raise ValueError(f"horizon {sample.shape[1]} must be divisible by {self.downsampling}")
        cond = torch.cat([self.step_encoder(timestep.expand(sample.shape[0])), global_cond], dim=-1)
        x = sample.transpose(1, 2)  # (B, Da, T)
        skips = []
        for res1, res2, downsample in self.down:
            x = res2(res1(x, cond), cond)
            skips.append(x)
            x = downsample(x)
        for res in self.mid:
            x = res(x, cond)
        for res1, res2, upsample in self.up:
            x = torch.cat([x, skips.pop()], dim=1)
            x = upsample(res2(res1(x, cond), cond))
        return self.final(x).transpose(1, 2)
