"""What a benchmark run measures: shapes, repetitions and sizes per mode (`smoke`, `quick`, `full`)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import torch

NUM_OUTPUTS = 3  # the knee's abnormal / ACL / meniscus
FUSION_GOAL = 1.15  # a TransMed train step over its stem's alone: at most this
TRANSMED_MODELS = ("transmed_tiny", "transmed_small")
SECTIONS = ("throughput", "fusion", "scaling", "loader", "rss", "fast_paths", "train")
GPU_MACHINE_CORES = 16  # the GPU machine the loader rate is extrapolated to


@dataclass(frozen=True)
class Shape:
    """Identical inputs for every model: `batch` studies of `modalities` x `slices` x `image_size`^2, and the backbone.

    `depth` overrides TransMed's transformer depth (None: the variant's own).
    """

    name: str
    modalities: int
    slices: int
    image_size: int
    batch: int
    backbone: str
    depth: Optional[int] = None

    @property
    def label(self) -> str:
        return f"{self.name} ({self.batch} x {self.modalities} x {self.slices} x {self.image_size}², {self.backbone})"


@dataclass(frozen=True)
class LoaderShape:
    """Synthetic studies in the MRNet layout: `planes` stacks of `min_slices`..`max_slices` slices of `disk_size`² uint8
    on disk, preprocessed to `image_size`² (MRNet: 3 planes, 17-51 slices, 256² -> 224 in configs/knee.yaml)."""

    name: str = "knee"
    planes: int = 3
    min_slices: int = 17
    max_slices: int = 51
    disk_size: int = 256
    image_size: int = 224
    batch: int = 4

    @property
    def label(self) -> str:
        return (
            f"{self.name}: {self.planes} planes x {self.min_slices}-{self.max_slices} slices, "
            f"{self.disk_size}² on disk -> {self.image_size}², batch {self.batch}"
        )


@dataclass(frozen=True)
class Plan:
    """How much a mode measures. Times are medians over `rounds` interleaved rounds (`fusion_rounds` for the fusion ratio)."""

    mode: str
    shapes: tuple[Shape, ...]
    scaling: Shape
    scaling_slices: tuple[int, ...]
    scaling_modalities: tuple[int, ...]
    warmup: int = 1
    rounds: int = 3
    fusion_rounds: int = 5
    compile: bool = False
    # loader: per-worker studies/s and bytes per cached study, old path next to new, at `loader`
    loader: LoaderShape = field(default_factory=LoaderShape)
    loader_studies: int = 16
    loader_rounds: int = 3
    loader_workers: tuple[int, ...] = (0,)  # 0: the main process is the one worker; >0 also shows how workers scale
    # rss: peak RSS of a loader epoch in a fresh process per size, over one generated set of max(rss_sizes) studies
    rss_sizes: tuple[int, ...] = (100, 300, 1130)
    rss_caches: tuple[str, ...] = ("disk", "memory")  # disk: data.cache_dir as configs/knee.yaml; memory: the default
    rss_workers: int = 4  # configs/knee.yaml's data.num_workers
    # train: a short training run of configs/knee.yaml on synthetic MRNet-size data (the GPU script runs it)
    train_studies: int = 384
    train_valid: int = 48
    train_epochs: int = 2
    train_overrides: tuple[str, ...] = ()
    sections: tuple[str, ...] = ("throughput", "fusion", "scaling", "loader", "rss", "fast_paths")
    skipped: tuple[str, ...] = ()


def make_plan(mode: str, device: torch.device) -> Plan:
    """`quick` (CPU-sized model shape and a small knee-shape loader set), `full` (adds the knee model shape, compile and
    the RSS scale over 100/300/1,130 studies), `smoke` (tests: everything tiny)."""
    cuda = device.type == "cuda"
    knee = Shape("knee", 3, 32, 224, 4 if cuda else 1, "resnet18")
    cpu = Shape("cpu", 3, 10, 64, 2, "resnet18")
    if mode == "smoke":
        tiny = Shape("smoke", 2, 5, 32, 2, "test_resnet", depth=1)
        return Plan(
            "smoke",
            (tiny,),
            tiny,
            (3, 5),
            (1, 2),
            warmup=0,
            rounds=1,
            fusion_rounds=2,
            loader=LoaderShape("smoke", 3, 3, 5, 32, 32, 2),
            loader_studies=4,
            loader_rounds=2,
            rss_sizes=(2, 4),
            rss_caches=("disk", "memory"),
            rss_workers=0,
            train_studies=6,
            train_valid=2,
            train_epochs=1,
            train_overrides=("model.backbone=test_resnet", "model.depth=1", "model.variant=tiny", "data.num_workers=0"),
        )
    if mode == "quick":
        return Plan(
            "quick",
            (cpu,),
            replace(cpu, name="cpu-scaling", slices=16, batch=1, backbone="test_resnet"),
            (8, 16, 32, 64),
            (1, 2, 3, 4),
            warmup=1,
            rounds=3,
            fusion_rounds=5,
            compile=cuda,
            loader_studies=8,
            loader_rounds=3,
            sections=("throughput", "fusion", "scaling", "loader", "fast_paths"),
            skipped=("knee model shape: full run only", "RSS scale (100/300/1,130 studies): full run only, or --sections rss")
            + (() if cuda else ("torch.compile: full run only on CPU (compiling takes minutes)",)),
        )
    return Plan(
        "full",
        (knee,) if cuda else (cpu, knee),  # on a GPU the CPU-sized shape says little and would double the compile time
        replace(cpu, name="cpu-scaling", slices=16, batch=1),
        (8, 16, 32, 64),
        (1, 2, 3, 4),
        warmup=2,
        rounds=5,
        fusion_rounds=7,
        loader_studies=24,
        loader_rounds=3,
        loader_workers=(0, 2),
        compile=True,
    )
