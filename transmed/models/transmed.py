"""TransMed: a CNN stem per slice-image, tokens tagged with modality and position, transformer fusion.

Dai, Gao & Liu, "TransMed: Transformers Advance Multi-modal Medical Image Classification", 2021.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
from einops import rearrange, repeat
from torch import nn
from torch.utils.checkpoint import checkpoint

from .stem import CNNStem, Pretrained
from .tokens import SliceTokenizer, TokenEmbedding, group_slices
from .transformer import Encoder

VARIANTS: dict[str, dict[str, int]] = {
    "tiny": dict(dim=192, heads=3, depth=4),
    "small": dict(dim=384, heads=6, depth=6),
    "base": dict(dim=768, heads=12, depth=12),
}


def _keep_buffers(module: nn.Module) -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
    """Checkpoint contexts that undo the recomputation's buffer updates (BatchNorm running stats count once)."""

    @contextlib.contextmanager
    def restore() -> Iterator[None]:
        saved = [(buf, buf.clone()) for buf in module.buffers()]
        try:
            yield
        finally:
            with torch.no_grad():
                for buf, value in saved:
                    buf.copy_(value)

    return contextlib.nullcontext(), restore()


def check_inputs(x: torch.Tensor, mask: Optional[torch.Tensor], num_modalities: int) -> torch.Tensor:
    """Validates (B, M, S, H, W) input and returns the (B, M, S) bool mask (all True when None)."""
    if x.dim() != 5:
        raise ValueError(f"expected x of shape (batch, modalities, slices, height, width), got {tuple(x.shape)}")
    if x.shape[1] != num_modalities:
        raise ValueError(f"model expects {num_modalities} modalities, x has {x.shape[1]} (shape {tuple(x.shape)})")
    if mask is None:
        return torch.ones(x.shape[:3], dtype=torch.bool, device=x.device)
    if mask.shape != x.shape[:3]:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match x's (batch, modalities, slices) {tuple(x.shape[:3])}")
    return mask.bool()


class TransMed(nn.Module):
    """Multi-modal slice-stack classifier. Input x (B, M, S, H, W) in [0, 1], mask (B, M, S); output logits."""

    def __init__(
        self,
        *,
        num_modalities: int,
        num_outputs: int,
        backbone: str = "resnet18",
        pretrained: Pretrained = False,
        variant: str = "tiny",
        depth: Optional[int] = None,
        stem_stage: int = -1,
        grid_size: int = 2,
        slice_window: int = 3,
        slice_stride: int = 1,
        slice_mode: str = "group",
        dropout: float = 0.1,
        drop_path: float = 0.0,
        stem_chunk: Optional[int] = None,
        channels_last: bool = False,
        checkpoint_stem: bool = False,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; expected one of {sorted(VARIANTS)}")
        spec = VARIANTS[variant]
        self.num_modalities = num_modalities
        self.num_outputs = num_outputs
        self.slice_window, self.slice_stride, self.slice_mode = slice_window, slice_stride, slice_mode
        self.stem_chunk = stem_chunk
        self.checkpoint_stem = checkpoint_stem
        self.dim = spec["dim"]
        self.stem = CNNStem(backbone, pretrained, stem_stage, channels_last=channels_last)
        self.tokenizer = SliceTokenizer(self.stem.out_channels, self.dim, grid_size)
        self.embed = TokenEmbedding(self.dim, num_modalities, grid_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, self.dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.encoder = Encoder(self.dim, depth if depth is not None else spec["depth"], spec["heads"], dropout, drop_path)
        self.head_drop = nn.Dropout(dropout)
        self.head = nn.Linear(self.dim, num_outputs)

    def _run_stem(self, images: torch.Tensor) -> torch.Tensor:
        """The stem's feature maps; with `checkpoint_stem` in training its activations are recomputed in backward."""
        if not (self.checkpoint_stem and self.training and torch.is_grad_enabled()):
            return self.stem(images)
        if torch.compiler.is_compiling():  # compiled graphs apply buffer updates once by themselves
            return checkpoint(self.stem, images, use_reentrant=False)
        return checkpoint(self.stem, images, use_reentrant=False, context_fn=lambda: _keep_buffers(self.stem))

    def _stem_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, P, D), optionally in chunks so memory stays bounded for long stacks."""
        if self.stem_chunk is None or images.shape[0] <= self.stem_chunk:
            return self.tokenizer(self._run_stem(images))
        return torch.cat([self.tokenizer(self._run_stem(chunk)) for chunk in images.split(self.stem_chunk)])

    def tokenize(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens (B, 1 + M*G*P, D) with the class token first, and their key mask (B, 1 + M*G*P).

        Only real slice groups go through the stem; padded positions hold zeros plus embeddings and
        are masked out of attention, so padding cannot change any output.
        """
        mask = check_inputs(x, mask, self.num_modalities)
        images, group_mask = group_slices(x, mask, self.slice_window, self.slice_stride, self.slice_mode)
        b, m, g = group_mask.shape
        real = images[group_mask]
        p = self.tokenizer.grid_size**2
        tokens = x.new_zeros(b, m, g, p, self.dim)
        if real.shape[0]:
            tokens = tokens.index_put((group_mask,), self._stem_tokens(real).to(tokens.dtype))
        tokens = rearrange(self.embed(tokens), "b m g p d -> b (m g p) d")
        key_mask = repeat(group_mask, "b m g -> b (m g p)", p=p)
        tokens = torch.cat([self.cls_token.expand(b, -1, -1).to(tokens.dtype), tokens], dim=1)
        key_mask = torch.cat([key_mask.new_ones(b, 1), key_mask], dim=1)
        return tokens, key_mask

    def forward_features(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Encoded tokens (B, 1 + T, D); index 0 is the class token."""
        tokens, key_mask = self.tokenize(x, mask)
        return self.encoder(tokens, key_mask)[0]

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        cls = self.head_drop(features[:, 0])
        return cls if pre_logits else self.head(cls)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.forward_head(self.forward_features(x, mask))

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        """Per-layer attention over tokens, for interpretation.

        Returns `attention` (L, B, heads, 1+T, 1+T), the `key_mask` (B, 1+T) and `layout` (T, 3) holding
        each non-class token's (modality, slice group, grid cell); padded keys get zero weight.
        """
        tokens, key_mask = self.tokenize(x, mask)
        _, maps = self.encoder(tokens, key_mask, return_attention=True)
        m = self.num_modalities
        g = (key_mask.shape[1] - 1) // (m * self.tokenizer.grid_size**2)
        p = self.tokenizer.grid_size**2
        layout = torch.cartesian_prod(torch.arange(m), torch.arange(g), torch.arange(p))
        return {"attention": torch.stack(maps), "key_mask": key_mask, "layout": layout}
