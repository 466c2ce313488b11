"""ACT's networks: a CVAE encoder over the action chunk and a DETR-style transformer decoder of
action chunks from image feature maps, the robot state and the latent.

Source: Zhao et al., "Learning Fine-Grained Bimanual Manipulation with Low-Cost Hardware", RSS
2023, section 4 and figure 4; the transformer follows DETR (Carion et al., ECCV 2020): position
embeddings are added to queries and keys in every attention layer, post-norm layers.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def sine_table(n: int, dim: int) -> torch.Tensor:
    """1-D sinusoidal position table (n, dim) (Vaswani et al., 2017)."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    i = torch.arange(dim, dtype=torch.float32)[None]
    angle = pos / torch.pow(10000.0, 2 * torch.div(i, 2, rounding_mode="floor") / dim)
    return torch.where(i.long() % 2 == 0, torch.sin(angle), torch.cos(angle))


def sine_2d(h: int, w: int, dim: int, device=None) -> torch.Tensor:
    """DETR's 2-D sine position embedding of an (h, w) feature map -> (h*w, dim): half the
    channels encode y, half x, each normalized to [0, 2*pi]."""
    half = dim // 2
    ys = torch.arange(1, h + 1, dtype=torch.float32, device=device) / h * 2 * math.pi
    xs = torch.arange(1, w + 1, dtype=torch.float32, device=device) / w * 2 * math.pi
    t = 10000 ** (2 * torch.div(torch.arange(half, device=device), 2, rounding_mode="floor") / half)
    py, px = ys[:, None] / t, xs[:, None] / t  # (h, half), (w, half)
    py = torch.stack([py[:, 0::2].sin(), py[:, 1::2].cos()], dim=2).flatten(1)
    px = torch.stack([px[:, 0::2].sin(), px[:, 1::2].cos()], dim=2).flatten(1)
    return torch.cat([py[:, None].expand(h, w, half), px[None].expand(h, w, half)], dim=-1).reshape(h * w, dim)


class EncoderLayer(nn.Module):
    """Post-norm self-attention layer with the position embedding added to queries and keys."""

    def __init__(self, dim: int, heads: int, ff: int, dropout: float):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(dim, ff), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ff, dim))
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        q = x + pos
        x = self.norm1(x + self.drop(self.attn(q, q, x, need_weights=False)[0]))
        return self.norm2(x + self.drop(self.ff(x)))


class DecoderLayer(nn.Module):
    """Post-norm decoder layer: self-attention over the queries, cross-attention to the memory."""

    def __init__(self, dim: int, heads: int, ff: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(dim, ff), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ff, dim))
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, query_pos, memory, memory_pos):
        q = x + query_pos
        x = self.norm1(x + self.drop(self.self_attn(q, q, x, need_weights=False)[0]))
        x = self.norm2(x + self.drop(self.cross_attn(x + query_pos, memory + memory_pos, memory, need_weights=False)[0]))
        return self.norm3(x + self.drop(self.ff(x)))


class ACTTransformer(nn.Module):
    """Encoder over the observation tokens, decoder from ``chunk_size`` learned queries.

    Every decoder layer feeds the next and the actions are read from the last one, after a final
    LayerNorm. (The reference implementation's output effectively came from its first decoder
    layer only; this one uses the whole stack.)
    """

    def __init__(self, dim: int, heads: int, ff: int, enc_layers: int, dec_layers: int, dropout: float, chunk_size: int):
        super().__init__()
        self.encoder = nn.ModuleList([EncoderLayer(dim, heads, ff, dropout) for _ in range(enc_layers)])
        self.decoder = nn.ModuleList([DecoderLayer(dim, heads, ff, dropout) for _ in range(dec_layers)])
        self.decoder_norm = nn.LayerNorm(dim)
        self.queries = nn.Embedding(chunk_size, dim)

    def forward(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """tokens (B, N, dim), pos (N, dim) or (B, N, dim) -> decoded queries (B, chunk_size, dim)."""
        pos = pos.expand(tokens.shape[0], -1, -1) if pos.ndim == 2 else pos
        memory = tokens
        for layer in self.encoder:
            memory = layer(memory, pos)
        qpos = self.queries.weight[None].expand(tokens.shape[0], -1, -1)
        x = torch.zeros_like(qpos)
        for layer in self.decoder:
            x = layer(x, qpos, memory, pos)
        return self.decoder_norm(x)


class CVAEEncoder(nn.Module):
    """q(z | action chunk, state): a transformer encoder over [CLS, state, a_1..a_k] whose CLS
    output gives the mean and log-variance of the latent (paper section 4, "CVAE encoder")."""

    def __init__(self, action_dim: int, state_dim: int, dim: int, heads: int, ff: int, layers: int, dropout: float,
                 chunk_size: int, latent_dim: int):
        super().__init__()
        self.cls = nn.Embedding(1, dim)
        self.action_proj = nn.Linear(action_dim, dim)
        self.state_proj = nn.Linear(state_dim, dim) if state_dim else None
        layer = nn.TransformerEncoderLayer(dim, heads, ff, dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.to_latent = nn.Linear(dim, 2 * latent_dim)
        self.register_buffer("pos", sine_table(chunk_size + 2, dim), persistent=False)

    def forward(self, actions: torch.Tensor, state: torch.Tensor | None, pad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """actions (B, k, Da) normalized, state (B, Ds), pad (B, k) True where padded -> mu, logvar (B, latent)."""
        b = actions.shape[0]
        tokens = [self.cls.weight[None].expand(b, -1, -1)]
        masks = [torch.zeros(b, 1, dtype=torch.bool, device=actions.device)]
        if self.state_proj is not None:
            tokens.append(self.state_proj(state)[:, None])
            masks.append(masks[0])
        tokens.append(self.action_proj(actions))
        masks.append(pad)
        x = torch.cat(tokens, dim=1)
        x = self.encoder(x + self.pos[: x.shape[1]], src_key_padding_mask=torch.cat(masks, dim=1))
        mu, logvar = self.to_latent(x[:, 0]).chunk(2, dim=-1)
        return mu, logvar
