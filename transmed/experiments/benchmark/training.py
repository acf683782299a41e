"""The training-run section: configs/knee.yaml for a few epochs on synthetic MRNet-size data, new data path.

Compact cache (`data.cache_dtype=auto`) and augmentation on the device (`data.augment_on=device`), the cache
in memory (knee.yaml's disk cache fills one study at a time), ImageNet weights off (the machine may be offline). Reports studies/s per
epoch (from the run's `sec/epoch`, training only) and, on CUDA, the peak GPU memory of the run.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from ...config import load_config
from .loader import PATHS, generate_studies
from .plan import Plan

Log = Callable[[str], None]
CONFIG = "knee.yaml"


def bench_train(plan: Plan, device: torch.device, log: Log, work: Optional[Path] = None) -> dict:
    """`plan.train_epochs` epochs of configs/knee.yaml over `plan.train_studies` synthetic studies at the loader shape."""
    from ...engine import train

    shape = plan.loader
    with tempfile.TemporaryDirectory(prefix="transmed-bench-train-", dir=work) as tmp:
        root = Path(tmp) / "data"
        log(f"train: writing {plan.train_studies} + {plan.train_valid} synthetic studies ({shape.label})")
        made = generate_studies(root, plan.train_studies, plan.train_valid, shape)
        overrides = {
            "data.root": str(root),
            "data.val_fraction": "null",  # the generated valid split validates
            # the memory cache: it fills in threads over all cores, where the disk cache's fill (knee.yaml) goes study by
            # study through build_dataset's screening and would take most of the GPU script's minutes
            "data.cache_dir": "null",
            "data.image_size": shape.image_size,
            "model.pretrained": "false",
            "train.epochs": plan.train_epochs,
            "train.batch_size": shape.batch,
            "train.device": device.type,
            "output_dir": str(Path(tmp) / "runs"),
            "run_name": "bench",
            "wandb.mode": "disabled",
            **PATHS["new"],
        }
        cfg = load_config(CONFIG, [f"{k}={v}" for k, v in overrides.items()] + list(plan.train_overrides))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        log(f"train: {CONFIG}, {cfg.model.name} {cfg.model.variant}, {plan.train_epochs} epochs, {cfg.data.num_workers} workers")
        start = time.perf_counter()
        run_dir = train(cfg)
        wall = time.perf_counter() - start
        epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
        result = dict(
            config=CONFIG,
            model=f"{cfg.model.name} {cfg.model.variant}",
            backbone=cfg.model.backbone,
            amp=bool(cfg.train.amp) and device.type == "cuda",
            compile=bool(cfg.train.compile),
            workers=cfg.data.num_workers,
            batch=cfg.train.batch_size,
            train_studies=plan.train_studies,
            valid_studies=plan.train_valid,
            generation_s=made["seconds"],
            wall_s=wall,
            epochs=[dict(epoch=e["epoch"], sec=e["sec/epoch"], studies_per_s=plan.train_studies / e["sec/epoch"]) for e in epochs],
            overrides=[*(f"{k}={v}" for k, v in overrides.items() if k not in ("data.root", "output_dir")), *plan.train_overrides],
            cpu_count=os.cpu_count(),
        )
        if device.type == "cuda":
            result.update(
                gpu_peak_allocated_mib=torch.cuda.max_memory_allocated(device) / 2**20,
                gpu_peak_reserved_mib=torch.cuda.max_memory_reserved(device) / 2**20,
            )
    return result
