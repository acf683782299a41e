"""Baselines TransMed is compared with; all take TransMed's batch (x (B, M, S, H, W) in [0, 1], mask (B, M, S)).

- `MRNet` (Bien et al. 2018): a CNN per plane over slices, max over slices, per-plane logits combined.
- `LateFusion`: TransMed's stem and slice grouping, per-modality pooling, concatenation, MLP head.
- `CNN3D`: a MONAI 3D ResNet or DenseNet on the modalities as channels, resampled to a fixed depth.

They accept the keyword arguments `factory.model_kwargs` gives every model and say which they ignore.
Padded slices and missing modalities (mask False) never reach an output; `drop_modalities` marks
modalities missing in eval mode, as TransMed's does.
"""

from __future__ import annotations

import warnings
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import nn

from .stem import CNNStem, Pretrained
from .tokens import group_slices
from .transmed import VARIANTS, check_inputs


def pooled_slice_features(stem: CNNStem, images: torch.Tensor, group_mask: torch.Tensor) -> torch.Tensor:
    """Globally pooled stem features of the real slice-images: images (..., 3, H, W), group_mask (...) -> (..., C).

    Padded slice-images never go through the stem; their features are zeros.
    """
    features = images.new_zeros(*group_mask.shape, stem.out_channels)
    real = images[group_mask]
    if real.shape[0]:
        pooled = reduce(stem(real), "n c h w -> n c", "mean")
        features = features.index_put((group_mask,), pooled.to(features.dtype))
    return features


class LateFusion(nn.Module):
    """TransMed without the transformer: per-modality mean of slice features, concatenated, MLP head.

    The stem is shared by all modalities, as in TransMed. A missing modality contributes zeros.
    The MLP's width is the `variant`'s token width.
    """

    def __init__(
        self,
        *,
        num_modalities: int,
        num_outputs: int,
        backbone: str = "resnet18",
        pretrained: Pretrained = False,
        variant: str = "tiny",
        stem_stage: int = -1,
        slice_window: int = 3,
        slice_stride: int = 1,
        slice_mode: str = "group",
        dropout: float = 0.1,
        drop_modalities: Sequence[int] = (),
    ) -> None:
        super().__init__()
        self.num_modalities, self.drop_modalities = num_modalities, tuple(drop_modalities)
        self.slice_window, self.slice_stride, self.slice_mode = slice_window, slice_stride, slice_mode
        self.stem = CNNStem(backbone, pretrained, stem_stage)
        width, hidden = num_modalities * self.stem.out_channels, VARIANTS[variant]["dim"]
        self.head = nn.Sequential(
            nn.LayerNorm(width),
            nn.Dropout(dropout),
            nn.Linear(width, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_outputs),
        )

    def forward_features(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, M * C): each modality's mean over its real slice groups (zeros when it is missing)."""
        mask = check_inputs(x, mask, self.num_modalities, missing=() if self.training else self.drop_modalities)
        images, group_mask = group_slices(x, mask, self.slice_window, self.slice_stride, self.slice_mode)
        features = pooled_slice_features(self.stem, images, group_mask)
        weights = rearrange(group_mask, "b m g -> b m g 1").to(features.dtype)
        pooled = (features * weights).sum(dim=2) / weights.sum(dim=2).clamp(min=1)
        return rearrange(pooled, "b m c -> b (m c)")

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.forward_head(self.forward_features(x, mask))


