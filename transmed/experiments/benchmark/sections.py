"""The model sections of the benchmark: throughput, fusion overhead, scaling, fast paths.

Each section takes the plan and the device and returns its rows (JSON-ready dicts). The data
sections (loader, RSS scale, training run) are in `loader.py` and `training.py`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from ...config import load_config
from ...core.labels import LabelSpec
from ...data.augment import training_augment
from ...data.collate import to_float
from ...engine.losses import build_loss
from ...engine.trainer import build_optimizer, optimizer_step, train_step, warmup_cosine
from ...engine.utils import autocast
from ...models import build_model, list_models
from ...models.finetune import train_mode
from ...models.registry import fixed_arguments
from ...models.tokens import group_slices
from .measure import Case, count_flops, measure, named_ratio, ratio_rounds, verdict
from .plan import FUSION_GOAL, NUM_OUTPUTS, TRANSMED_MODELS, Plan, Shape

Log = Callable[[str], None]

# ---------------------------------------------------------------- models and steps


SPEC = LabelSpec("multilabel", tuple(f"task{i}" for i in range(NUM_OUTPUTS)))


def bench_config(shape: Shape, device: torch.device, overrides: Optional[dict] = None) -> DictConfig:
    """The config the models of `shape` are built from and trained with (as training builds them).

    A name that fixes the variant (`transmed_small`) gets it as `model.variant` too.
    """
    overrides = dict(overrides or {})
    name = overrides.get("model.name", "transmed")
    fixed = fixed_arguments(name) if name in list_models() else {}
    items = {
        "data.modalities": "[" + ",".join(f"m{i}" for i in range(shape.modalities)) + "]",
        "data.image_size": shape.image_size,
        "model.backbone": shape.backbone,
        "model.pretrained": "false",
        "train.batch_size": shape.batch,
        "train.device": device.type,
    }
    if shape.depth is not None:
        items["model.depth"] = shape.depth
    if "variant" in fixed:
        items["model.variant"] = fixed["variant"]
    items.update(overrides)
    return load_config(None, [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in items.items()])


def bench_inputs(shape: Shape, device: torch.device) -> dict:
    """A seeded batch as the loader gives it (x (B, M, S, H, W) uint8, the compact cache's type; an all-real mask;
    multi-label targets), already on `device`: the steps time the device's work, not the transfer."""
    gen = torch.Generator().manual_seed(0)
    b, m, s, size = shape.batch, shape.modalities, shape.slices, shape.image_size
    x = torch.randint(0, 256, (b, m, s, size, size), generator=gen, dtype=torch.uint8)
    y = torch.randint(0, 2, (b, NUM_OUTPUTS), generator=gen).float()
    mask = torch.ones(b, m, s, dtype=torch.bool)
    return {"x": x.to(device), "mask": mask.to(device), "label": y.to(device), "id": [f"bench{i}" for i in range(b)]}


def _model(cfg: DictConfig, device: torch.device) -> nn.Module:
    torch.manual_seed(cfg.seed)
    return build_model(cfg, NUM_OUTPUTS).to(device)


def train_step_of(model: nn.Module, cfg: DictConfig, batch: dict, device: torch.device) -> Callable[[], None]:
    """One optimizer step of the trainer, made of its own `train_step` and `optimizer_step`: the config decides the
    loss, augmentation, modality dropout, amp, schedule, clipping and `train.accumulate` (micro-batches of `batch`)."""
    train_mode(model)
    optimizer = build_optimizer(model, cfg)
    scheduler = warmup_cosine(optimizer, 1, 10**6)
    criterion = build_loss(SPEC, np.array([[0.0] * NUM_OUTPUTS, [1.0] * NUM_OUTPUTS]), cfg.train.class_weights).to(device)
    augment = training_augment(cfg, device, cfg.seed)
    micro = [{key: value[i :: cfg.train.accumulate] for key, value in batch.items()} for i in range(cfg.train.accumulate)]

    def step() -> None:
        for part in micro:
            train_step(model, part, criterion, SPEC, device, cfg, augment)
        optimizer_step(model, optimizer, scheduler, cfg)

    return step


