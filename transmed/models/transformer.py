"""Pre-norm transformer encoder on `scaled_dot_product_attention` with a key padding mask."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class DropPath(nn.Module):
    """Stochastic depth per sample."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty(x.shape[0], *([1] * (x.dim() - 1))).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, key_mask: Optional[torch.Tensor] = None, return_attention: bool = False
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """x: (B, T, D); key_mask: (B, T) True for real tokens. Returns output and (B, heads, T, T) attention if asked."""
        q, k, v = rearrange(self.qkv(x), "b t (three h d) -> three b h t d", three=3, h=self.heads)
        attn_mask = None if key_mask is None else rearrange(key_mask, "b t -> b 1 1 t")
        if return_attention:
            scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
            if attn_mask is not None:
                scores = scores.masked_fill(~attn_mask, float("-inf"))
            weights = scores.softmax(dim=-1)
            out = weights @ v
        else:
            weights = None
            p = self.dropout if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
        return self.proj(rearrange(out, "b h t d -> b t (h d)")), weights


class LayerScale(nn.Module):
    """Learned per-channel scale of a residual branch (Touvron et al. 2021, CaiT; timm's `init_values`).

    A small initial value makes every block start close to the identity, so the stem's tokens reach
    the head unchanged at step 0 and attention grows in as it learns.
    """

    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init_value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        drop_path: float = 0.0,
        layer_scale: Optional[float] = None,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim), nn.Dropout(dropout))
        self.drop_path = DropPath(drop_path)
        self.ls1 = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()
        self.ls2 = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()

    def forward(
        self, x: torch.Tensor, key_mask: Optional[torch.Tensor] = None, return_attention: bool = False
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        attended, weights = self.attn(self.norm1(x), key_mask, return_attention)
        x = x + self.drop_path(self.ls1(attended))
        x = x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))
        return x, weights


class Encoder(nn.Module):
    """Pre-norm transformer blocks and a final LayerNorm on every token (`final_norm=False`: none, for
    a model that normalises after pooling the tokens instead, timm's `fc_norm`)."""

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        dropout: float = 0.0,
        drop_path: float = 0.0,
        layer_scale: Optional[float] = None,
        final_norm: bool = True,
    ) -> None:
        super().__init__()
        rates = torch.linspace(0, drop_path, depth).tolist() if depth else []
        self.blocks = nn.ModuleList(Block(dim, heads, dropout=dropout, drop_path=r, layer_scale=layer_scale) for r in rates)
        self.norm = nn.LayerNorm(dim) if final_norm else nn.Identity()

    def forward(
        self, x: torch.Tensor, key_mask: Optional[torch.Tensor] = None, return_attention: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        maps = []
        for block in self.blocks:
            x, weights = block(x, key_mask, return_attention)
            if weights is not None:
                maps.append(weights)
        return self.norm(x), maps
