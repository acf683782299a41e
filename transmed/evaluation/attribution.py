"""Where the model looks: class-token attention rollout and Grad-CAM, per modality and slice.

* Attention rollout (Abnar & Zuidema 2020): per layer the head-averaged attention plus the identity
  (the residual path), rows renormalised, multiplied through the layers; the class token's row is
  each token's relevance. Tokens are summed per (modality, slice group), and a group's relevance is
  split equally over its slices, so relevance over all slices of all modalities sums to 1.
* Grad-CAM (Selvaraju et al. 2017) on the CNN stem's last feature map of every slice-image: ReLU of
  the channel-weighted feature map, weights the spatial mean of the output logit's gradient. The
  feature maps are taken relative to their mean over all slice-images of the study: the tokenizer
  normalises them (LayerNorm), so the logit does not change along a feature vector and plain
  Grad-CAM (gradient times raw features) is zero up to rounding. A slice gets the mean map of the
  slice groups it belongs to. The map's resolution is the stem's (for example 1x1 at 32 px with a
  stride-32 backbone: then only the per-slice level is informative).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from omegaconf import DictConfig

from ..core.errors import DataError, UsageError
from ..core.io import write_json
from ..data import read_manifest
from ..data.collate import to_device
from ..models import TransMed
from ..models.factory import dropped_modality_indices
from ..models.loading import load_trained
from ..models.tokens import group_slices
from .evaluate import output_index, run_folder
from .prediction import study_loader


def attention_rollout(attention: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """(L, B, heads, 1+T, 1+T) attention and (B, 1+T) key mask -> (B, T) class-token relevance of the
    non-class tokens; zero on padding, summing to 1 per study."""
    if attention.shape[0] == 0:
        raise ValueError("attention rollout needs at least one transformer layer")
    mixed = attention.float().mean(dim=2)
    mixed = mixed + torch.eye(mixed.shape[-1], device=mixed.device)
    mixed = mixed / mixed.sum(dim=-1, keepdim=True)
    rollout = mixed[0]
    for layer in mixed[1:]:
        rollout = layer @ rollout
    relevance = rollout[:, 0, 1:] * key_mask[:, 1:]
    return relevance / relevance.sum(dim=-1, keepdim=True)


def slice_index(model: TransMed, mask: torch.Tensor) -> torch.Tensor:
    """(M, G, 3) long: the slices on the three channels of each slice group of one study, mask (M, S),
    from the model's own grouping (a stack's tail group depends on its own slice count)."""
    m, s = mask.shape
    ramp = torch.arange(s, dtype=torch.float32).view(1, 1, s, 1, 1).expand(1, m, s, 1, 1)
    images, _ = group_slices(ramp, mask[None].cpu(), model.slice_window, model.slice_stride, model.slice_mode)
    return images[0, :, :, :, 0, 0].long()


def to_slices(values: torch.Tensor, index: torch.Tensor, group_mask: torch.Tensor, num_slices: int, mean: bool) -> torch.Tensor:
    """Per-group values (M, G, ...) -> per-slice values (M, num_slices, ...) through `index` (M, G, 3).

    `mean=False` splits each group's value equally over its three channels (totals are kept);
    `mean=True` averages the groups covering a slice. Slices no real group covers get 0.
    """
    values = values * group_mask.view(*group_mask.shape, *([1] * (values.dim() - 2))).to(values.dtype)
    width = max(num_slices, int(index.max()) + 1)  # groups of a too-short stack index past its end
    out = values.new_zeros(values.shape[0], width, *values.shape[2:])
    count = values.new_zeros(values.shape[0], width)
    for modality in range(values.shape[0]):
        for c in range(index.shape[-1]):
            out[modality].index_add_(0, index[modality, :, c], values[modality] if mean else values[modality] / index.shape[-1])
            count[modality].index_add_(0, index[modality, :, c], group_mask[modality].to(values.dtype))
    if mean:
        out = out / count.clamp(min=1).view(*count.shape, *([1] * (values.dim() - 2)))
    return out[:, :num_slices]


def grad_cam(model: TransMed, x: torch.Tensor, mask: torch.Tensor, outputs: Sequence[int]) -> torch.Tensor:
    """(K, M, G, H, W) Grad-CAM of each output logit for one study x (1, M, S, H, W); zeros on padded groups."""
    features: list[torch.Tensor] = []
    handle = model.stem.register_forward_hook(lambda module, inputs, output: features.append(output))
    try:
        with torch.enable_grad():
            logits = model(x.detach().clone().requires_grad_(True), mask)
            maps = []
            for k in outputs:
                grads = torch.autograd.grad(logits[0, k], features, retain_graph=True)
                feats, grad = torch.cat(features), torch.cat(grads)
                centred = feats - feats.mean(dim=(0, 2, 3), keepdim=True)
                maps.append(F.relu((grad.mean(dim=(2, 3), keepdim=True) * centred).sum(dim=1)).detach())
    finally:
        handle.remove()
    _, group_mask = group_slices(x[..., :1, :1], mask, model.slice_window, model.slice_stride, model.slice_mode)
    cams = torch.stack(maps)  # (K, N_real, h, w), real groups in (modality, group) order
    cams = F.interpolate(cams.flatten(0, 1)[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)
    cams = cams.view(len(outputs), -1, *x.shape[-2:])
    out = cams.new_zeros(len(outputs), *group_mask.shape[1:], *x.shape[-2:])
    out[:, group_mask[0]] = cams
    return out


def find_study(cfg: DictConfig, study_id: str, split: Optional[str] = None) -> tuple[dict, str]:
    """The manifest entry of `study_id` in `split`, or in the first of valid, test, train holding it."""
    looked = []
    for name in [split] if split else ["valid", "test", "train"]:
        try:
            manifest = read_manifest(cfg, name)
        except DataError:
            if split:
                raise
            continue
        looked.append(name)
        for item in manifest:
            if str(item["id"]) == study_id:
                return item, name
    raise DataError(f"study {study_id!r} is not in the {' / '.join(looked) or 'any'} split(s) of {cfg.data.root}")


def explain_study(
    checkpoint: str | Path,
    study_id: str,
    split: Optional[str] = None,
    out: Optional[str | Path] = None,
    overrides: Sequence[str] = (),
    targets: Optional[Sequence[str]] = None,
) -> Path:
    """Writes `attention.png`, `gradcam-<name>.png` per target and `explain.json`; returns the folder.

    Targets default to every task (multilabel) or the predicted class (multiclass). The default
    folder is `{run dir}/explain-{study}`; files there are replaced (they are deterministic).
    """
    model, cfg, spec, _ = load_trained(checkpoint, overrides)
    if not isinstance(model, TransMed):
        raise UsageError(
            f"explain needs a TransMed model (attention and a CNN stem); model.name {cfg.model.name} is a {type(model).__name__}"
        )
    item, split = find_study(cfg, str(study_id), split)
    out = Path(out) if out is not None else run_folder(checkpoint) / f"explain-{item['id']}"
    batch = next(iter(study_loader(cfg, [item])))
    device = next(model.parameters()).device
    x, mask = to_device(batch, device)
    dropped = dropped_modality_indices(cfg)
    mask[:, dropped] = False  # what the model's forward does in eval mode; attention and Grad-CAM must see it too
    with torch.no_grad():
        probs = spec.probabilities(model(x, mask).float())[0].cpu()
    if targets is None:
        targets = list(spec.names) if spec.kind == "multilabel" else [spec.names[int(probs.argmax())]]
    outputs = [output_index(spec, t) for t in targets]

    maps = model.attention_maps(x, mask)
    relevance, layout = attention_rollout(maps["attention"], maps["key_mask"])[0].cpu(), maps["layout"]
    m, s = x.shape[1], x.shape[2]
    g = int(layout[:, 1].max()) + 1
    group_relevance = torch.zeros(m, g).index_put_((layout[:, 0], layout[:, 1]), relevance, accumulate=True)
    group_mask = torch.zeros(m, g, dtype=torch.bool).index_put_((layout[:, 0], layout[:, 1]), maps["key_mask"][0, 1:].cpu())
    index = slice_index(model, mask[0])
    slice_relevance = to_slices(group_relevance, index, group_mask, s, mean=False)
    cams = grad_cam(model, x, mask, outputs).cpu()
    slice_cams = [to_slices(c, index, group_mask, s, mean=True) for c in cams]  # each (M, S, H, W)

    modalities = list(cfg.data.modalities)
    counts = mask[0].sum(dim=1).tolist()
    stacks = [x[0, i, : counts[i]].cpu().numpy() for i in range(m)]
    attention = {mod: slice_relevance[i, : counts[i]].numpy() for i, mod in enumerate(modalities)}
    title = f"study {item['id']} ({split}): " + ", ".join(f"{n} {p:.2f}" for n, p in zip(spec.names, probs.tolist()))
    draw_montage(
        stacks, modalities, attention, None, f"Attention rollout (class token), {title}", "share of relevance", out / "attention.png"
    )
    report: dict = {
        "id": item["id"],
        "split": split,
        "dropped": [modalities[i] for i in dropped],
        "probabilities": dict(zip(spec.names, probs.tolist())),
        "attention": {mod: {"share": float(v.sum()), "slices": v.tolist()} for mod, v in attention.items()},
        "gradcam": {},
    }
    for target, cam in zip(targets, slice_cams):
        per_slice = {mod: cam[i, : counts[i]].mean(dim=(1, 2)).numpy() for i, mod in enumerate(modalities)}
        overlays = [cam[i, : counts[i]].numpy() for i in range(m)]
        draw_montage(
            stacks, modalities, per_slice, overlays, f"Grad-CAM of {target}, {title}", "mean Grad-CAM", out / f"gradcam-{target}.png"
        )
        report["gradcam"][target] = {mod: v.tolist() for mod, v in per_slice.items()}
    write_json(out / "explain.json", report)
    return out


def draw_montage(
    stacks: Sequence[np.ndarray],
    modalities: Sequence[str],
    strips: dict[str, np.ndarray],
    overlays: Optional[Sequence[np.ndarray]],
    title: str,
    strip_label: str,
    path: Path,
) -> None:
    """Per modality one row: its slices side by side (optionally with a heat overlay each) and under
    them a heat strip of one value per slice. One colour scale for all rows, so modalities compare."""
    vmax = max((float(v.max()) for v in strips.values() if v.size), default=0.0) or 1.0
    total = sum(float(v.sum()) for v in strips.values()) or 1.0
    cam_max = 1.0 if overlays is None else max((float(o.max()) for o in overlays if o.size), default=0.0) or 1.0
    widest = max(len(s) for s in stacks)
    fig = Figure(figsize=(0.8 * widest + 2.0, 1.25 * len(stacks) + 0.6))
    axes = fig.subplots(len(stacks), 1, squeeze=False)
    for ax, stack, modality, overlay in zip(axes[:, 0], stacks, modalities, overlays or [None] * len(stacks)):
        n, h, w = stack.shape
        ax.set_axis_off()
        if n == 0:
            ax.set_title(f"{modality}: missing", fontsize="small", loc="left")
            continue
        top = h / w  # each slice is one unit wide
        ax.imshow(np.hstack(list(stack)), cmap="gray", vmin=0, vmax=1, extent=(0, n, 0, top))
        if overlay is not None:
            ax.imshow(np.hstack(list(overlay)), cmap="jet", alpha=0.4, vmin=0, vmax=cam_max, extent=(0, n, 0, top))
        heat = ax.imshow(strips[modality][None], cmap="magma", vmin=0, vmax=vmax, extent=(0, n, -0.3, -0.05))
        for k in range(n):
            ax.text(k + 0.5, -0.42, str(k), ha="center", va="center", fontsize="x-small")
        ax.set(xlim=(0, widest), ylim=(-0.55, top))
        ax.set_title(f"{modality}: {strips[modality].sum() / total:.0%} of the total", fontsize="small", loc="left")
    fig.suptitle(title, fontsize="small")
    fig.colorbar(heat, ax=axes[:, 0].tolist(), label=strip_label, fraction=0.03, pad=0.02)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
