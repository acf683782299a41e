"""The training loop: read it top to bottom in `train`."""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn
from tqdm.auto import tqdm

from ..config import to_dict
from ..data import build_dataset, build_loader, label_spec, read_manifest
from ..evaluation.scores import point_aucs
from ..models import build_model
from .checkpoint import load_checkpoint, rng_state, save_checkpoint
from .inference import predict, targets
from .logger import RunLogger
from .losses import build_loss
from .utils import autocast, resolve_device, seed_everything


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or Inf; the message names epoch, step and the studies of the batch."""


class RunExistsError(RuntimeError):
    """The run directory already holds a run and neither resume nor overwrite was asked for."""


def prepare_run_dir(cfg: DictConfig) -> Path:
    """`{output_dir}/{run_name}`: refuses to reuse a started run unless resuming or `overwrite=true`."""
    run_dir = Path(cfg.output_dir) / cfg.run_name
    started = run_dir.exists() and any((run_dir / name).exists() for name in ("config.yaml", "metrics.jsonl", "checkpoints"))
    if started and not cfg.train.resume:
        if not cfg.overwrite:
            raise RunExistsError(
                f"run directory {run_dir} already holds a run; resume it with train.resume=auto, "
                f"pick another run_name, or replace it with overwrite=true"
            )
        shutil.rmtree(run_dir)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    probe = run_dir / ".write-test"
    try:
        probe.write_bytes(b"0" * 1024)
        probe.unlink()
    except OSError as err:
        raise RuntimeError(f"cannot write to the run directory {run_dir}: {err}") from None
    return run_dir


def build_optimizer(model: nn.Module, cfg: DictConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms and embeddings; the stem's lr scaled by `backbone_lr_mult`."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        key = (name.startswith("stem."), param.ndim > 1 and "embed" not in name and "token" not in name)
        groups.setdefault(key, []).append(param)
    lr = cfg.train.lr
    return torch.optim.AdamW(
        [
            {"params": params, "lr": lr * (cfg.train.backbone_lr_mult if is_stem else 1.0), "weight_decay": cfg.train.weight_decay if decay else 0.0}
            for (is_stem, decay), params in groups.items()
        ]
    )


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def resume_path(cfg: DictConfig, run_dir: Path) -> Optional[Path]:
    if not cfg.train.resume:
        return None
    path = run_dir / "checkpoints" / "last.pt" if cfg.train.resume == "auto" else Path(cfg.train.resume)
    if not path.is_file():
        if cfg.train.resume == "auto":
            return None  # nothing to resume yet: start from scratch
        raise FileNotFoundError(f"train.resume={cfg.train.resume}: no such checkpoint")
    return path


def train_one_epoch(model, loader, criterion, optimizer, scheduler, spec, device, cfg, epoch: int) -> float:
    model.train()
    total, count = 0.0, 0
    bar = tqdm(loader, desc=f"epoch {epoch}/{cfg.train.epochs}", leave=False, dynamic_ncols=True)
    for step, batch in enumerate(bar):
        x, mask, y = batch["x"].to(device, non_blocking=True), batch["mask"].to(device, non_blocking=True), targets(batch, spec, device)
        with autocast(device, cfg.train.amp):
            loss = criterion(model(x, mask).float(), y)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"loss is {loss.item()} at epoch {epoch}, step {step}, studies {batch['id']}; the last good checkpoint is kept")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.train.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        optimizer.step()
        scheduler.step()
        total += loss.item() * len(y)
        count += len(y)
        bar.set_postfix(loss=f"{total / count:.4f}")
    return total / max(count, 1)


def train(cfg: DictConfig) -> Path:
    """Trains the model `cfg` describes and writes the run files; returns the run directory."""
    run_dir = prepare_run_dir(cfg)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.train.device)
    spec = label_spec(cfg)

    train_manifest = read_manifest(cfg, "train")
    train_ds = build_dataset(cfg, "train", train=True, manifest=train_manifest)
    val_ds = build_dataset(cfg, "valid", train=False)
    generator = torch.Generator()
    train_loader = build_loader(cfg, train_ds, train=True, generator=generator)
    val_loader = build_loader(cfg, val_ds, train=False)

    model = build_model(cfg, spec.num_outputs).to(device)
    criterion = build_loss(spec, np.stack([item["label"] for item in train_manifest])).to(device)
    optimizer = build_optimizer(model, cfg)
    steps_per_epoch = len(train_loader)
    scheduler = warmup_cosine(optimizer, int(cfg.train.warmup_epochs * steps_per_epoch), cfg.train.epochs * steps_per_epoch)
    params = {"total": sum(p.numel() for p in model.parameters()), "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}

    start_epoch, best, wandb_id = 1, None, None
    checkpoint = resume_path(cfg, run_dir)
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, best, wandb_id = state["epoch"] + 1, state["best"], state.get("wandb_id")
        print(f"resuming {run_dir} from {checkpoint} after epoch {state['epoch']}")
    logger = RunLogger(run_dir, cfg, resume_id=wandb_id)
    logger.truncate_after(start_epoch - 1)

    def checkpoint_content(epoch: int, record: dict) -> dict:
        return dict(
            model=model.state_dict(),
            config=to_dict(cfg),
            label_spec=spec.to_dict(),
            epoch=epoch,
            metrics=record,
            best=best,
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(),
            scaler=None,
            rng=rng_state(),
            wandb_id=logger.wandb_id,
        )

    for epoch in range(start_epoch, cfg.train.epochs + 1):
        seed_everything(cfg.seed * 1000 + epoch)  # data order and augmentation depend on (seed, epoch) only
        generator.manual_seed(cfg.seed * 1000 + epoch)
        train_ds.transform.set_random_state(seed=(cfg.seed * 1000 + epoch) % 2**32)
        start = time.perf_counter()
        train_loss = train_one_epoch(model, train_loader, criterion, optimizer, scheduler, spec, device, cfg, epoch)
        seconds = time.perf_counter() - start
        val = predict(model, val_loader, spec, device, cfg.train.amp, criterion)
        aucs = point_aucs(val.probs, val.labels, spec.names, spec.kind)
        last = {"epoch": epoch, "train/loss": train_loss, "val/loss": val.loss, "val/auc": aucs["mean"], "sec/epoch": seconds, "lr": scheduler.get_last_lr()[0]}
        last.update({f"val/auc/{name}": aucs[name] for name in spec.names})
        logger.log_epoch(last)
        print(f"epoch {epoch}: train/loss {train_loss:.4f}  val/loss {val.loss:.4f}  val/auc {aucs['mean']:.4f}  ({seconds:.1f}s)")
        if best is None or not math.isfinite(best["val/auc"]) or last["val/auc"] > best["val/auc"]:
            best = dict(last)
            save_checkpoint(run_dir / "checkpoints" / "best.pt", **checkpoint_content(epoch, last))
        save_checkpoint(run_dir / "checkpoints" / "last.pt", **checkpoint_content(epoch, last))
        logger.write_summary({"best": best, "last": last, "params": params})
    logger.finish()
    return run_dir