class MRNet(nn.Module):
    """MRNet (Bien et al. 2018): per plane its own CNN over slices, max over slices, a linear layer per plane.

    Each plane has a separate stem (as MRNet trains one network per plane). A plane's study feature is
    the maximum over its real slice groups of the globally pooled stem features; its linear layer gives
    per-plane logits, combined per output by learned plane weights (MRNet's logistic regression over
    planes, here on logits, trained end to end). A missing plane contributes nothing.
    Slices are grouped as for TransMed; `slice_mode=replicate` gives MRNet's one slice per image.
    """

    def __init__(
        self,
        *,
        num_modalities: int,
        num_outputs: int,
        backbone: str = "resnet18",
        pretrained: Pretrained = False,
        stem_stage: int = -1,
        slice_window: int = 3,
        slice_stride: int = 1,
        slice_mode: str = "group",
        dropout: float = 0.1,
        drop_modalities: Sequence[int] = (),
    ) -> None:
        super().__init__()
        self.num_modalities, self.drop_modalities = num_modalities, tuple(drop_modalities)
        self.slice_window, self.slice_stride, self.slice_mode = slice_window, slice_stride, slice_mode
        self.stem = nn.ModuleList(CNNStem(backbone, pretrained, stem_stage) for _ in range(num_modalities))
        channels = self.stem[0].out_channels
        self.drop = nn.Dropout(dropout)
        self.plane_heads = nn.ModuleList(nn.Linear(channels, num_outputs) for _ in range(num_modalities))
        self.plane_weight = nn.Parameter(torch.ones(num_modalities, num_outputs))
        self.bias = nn.Parameter(torch.zeros(num_outputs))

    def plane_logits(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-plane logits (B, M, K) and which planes are present (B, M)."""
        mask = check_inputs(x, mask, self.num_modalities, missing=() if self.training else self.drop_modalities)
        images, group_mask = group_slices(x, mask, self.slice_window, self.slice_stride, self.slice_mode)
        logits = []
        for m, (stem, head) in enumerate(zip(self.stem, self.plane_heads)):
            features = pooled_slice_features(stem, images[:, m], group_mask[:, m])
            features = features.masked_fill(~rearrange(group_mask[:, m], "b g -> b g 1"), float("-inf")).amax(dim=1)
            logits.append(head(self.drop(features.nan_to_num(neginf=0.0))))
        return torch.stack(logits, dim=1), group_mask.any(dim=-1)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        logits, present = self.plane_logits(x, mask)
        weights = rearrange(present, "b m -> b m 1").to(logits.dtype) * self.plane_weight
        return (logits * weights).sum(dim=1) + self.bias


WIDTHS_3D = {"tiny": 0.25, "small": 0.5, "base": 1.0}  # `model.variant` -> width of the 3D network


class CNN3D(nn.Module):
    """A MONAI 3D network on the modalities as channels: (B, M, depth, H, W), trained from scratch.

    Each modality's real slices are resampled (trilinear) to `num_slices`, so padding never enters
    and every modality fills the whole depth; a missing modality is a channel of zeros.
    `net` is `resnet10` (monai.networks.nets.ResNet) or `densenet121` (DenseNet121); `variant` scales
    their widths (tiny 1/4, small 1/2, base the published width: 3D convolutions are costly).
    """

    def __init__(
        self,
        *,
        num_modalities: int,
        num_outputs: int,
        net: str = "resnet10",
        num_slices: int = 16,
        dropout: float = 0.1,
        pretrained: Pretrained = False,
        variant: str = "tiny",
        drop_modalities: Sequence[int] = (),
    ) -> None:
        super().__init__()
        self.drop_modalities = tuple(drop_modalities)
        if pretrained:
            warnings.warn("cnn3d has no ImageNet weights: model.pretrained is ignored, the 3D network trains from scratch", stacklevel=2)
        from monai.networks.nets import DenseNet121, resnet10

        self.num_modalities, self.num_slices = num_modalities, num_slices
        width = WIDTHS_3D[variant]
        if net == "resnet10":
            self.net = resnet10(spatial_dims=3, n_input_channels=num_modalities, num_classes=num_outputs, widen_factor=width)
        elif net == "densenet121":
            self.net = DenseNet121(
                spatial_dims=3,
                in_channels=num_modalities,
                out_channels=num_outputs,
                init_features=int(64 * width),
                growth_rate=int(32 * width),
                dropout_prob=dropout,
            )
        else:
            raise ValueError(f"unknown 3D network {net!r}; expected 'resnet10' or 'densenet121'")

    def volume(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, M, S, H, W) with mask -> (B, M, num_slices, H, W): each stack's real slices, resampled."""
        mask = check_inputs(x, mask, self.num_modalities, missing=() if self.training else self.drop_modalities)
        b, m, _, h, w = x.shape
        out = x.new_zeros(b, m, self.num_slices, h, w)
        for i in range(b):
            for j in range(m):
                real = x[i, j][mask[i, j]]
                if real.shape[0]:
                    resized = F.interpolate(
                        rearrange(real, "s h w -> 1 1 s h w"), size=(self.num_slices, h, w), mode="trilinear", align_corners=False
                    )
                    out[i, j] = rearrange(resized, "1 1 s h w -> s h w")
        return out

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.net(self.volume(x, mask))
