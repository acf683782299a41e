"""From slice stacks to tokens: slice grouping, grid pooling and the token embeddings."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn


def sliding_windows(t: torch.Tensor, window: int, stride: int, gather: bool = False) -> torch.Tensor:
    """Windows along the slice axis: (B, M, S, ...) -> (B, M, G, window, ...), G = (S - window) // stride + 1.

    A view through `unfold` by default; `gather=True` indexes the slices instead (a copy), which
    every exporter takes (the TorchScript ONNX exporter has no `Unfold`). Both hold the same values.
    """
    if not gather:
        return rearrange(t.unfold(2, window, stride), "b m g ... w -> b m g w ...")
    groups = (t.shape[2] - window) // stride + 1
    index = rearrange(torch.arange(groups, device=t.device) * stride, "g -> g 1") + torch.arange(window, device=t.device)
    return t[:, :, index]


def group_slices(
    x: torch.Tensor, mask: torch.Tensor, window: int = 3, stride: int = 1, mode: str = "group", gather: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adjacent slices become 3-channel images (TransMed); a group is real only if all its slices are.

    x: (B, M, S, H, W), mask: (B, M, S) -> images (B, M, G, 3, H, W), group mask (B, M, G).
    With `stride` > 1 a stack whose real slices do not end on a group boundary gets one more group
    that repeats its last slice (8 slices, stride 3: 0-1-2, 3-4-5, 6-7-7), so no slice is left out.
    `mode="replicate"` puts each single slice (every `stride`-th) on all three channels instead.
    `gather=True` builds the groups by indexing rather than `unfold` (see `sliding_windows`), for export.
    """
    if mode == "replicate":
        x = rearrange(sliding_windows(x, 1, stride, gather), "b m g 1 h w -> b m g h w")  # every stride-th slice
        mask = rearrange(sliding_windows(mask, 1, stride, gather), "b m g 1 -> b m g")
        return repeat(x, "b m g h w -> b m g c h w", c=3), mask
    if mode != "group":
        raise ValueError(f"unknown slice grouping mode {mode!r}; expected 'group' or 'replicate'")
    if window != 3:
        raise ValueError(f"slice_window must be 3 for mode 'group' (one slice per RGB channel), got {window}")
    if stride > 1:
        x, mask = _extend_tails(x, mask, window, stride)
    s = x.shape[2]
    if s < window:  # too short a padded stack: pad so it yields one (masked-out) group
        x = F.pad(x, (0, 0, 0, 0, 0, window - s))
        mask = F.pad(mask, (0, window - s))
    images = sliding_windows(x, window, stride, gather)  # (b, m, g, c=window, h, w)
    group_mask = sliding_windows(mask, window, stride, gather).all(dim=3)
    return images, group_mask


def _extend_tails(x: torch.Tensor, mask: torch.Tensor, window: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each stack's last real slice repeated until its real slices end on a group boundary.

    Stacks get `stride - 1` more positions; what a stack gains depends on its own real slices only
    (padding and batch mates cannot change it).
    """
    b, m, s = mask.shape
    j = torch.arange(s + stride - 1, device=mask.device)
    count = (mask * torch.arange(1, s + 1, device=mask.device)).amax(dim=-1)  # last real slice + 1 (0: none)
    extended = torch.where(count >= window, window + (count - window + stride - 1) // stride * stride, count)
    index = torch.minimum(j.expand(b, m, -1), (count - 1).clamp(min=0).unsqueeze(-1))
    new_mask = mask.gather(2, index) & (j < extended.unsqueeze(-1))
    new_x = x.gather(2, index.view(b, m, -1, 1, 1).expand(-1, -1, -1, *x.shape[-2:]))
    return new_x, new_mask


def sinusoidal(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Fixed sine/cosine features for any (non-negative, real-valued) positions: (...,) -> (..., dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=positions.device, dtype=torch.float32) / half)
    angles = positions.float().unsqueeze(-1) * freqs
    emb = torch.cat([angles.sin(), angles.cos()], dim=-1)
    return F.pad(emb, (0, dim - 2 * half))


class SliceTokenizer(nn.Module):
    """Feature map (N, C, h, w) -> g*g tokens (N, g*g, D): adaptive average pool to a g x g grid, then project."""

    def __init__(self, in_channels: int, dim: int, grid_size: int = 2) -> None:
        super().__init__()
        self.grid_size = grid_size
        self.norm = nn.LayerNorm(in_channels)
        self.proj = nn.Linear(in_channels, dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(features, self.grid_size)
        return self.proj(self.norm(rearrange(pooled, "n c gh gw -> n (gh gw) c")))


class TokenEmbedding(nn.Module):
    """Adds modality, slice-position and in-plane grid-position embeddings to tokens (B, M, G, P, D).

    Slice position is sinusoidal in the group's index (no maximum slice count), passed through a
    learned linear map so the model can choose how much it uses it.
    """

    def __init__(self, dim: int, num_modalities: int, grid_size: int) -> None:
        super().__init__()
        self.dim = dim
        self.modality = nn.Parameter(torch.zeros(num_modalities, dim))
        self.grid = nn.Parameter(torch.zeros(grid_size * grid_size, dim))
        self.slice_proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.modality, std=0.02)
        nn.init.trunc_normal_(self.grid, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        _, _, g, _, _ = tokens.shape
        slice_pos = self.slice_proj(sinusoidal(torch.arange(g, device=tokens.device), self.dim)).to(tokens.dtype)
        return (
            tokens
            + rearrange(self.modality, "m d -> 1 m 1 1 d")
            + rearrange(slice_pos, "g d -> 1 1 g 1 d")
            + rearrange(self.grid, "p d -> 1 1 1 p d")
        )