def stem_step(model: nn.Module, cfg: DictConfig, batch: dict, device: torch.device) -> tuple[Callable[[], None], int]:
    """The floor under a TransMed train step: a copy of its stem alone on the same slice-images.

    Forward, a trivial loss on the pooled features, backward and the trainer's `optimizer_step` over
    the stem's parameters. Returns the step and the number of slice-images it processes.
    """
    images, group_mask = group_slices(to_float(batch["x"]), batch["mask"], model.slice_window, model.slice_stride, model.slice_mode)
    images = images[group_mask].contiguous()
    stem = copy.deepcopy(model.stem).train()
    optimizer = build_optimizer(stem, cfg)
    scheduler = warmup_cosine(optimizer, 1, 10**6)

    def step() -> None:
        with autocast(device, cfg.train.amp):
            loss = stem(images).float().mean(dim=(2, 3)).sum()
        loss.backward()
        optimizer_step(stem, optimizer, scheduler, cfg)

    return step, images.shape[0]


def infer_step(model: nn.Module, batch: dict, device: torch.device, amp: bool) -> Callable[[], None]:
    """An eval-mode forward pass under `torch.inference_mode`, as evaluation runs it."""
    model.eval()
    x, mask = to_float(batch["x"]), batch["mask"]

    def step() -> None:
        with torch.inference_mode(), autocast(device, amp):
            model(x, mask)

    return step


