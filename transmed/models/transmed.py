"""TransMed: a CNN stem per slice-image, tokens tagged with modality and position, transformer fusion.

Dai, Gao & Liu, "TransMed: Transformers Advance Multi-modal Medical Image Classification", 2021.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Sequence

import torch
from einops import rearrange, repeat
from torch import nn
from torch.utils.checkpoint import checkpoint

from .stem import CNNStem, Pretrained
from .tokens import SliceTokenizer, TokenEmbedding, group_slices
from .transformer import Encoder

POOLS = ("cls", "mean", "modality")  # what the head reads (`pool`)
FUSES = ("linear", "mlp")  # how `pool="modality"` joins the modalities' means (`fuse`)
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


def exporting() -> bool:
    """True while `torch.export` (also under `torch.onnx.export(dynamo=True)`), the TorchScript ONNX
    exporter or `torch.jit.trace` records the model: the paths with data-dependent shapes must be off."""
    return torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()


def check_inputs(x: torch.Tensor, mask: Optional[torch.Tensor], num_modalities: int, missing: Sequence[int] = ()) -> torch.Tensor:
    """Validates (B, M, S, H, W) input and returns the (B, M, S) bool mask (all True when None), with the
    modalities at `missing` marked missing (a model's `drop_modalities` in eval mode)."""
    if x.dim() != 5:
        raise ValueError(f"expected x of shape (batch, modalities, slices, height, width), got {tuple(x.shape)}")
    if x.shape[1] != num_modalities:
        raise ValueError(f"model expects {num_modalities} modalities, x has {x.shape[1]} (shape {tuple(x.shape)})")
    if mask is None:
        mask = torch.ones(x.shape[:3], dtype=torch.bool, device=x.device)
    elif mask.shape != x.shape[:3]:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match x's (batch, modalities, slices) {tuple(x.shape[:3])}")
    if missing:
        mask = mask.clone()
        mask[:, list(missing)] = False
    return mask.bool()


class TransMed(nn.Module):
    """Multi-modal slice-stack classifier: x (B, M, S, H, W) in [0, 1] and mask (B, M, S) -> logits (B, K).

    Every run of 3 adjacent slices of a modality becomes one RGB image for a timm CNN stem; its
    feature map is pooled to a `grid_size` x `grid_size` grid of tokens, which get modality,
    slice-position and grid-position embeddings; a transformer fuses all tokens of all modalities
    and a linear head reads the class token. `mask` marks real slices (False: padding, or a whole
    missing modality); padded slice groups are masked out of attention and cannot change the output.

    Args:
        num_modalities: M, the number of MRI sequences or planes per study (input axis 1), in a fixed order.
        num_outputs: K, the number of logits: one per task (multilabel, sigmoid) or per class (softmax).
        backbone: any timm CNN with `features_only` support, e.g. "resnet18", "efficientnet_b0".
        pretrained: False (random init), True (timm's ImageNet weights, from the Hugging Face hub or
            its cache) or the path of a local weights file for the backbone.
        variant: transformer size: "tiny" (width 192, 3 heads, 4 layers), "small" (384, 6, 6), "base" (768, 12, 12).
        depth: number of transformer layers; None takes the variant's.
        stem_stage: which timm feature stage of the backbone gives the tokens (-1: the last).
        grid_size: the stem's feature map is average-pooled to grid_size x grid_size tokens per slice group.
        slice_window: slices per group; must be 3 for `slice_mode="group"` (one per RGB channel).
        slice_stride: step between groups along the slice axis (1: overlapping groups, 3: disjoint);
            with stride > 1 a stack's last group repeats its last real slice so that none is left out.
        slice_mode: "group" (adjacent slices as channels) or "replicate" (every `slice_stride`-th
            slice copied to all three channels).
        dropout: dropout in attention, MLP and before the head.
        drop_path: stochastic-depth rate of the last transformer layer (linearly increasing from 0).
        stem_chunk: if set, at most this many slice images go through the stem at once (bounded memory
            for long stacks; no effect on outputs).
        channels_last: keep the stem in NHWC memory layout (faster convolutions on tensor cores and oneDNN).
        checkpoint_stem: in training, recompute the stem's activations in backward instead of storing them.
        drop_modalities: positions of modalities the model sees as missing in eval mode (`data.drop_modalities`:
            robustness to a missing sequence); training sees them all.
        pool: what the head reads: "cls" (the class token's output, as in the paper), "mean" (the mean of
            the real tokens' outputs: every token reaches the head directly from the first step) or
            "modality" (each modality's mean, concatenated and projected to the width: the head also knows
            which modality a token came from, as late fusion's does).
        fuse: with `pool="modality"`, how the concatenated means become what the head reads: "linear"
            (one linear map) or "mlp" (LayerNorm, linear map, GELU: the first half of late fusion's head,
            so the two differ only in the transformer; on the fusion-needing synthetic sets of issue 22
            it narrowed TransMed's gap to late fusion on parotid-like data, within the seeds' noise).
        fc_norm: with `pool` "mean" or "modality", LayerNorm on each pooled mean instead of the encoder's
            final LayerNorm on every token (timm's `fc_norm`, as its ViTs do with average pooling). A
            per-token norm gives every slice group the same scale before the mean, so a lesion seen in
            two of twelve groups is diluted by the other ten; normalising after the mean keeps it, as late
            fusion's head does (issue 22, knee-like data, 3 seeds: the last epoch's test AUC 0.999 against 0.967).
        layer_scale: initial value of a learned per-channel scale on every residual branch (None: none);
            a small value starts each transformer block close to the identity.
        num_classifiers: linear heads over the one shared stem and encoder; the logits are their mean.
            Tri-net (`train.semi.method=tri_net`) trains 3, each on its own pseudo-labels; 1 otherwise.

    Example::

        >>> import torch
        >>> from transmed import TransMed
        >>> model = TransMed(num_modalities=3, num_outputs=3, backbone="resnet18", variant="tiny").eval()
        >>> x = torch.rand(2, 3, 12, 64, 64)  # (batch, modality, slice, height, width) in [0, 1]
        >>> mask = torch.ones(2, 3, 12, dtype=torch.bool)
        >>> mask[1, 2, 9:] = False  # study 1's third modality has 9 slices: the rest is padding
        >>> model(x, mask).shape  # logits
        torch.Size([2, 3])

    In training only real slice groups go through the stem. With `export_mode` set, and always while
    an exporter records the model (`torch.export`, `torch.onnx.export`, `torch.jit.trace`), every slice
    group goes through it and padded groups' tokens are zeroed with `torch.where`: no shape depends on
    the mask's values, and the logits equal the default path's (see `transmed.deploy`).
    """

    export_mode: bool = False  # dense forward: no data-dependent shapes (set by transmed.deploy's exporters)

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
        drop_modalities: Sequence[int] = (),
        pool: str = "cls",
        fuse: str = "linear",
        fc_norm: bool = False,
        layer_scale: Optional[float] = None,
        num_classifiers: int = 1,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; expected one of {sorted(VARIANTS)}")
        if pool not in POOLS:
            raise ValueError(f"unknown pooling {pool!r}; expected one of {list(POOLS)}")
        if fuse not in FUSES or (fuse != "linear" and pool != "modality"):
            raise ValueError(f"fuse {fuse!r}: expected one of {list(FUSES)}, and 'mlp' only with pool 'modality' (pool is {pool!r})")
        if fc_norm and pool == "cls":
            raise ValueError("fc_norm normalises pooled tokens: it needs pool 'mean' or 'modality' (pool is 'cls')")
        spec = VARIANTS[variant]
        self.num_modalities = num_modalities
        self.num_outputs = num_outputs
        self.slice_window, self.slice_stride, self.slice_mode = slice_window, slice_stride, slice_mode
        self.stem_chunk = stem_chunk
        self.checkpoint_stem = checkpoint_stem
        self.drop_modalities = tuple(drop_modalities)
        self.pool = pool
        self.dim = spec["dim"]
        self.stem = CNNStem(backbone, pretrained, stem_stage, channels_last=channels_last)
        self.tokenizer = SliceTokenizer(self.stem.out_channels, self.dim, grid_size)
        self.embed = TokenEmbedding(self.dim, num_modalities, grid_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, self.dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        depth = depth if depth is not None else spec["depth"]
        self.encoder = Encoder(self.dim, depth, spec["heads"], dropout, drop_path, layer_scale, final_norm=not fc_norm)
        self.fc_norm = nn.LayerNorm(self.dim) if fc_norm else None
        self.fuse = None if pool != "modality" else self._fusion(num_modalities * self.dim, fuse)
        self.head_drop = nn.Dropout(dropout)
        self.num_classifiers = num_classifiers
        self.head = nn.Linear(self.dim, num_classifiers * num_outputs)  # the classifiers side by side: (C K) outputs

    def _fusion(self, width: int, fuse: str) -> nn.Module:
        """The modalities' concatenated means (width M * D) -> what the head reads (D)."""
        if fuse == "linear":
            return nn.Linear(width, self.dim)
        return nn.Sequential(nn.LayerNorm(width), nn.Linear(width, self.dim), nn.GELU())

    def _run_stem(self, images: torch.Tensor) -> torch.Tensor:
        """The stem's feature maps; with `checkpoint_stem` in training its activations are recomputed in backward."""
        if not (self.checkpoint_stem and self.training and torch.is_grad_enabled()):
            return self.stem(images)
        if torch.compiler.is_compiling():  # compiled graphs apply buffer updates once by themselves
            return checkpoint(self.stem, images, use_reentrant=False)
        return checkpoint(self.stem, images, use_reentrant=False, context_fn=lambda: _keep_buffers(self.stem))

    def _stem_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, P, D), optionally in chunks so memory stays bounded for long stacks."""
        if self.stem_chunk is None or exporting() or images.shape[0] <= self.stem_chunk:
            return self.tokenizer(self._run_stem(images))
        return torch.cat([self.tokenizer(self._run_stem(chunk)) for chunk in images.split(self.stem_chunk)])

    def _real_tokens(self, images: torch.Tensor, group_mask: torch.Tensor) -> torch.Tensor:
        """Images (B, M, G, 3, H, W) -> stem tokens (B, M, G, P, D): only real groups go through the stem, the rest are zeros."""
        b, m, g = group_mask.shape
        tokens = images.new_zeros(b, m, g, self.tokenizer.grid_size**2, self.dim)
        real = images[group_mask]  # (N_real, 3, H, W): its size depends on the mask's values
        if real.shape[0]:
            tokens = tokens.index_put((group_mask,), self._stem_tokens(real).to(tokens.dtype))
        return tokens

    def _dense_tokens(self, images: torch.Tensor, group_mask: torch.Tensor) -> torch.Tensor:
        """`_real_tokens` with static shapes: every group goes through the stem, padded groups' tokens become zeros.

        Per-image layers only (BatchNorm in eval mode), so padded images cannot reach real ones' tokens.
        """
        b, m, _ = group_mask.shape
        tokens = self._stem_tokens(rearrange(images, "b m g c h w -> (b m g) c h w"))
        tokens = rearrange(tokens, "(b m g) p d -> b m g p d", b=b, m=m).to(images.dtype)
        return torch.where(rearrange(group_mask, "b m g -> b m g 1 1"), tokens, torch.zeros_like(tokens))

    def tokenize(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens (B, 1 + M*G*P, D) with the class token first, and their key mask (B, 1 + M*G*P).

        Padded positions hold zeros plus embeddings and are masked out of attention, so padding
        cannot change any output. Only real slice groups go through the stem, except in the dense
        path (`export_mode`, or while exporting), where all do and padded ones are zeroed after.
        """
        mask = check_inputs(x, mask, self.num_modalities, missing=() if self.training else self.drop_modalities)
        dense = self.export_mode or exporting()
        images, group_mask = group_slices(x, mask, self.slice_window, self.slice_stride, self.slice_mode, gather=dense)
        b = group_mask.shape[0]
        p = self.tokenizer.grid_size**2
        tokens = self._dense_tokens(images, group_mask) if dense else self._real_tokens(images, group_mask)
        tokens = rearrange(self.embed(tokens), "b m g p d -> b (m g p) d")
        key_mask = repeat(group_mask, "b m g -> b (m g p)", p=p)
        tokens = torch.cat([self.cls_token.expand(b, -1, -1).to(tokens.dtype), tokens], dim=1)
        key_mask = torch.cat([key_mask.new_ones(b, 1), key_mask], dim=1)
        return tokens, key_mask

    def forward_features(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Encoded tokens (B, 1 + T, D); index 0 is what the head reads: the class token's output, or
        with `pool` "mean" or "modality" the pooled real (unpadded) tokens' outputs in its place."""
        tokens, key_mask = self.tokenize(x, mask)
        encoded = self.encoder(tokens, key_mask)[0]
        if self.pool == "cls":
            return encoded
        groups = 1 if self.pool == "mean" else self.num_modalities  # tokens are in modality order: (m g p)
        # b (m t) d -> b m t d, spelled with unflatten: einops' rearrange fixes the batch size under torch.export
        per_group = encoded[:, 1:].unflatten(1, (groups, -1))
        weights = key_mask[:, 1:].unflatten(1, (groups, -1)).unsqueeze(-1).to(encoded.dtype)
        count = weights.sum(dim=2)  # (B, groups, 1): real tokens per group
        pooled = (per_group * weights).sum(dim=2) / count.clamp(min=1)  # (B, groups, D); a missing modality: zeros
        if self.fc_norm is not None:
            pooled = torch.where(count > 0, self.fc_norm(pooled), torch.zeros_like(pooled))  # a missing modality stays zeros
        pooled = pooled[:, 0] if self.fuse is None else self.fuse(pooled.flatten(1))  # b m d -> b (m d)
        return torch.cat([pooled[:, None], encoded[:, 1:]], dim=1)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False, classifiers: bool = False) -> torch.Tensor:
        """Logits (B, K), the mean over the classifiers; with `classifiers` each one's (B, C, K); with
        `pre_logits` what the heads read (B, D)."""
        cls = self.head_drop(features[:, 0])
        return cls if pre_logits else self.classify(cls, classifiers)

    def classify(self, pre_logits: torch.Tensor, classifiers: bool = False) -> torch.Tensor:
        """The heads on `forward_head(..., pre_logits=True)`'s output: (B, K), or per classifier (B, C, K)."""
        logits = self.head(pre_logits).unflatten(-1, (self.num_classifiers, self.num_outputs))  # b (c k) -> b c k
        return logits if classifiers else logits.mean(dim=-2)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None, classifiers: bool = False) -> torch.Tensor:
        return self.forward_head(self.forward_features(x, mask), classifiers=classifiers)

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

    def no_weight_decay(self) -> set[str]:
        """Weight matrices that get no weight decay (timm's convention; biases and norms are left out anyway):
        the class token and the embedding tables (the token embedding's own parameters, not its linear map)."""
        return {"cls_token", *(f"embed.{name}" for name, _ in self.embed.named_parameters(recurse=False))}