def params_m(model: nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def precisions(device: torch.device) -> tuple[bool, ...]:
    """amp off and on where bf16 autocast exists (CUDA); off only on CPU."""
    return (False, True) if device.type == "cuda" and torch.cuda.is_bf16_supported() else (False,)


def precision_name(amp: bool) -> str:
    return "bf16" if amp else "fp32"


def bench_models() -> list[str]:
    """TransMed tiny and small, then every other registered model (the baselines) that is not a TransMed size."""
    return list(TRANSMED_MODELS) + [name for name in list_models() if not name.startswith("transmed")]


# ---------------------------------------------------------------- sections


def bench_throughput(plan: Plan, device: torch.device, models: Sequence[str], log: Log) -> list[dict]:
    """Train and inference steps of each model on the same inputs, per shape and (CUDA) precision, interleaved."""
    rows = []
    for shape in plan.shapes:
        inputs = bench_inputs(shape, device)
        for mode in ("train", "infer"):
            cases = []
            for name in models:
                for amp in precisions(device):
                    cfg = bench_config(shape, device, {"model.name": name, "train.amp": amp})
                    model = _model(cfg, device)
                    step = train_step_of(model, cfg, inputs, device) if mode == "train" else infer_step(model, inputs, device, amp)
                    info = dict(shape=shape.name, model=name, mode=mode, precision=precision_name(amp), params_m=params_m(model))
                    cases.append(Case(info, step, shape.batch))
            log(f"throughput: {shape.label}, {mode}, {len(cases)} cases")
            measured = measure(cases, device, plan.rounds, plan.warmup)
            # relative to late fusion (the baseline TransMed must beat on cost), round by round
            ref = {r["precision"]: r for r in measured if r["model"] == "late_fusion"}
            for row in measured:
                base = ref.get(row["precision"])
                if base is not None:
                    # throughput relative to late fusion: its step time over this model's, per round
                    rel = ratio_rounds(base["ms_rounds"], row["ms_rounds"])
                    row.update(named_ratio(rel, "vs_late_fusion"))
            rows += measured
            del cases
    return rows


def bench_fusion(plan: Plan, device: torch.device, log: Log) -> list[dict]:
    """Stem alone, TransMed without encoder blocks (tokens, embeddings, head) and the full model, timed interleaved.

    `ratio` is the median over rounds of (full step / stem step) within a round, with the lowest and
    highest round; `flop_ratio` (matmul and convolution FLOPs of the full step over the stem's) is the
    ratio if every FLOP cost the same. `verdict`: meets / misses the goal, or undecided where the
    rounds spread wider than the margin to it.
    """
    rows = []
    amp = precisions(device)[-1]
    for shape in plan.shapes:
        inputs = bench_inputs(shape, device)
        for name in TRANSMED_MODELS:
            # the model's cost: no augmentation, as the stem floor has none
            model_only = {"model.name": name, "train.amp": amp, "data.augment": "false"}
            cfg = bench_config(shape, device, model_only)
            no_encoder_cfg = bench_config(shape, device, model_only)
            no_encoder_cfg.model.depth = 0  # past the config's validation (a model to train needs layers; this one is a probe)
            full = _model(cfg, device)
            stem, images = stem_step(full, cfg, inputs, device)
            steps = {
                "stem": stem,
                "no_encoder": train_step_of(_model(no_encoder_cfg, device), no_encoder_cfg, inputs, device),
                "full": train_step_of(full, cfg, inputs, device),
            }
            info = dict(shape=shape.name, model=name, precision=precision_name(amp), slice_images=images)
            log(f"fusion: {shape.label}, {name}")
            flops = {part: count_flops(step) for part, step in steps.items()}  # doubles as the first warm-up step
            cases = [Case(dict(info, part=part), step, shape.batch) for part, step in steps.items()]
            parts = {row["part"]: row for row in measure(cases, device, plan.fusion_rounds, warmup=max(0, plan.warmup - 1))}
            stem_row, no_encoder_row, full_row = (parts[p] for p in ("stem", "no_encoder", "full"))
            ratio = ratio_rounds(full_row["ms_rounds"], stem_row["ms_rounds"])
            row = dict(
                info,
                rounds=len(full_row["ms_rounds"]),
                stem_ms=stem_row["ms"],
                no_encoder_ms=no_encoder_row["ms"],
                full_ms=full_row["ms"],
                stem_spread=stem_row["spread"],
                full_spread=full_row["spread"],
                **ratio,
                goal=FUSION_GOAL,
                verdict=verdict(ratio["ratio"], ratio["ratio_low"], ratio["ratio_high"], FUSION_GOAL),
                flop_ratio=flops["full"] / flops["stem"],
                tokens_share=(no_encoder_row["ms"] - stem_row["ms"]) / stem_row["ms"],
                encoder_share=(full_row["ms"] - no_encoder_row["ms"]) / stem_row["ms"],
                stem_peak_mib=stem_row["peak_mib"],
                full_peak_mib=full_row["peak_mib"],
                stem_params_m=params_m(full.stem),
                params_m=params_m(full),
            )
            if "cpu_rounds" in full_row:
                cpu = ratio_rounds(full_row["cpu_rounds"], stem_row["cpu_rounds"])
                row.update(named_ratio(cpu, "cpu_ratio"))
            rows.append(row)
    return rows


def bench_scaling(plan: Plan, device: torch.device, log: Log) -> list[dict]:
    """TransMed tiny and its stem alone against slices per modality, then against the number of modalities."""
    base = plan.scaling
    points = [(s, base.modalities) for s in plan.scaling_slices]
    points += [(base.slices, m) for m in plan.scaling_modalities if (base.slices, m) not in points]
    amp = precisions(device)[-1]
    rows = []
    for slices, modalities in points:
        shape = replace(base, slices=slices, modalities=modalities)
        inputs = bench_inputs(shape, device)
        cfg = bench_config(shape, device, {"model.name": "transmed_tiny", "train.amp": amp, "data.augment": "false"})  # as in fusion
        model = _model(cfg, device)
        stem, images = stem_step(model, cfg, inputs, device)
        groups = images // (shape.batch * modalities)
        info = dict(
            shape=base.name,
            slices=slices,
            modalities=modalities,
            precision=precision_name(amp),
            slice_images=images,
            tokens=1 + modalities * groups * model.tokenizer.grid_size**2,
        )
        log(f"scaling: {slices} slices x {modalities} modalities")
        cases = [Case(info, stem, shape.batch), Case(info, train_step_of(model, cfg, inputs, device), shape.batch)]
        stem_row, full_row = measure(cases, device, plan.rounds, plan.warmup)
        ratio = ratio_rounds(full_row["ms_rounds"], stem_row["ms_rounds"])
        rows.append(
            dict(
                info,
                stem_ms=stem_row["ms"],
                full_ms=full_row["ms"],
                **ratio,
                stem_peak_mib=stem_row["peak_mib"],
                full_peak_mib=full_row["peak_mib"],
            )
        )
    return rows


@dataclass(frozen=True)
class FastPath:
    """One training configuration of TransMed tiny: config overrides and the step's switches."""

    name: str
    overrides: dict = field(default_factory=dict)
    amp: bool = False
    compile: bool = False
    accumulate: int = 1


def fast_paths(plan: Plan, device: torch.device, shape: Shape) -> tuple[list[FastPath], list[str]]:
    """The variants measured at `shape`, and notes on those left out. With compile: compile with bf16 off and on (CUDA)."""
    images = shape.batch * shape.modalities * (shape.slices - 2)
    chunk = max(1, math.ceil(images / 4))
    amp = precisions(device)[-1]
    paths = [FastPath("default (fp32)")]
    if amp:
        paths.append(FastPath("bf16 autocast", amp=True))
    prefix = "bf16 + " if amp else ""
    paths += [
        FastPath(prefix + "channels_last", {"model.channels_last": "true"}, amp),
        FastPath(prefix + "checkpoint_stem", {"train.checkpoint_stem": "true"}, amp),
        FastPath(prefix + f"stem_chunk={chunk}", {"model.stem_chunk": chunk}, amp),
        FastPath(prefix + f"checkpoint_stem + stem_chunk={chunk}", {"train.checkpoint_stem": "true", "model.stem_chunk": chunk}, amp),
    ]
    notes = []
    if shape.batch >= 2:
        paths.append(FastPath(prefix + "accumulate=2 (half-size micro-batches)", amp=amp, accumulate=2))
    else:
        notes.append(f"{shape.name}: accumulate needs a batch of at least 2")
    if plan.compile:
        paths.append(FastPath("compile", compile=True))
        if amp:
            paths.append(FastPath("bf16 + compile", amp=True, compile=True))
    return paths, notes


def bench_fast_paths(plan: Plan, device: torch.device, log: Log) -> list[dict]:
    """TransMed tiny's train step under each fast path, with speed and memory relative to the default (round by round)."""
    rows = []
    for shape in plan.shapes:
        inputs = bench_inputs(shape, device)
        cases = []
        for path in fast_paths(plan, device, shape)[0]:
            overrides = {"model.name": "transmed_tiny", "train.amp": path.amp, "train.accumulate": path.accumulate, **path.overrides}
            cfg = bench_config(shape, device, overrides)
            model = _model(cfg, device)
            step = train_step_of(torch.compile(model) if path.compile else model, cfg, inputs, device)
            cases.append(Case(dict(shape=shape.name, model="transmed_tiny", path=path.name), step, shape.batch))
        log(f"fast paths: {shape.label}, {len(cases)} variants")
        # compiled variants compile in their first step: always warm up at least once
        measured = measure(cases, device, plan.rounds, max(1, plan.warmup) if plan.compile else plan.warmup)
        default = measured[0]
        for row in measured:
            memory = row["peak_mib"] / default["peak_mib"] if default["peak_mib"] else None
            speed = ratio_rounds(default["ms_rounds"], row["ms_rounds"])
            rows.append(dict(row, **named_ratio(speed, "speedup"), memory_ratio=memory))
    return rows
