"""The training loop: read it top to bottom in `train`."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from omegaconf import DictConfig
from timm.optim import param_groups_weight_decay
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm

from ..config import resolve_backbone_lr_mult, to_dict
from ..core.checkpoint import load_checkpoint, rng_state, save_checkpoint
from ..core.device import resolve_device
from ..core.errors import CheckpointError, NonFiniteLossError, RunDirError, RunExistsError
from ..core.labels import LabelSpec
from ..core.progress import progress
from ..data import build_dataset, build_loader, build_unlabelled_dataset, label_spec, read_manifest, report_skipped
from ..data.augment import augment_where, training_augment
from ..data.collate import to_device
from ..models import build_model
from ..models.finetune import drop_modalities_at_random, train_mode
from .calibration import fit_temperature
from .distributed import DistInfo, barrier, cleanup, device_for, gather_predictions, init_distributed, mean_over_ranks, sync_buffers
from .inference import predict, split_loss, targets
from .logger import RunLogger
from .losses import build_loss
from .scores import point_aucs
from .semi import SemiLoss, classifier_count, labelled_targets, pseudo_labels, semi_loader, write_round
from .utils import autocast, seed_everything

MIN_FREE_BYTES = 200 * 2**20


def prepare_run_dir(cfg: DictConfig) -> Path:
    """`{output_dir}/{run_name}`: refuses to reuse a started run unless resuming or `overwrite=true`;
    fails before training if the folder cannot be written or the disk is nearly full."""
    run_dir = Path(cfg.output_dir) / cfg.run_name
    if holds_run(run_dir) and not cfg.train.resume:
        if not cfg.overwrite:
            raise RunExistsError(
                f"run directory {run_dir} already holds a run; resume it with train.resume=auto, "
                f"pick another run_name, or replace it with overwrite=true"
            )
        shutil.rmtree(run_dir)
    try:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"0" * 1024)
        probe.unlink()
    except OSError as err:
        raise RunDirError(f"cannot write to the run directory {run_dir}: {err}") from None
    free = shutil.disk_usage(run_dir).free
    if free < MIN_FREE_BYTES:
        raise RunDirError(f"only {free / 2**20:.0f} MiB free on the disk holding {run_dir}; checkpoints need more")
    return run_dir


def holds_run(run_dir: Path) -> bool:
    """Whether a run has started writing into `run_dir` (its config, metrics or a checkpoint)."""
    return any((run_dir / name).exists() for name in ("config.yaml", "metrics.jsonl")) or any(run_dir.glob("checkpoints/*.pt"))


def remove_unstarted(run_dir: Path, created: Path) -> None:
    """After a failed start: removes `run_dir` (and its new, now empty parents up to `created`) unless a run began there."""
    if holds_run(run_dir):
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    folder = run_dir.parent
    while folder != created.parent and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent


def build_optimizer(model: nn.Module, cfg: DictConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters.

    Weight decay (`train.weight_decay`) by what a parameter is, with timm's rule: none on biases,
    norms (1-D parameters) and what the model's `no_weight_decay()` names (TransMed: the class
    token and the embedding tables); every other weight matrix decays. The stem's parameters
    (names under `stem.`, MRNet's per-plane stems included) get lr * `train.backbone_lr_mult`.
    """
    no_decay_names = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    # weight_decay=1.0 only marks the decayed group; the real value comes from the config below
    timm_groups = param_groups_weight_decay(model, weight_decay=1.0, no_weight_decay_list=no_decay_names)
    decayed = {id(p) for group in timm_groups if group["weight_decay"] for p in group["params"]}
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups.setdefault((name.startswith("stem."), id(param) in decayed), []).append(param)
    lr, stem_mult = cfg.train.lr, resolve_backbone_lr_mult(cfg)
    return torch.optim.AdamW(
        [
            {
                "params": params,
                "lr": lr * (stem_mult if is_stem else 1.0),
                "weight_decay": cfg.train.weight_decay if decay else 0.0,
            }
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
            print(f"train.resume=auto: no checkpoint in {run_dir} yet; starting from scratch")
            return None
        raise CheckpointError(f"train.resume={cfg.train.resume}: no such checkpoint; give an existing file, or train.resume=auto")
    return path


def set_deterministic(enabled: bool) -> None:
    """Deterministic kernels everywhere (slower on GPU); CPU runs with a fixed seed are reproducible anyway."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(enabled, warn_only=False)


def train_step(
    model: nn.Module, batch: dict, criterion: nn.Module, spec, device: torch.device, cfg: DictConfig, augment=None
) -> torch.Tensor:
    """One batch forward and backward, as training does it; the benchmark times this very function.

    The stored batch goes to the device (and through `augment` there, one draw per study),
    `train.modality_dropout` drops whole modalities, the forward runs under autocast (`train.amp`;
    with `train.semi` it gives every classifier's logits, for `semi.SemiLoss`),
    and the loss's gradient, scaled by 1 / `train.accumulate`, is added to the parameters'.
    Returns the loss, still on the device (reading it is the caller's one host sync).
    """
    x, mask = to_device(batch, device, augment)  # float32 in [0, 1], made (and augmented) there
    semi = cfg.train.semi.method != "none"  # targets (B, C, K) per classifier, NaN where unknown: `semi.SemiLoss`
    y = batch["label"].to(device).float() if semi else targets(batch["label"], spec, device)
    if cfg.train.modality_dropout:
        mask = drop_modalities_at_random(mask, cfg.train.modality_dropout)
    with autocast(device, cfg.train.amp):
        if semi:  # the pseudo-labelled studies' loss apart (`train.semi.weight`); a labelled-only batch has no `pseudo`
            loss = criterion(model(x, mask, classifiers=True), y, batch["pseudo"].to(device) if "pseudo" in batch else None)
        else:
            loss = criterion(model(x, mask), y)
    (loss / cfg.train.accumulate).backward()
    return loss.detach()


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, cfg: DictConfig) -> None:
    """After `train.accumulate` train steps: gradient clipping (`train.grad_clip`), the optimizer and schedule steps, gradients cleared."""
    if cfg.train.grad_clip:
        nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def train_one_epoch(
    model, loader, criterion, optimizer, scheduler, spec, device, cfg, epoch: int, show_progress: bool = True, augment="auto"
) -> float:
    """One pass over the training data: a `train_step` per batch, an `optimizer_step` every `train.accumulate` batches.

    `augment`: the batch augmentation (`data.augment_on: device`), seeded by the caller; "auto"
    makes the trainer's own for (seed, epoch, RANK); None: none.
    """
    if augment == "auto":
        augment = training_augment(cfg, device, cfg.seed * 1000 + epoch, int(os.environ.get("RANK", "0") or 0))
    train_mode(model)  # frozen stem stages keep their BatchNorm statistics
    total, count = 0.0, 0
    optimizer.zero_grad(set_to_none=True)
    desc = f"epoch {epoch}/{cfg.train.epochs}"
    bar = progress(loader, desc=desc, unit="batches") if show_progress else tqdm(loader, disable=True)
    for step, batch in enumerate(bar):
        value = train_step(model, batch, criterion, spec, device, cfg, augment).item()  # the step's one host sync
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"loss is {value} at epoch {epoch}, step {step}, studies {batch['id']}; the last good checkpoint is kept"
            )
        if (step + 1) % cfg.train.accumulate == 0 or step + 1 == len(loader):
            optimizer_step(model, optimizer, scheduler, cfg)
        total += value * len(batch["id"])
        count += len(batch["id"])
        bar.set_postfix(loss=f"{total / count:.4f}")
    return total / max(count, 1)


def improves(last: dict, best: Optional[dict]) -> bool:
    """Whether epoch `last` replaces `best` as best.pt: a higher `val/auc`, or the same with a lower `val/loss`.

    On a small validation split AUC saturates: 13 separable studies give 1.0 from the second epoch on,
    and the first epoch to reach it (often a warm-up epoch) would be kept over better-trained ones.
    """
    if best is None or not math.isfinite(best["val/auc"]):
        return True
    if last["val/auc"] != best["val/auc"]:
        return last["val/auc"] > best["val/auc"]
    return math.isfinite(last["val/loss"]) and (not math.isfinite(best["val/loss"]) or last["val/loss"] < best["val/loss"])


def train(cfg: DictConfig) -> Path:
    """Trains the model `cfg` describes and writes the run files; returns the run directory.

    Under torchrun each process trains on its shard of the data (DistributedDataParallel);
    validation predictions are gathered from all ranks so AUC is over the whole split; only rank 0
    writes files and talks to W&B.
    """
    dist_info = init_distributed(cfg.train.device)
    run_dir = Path(cfg.output_dir) / cfg.run_name
    created = next((p for p in reversed([run_dir, *run_dir.parents]) if not p.exists()), None)  # the first folder this run makes
    try:
        return _train(cfg, dist_info)
    except BaseException:
        if created is not None and dist_info.is_main:
            remove_unstarted(run_dir, created)  # a failed start leaves no empty run folder behind
        raise
    finally:
        cleanup(dist_info)


def _train(cfg: DictConfig, dist_info: DistInfo) -> Path:
    seed_everything(cfg.seed)
    set_deterministic(cfg.train.deterministic)
    device = device_for(dist_info, resolve_device(cfg.train.device))
    spec = label_spec(cfg)
    # first: missing weights or a bad name fail before any data is read; init_from and trainable_blocks included
    model = build_model(cfg, spec.num_outputs).to(device)
    run_dir = Path(cfg.output_dir) / cfg.run_name
    if dist_info.is_main:
        run_dir = prepare_run_dir(cfg)
    barrier(dist_info)

    train_manifest = read_manifest(cfg, "train")
    train_ds = build_dataset(cfg, "train", train=True, manifest=train_manifest)
    val_ds = build_dataset(cfg, "valid", train=False)
    semi = cfg.train.semi.method != "none"
    unlabelled_ds = build_unlabelled_dataset(cfg, train=True) if semi else None
    if dist_info.is_main:
        report_skipped(run_dir / "skipped.json", *(ds for ds in (train_ds, val_ds, unlabelled_ds) if ds is not None))
    generator = torch.Generator()
    train_sampler = DistributedSampler(train_ds, shuffle=True, seed=cfg.seed) if dist_info.enabled else None
    val_sampler = DistributedSampler(val_ds, shuffle=False) if dist_info.enabled else None
    train_loader = build_loader(cfg, train_ds, train=True, sampler=train_sampler, generator=generator)
    val_loader = build_loader(cfg, val_ds, train=False, sampler=val_sampler)

    labels = np.stack([item["label"] for item in train_ds.data])  # studies kept after screening
    criterion = build_loss(spec, labels, cfg.train.class_weights).to(device)
    train_criterion = SemiLoss(spec, criterion, cfg.train.semi.weight).to(device) if semi else criterion
    if semi:  # train.semi: the labelled studies' per-classifier targets; the unlabelled studies, un-augmented, to pseudo-label
        plain = labelled_targets(labels, spec, classifier_count(cfg))
        smeared = plain
        if cfg.train.semi.method == "tri_net":  # output smearing: each classifier its own noisy labels during warm-up
            smeared = labelled_targets(labels, spec, classifier_count(cfg), cfg.train.semi.smearing, cfg.seed)
        unlabelled_eval = build_unlabelled_dataset(cfg, train=False) if augment_where(cfg) == "loader" else unlabelled_ds
        unlabelled_loader = build_loader(cfg, unlabelled_eval, train=False)
        prior = plain[:, 0].mean(axis=0)  # the labelled studies' share of each task's positives, or of each class
        no_pseudo = np.full((len(unlabelled_ds), *plain.shape[1:]), np.nan, dtype=np.float32)
    optimizer = build_optimizer(model, cfg)
    steps_per_epoch = math.ceil(len(train_loader) / cfg.train.accumulate)
    scheduler = warmup_cosine(optimizer, int(cfg.train.warmup_epochs * steps_per_epoch), cfg.train.epochs * steps_per_epoch)
    params = {
        "total": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }

    start_epoch, best, wandb_id = 1, None, None
    checkpoint = resume_path(cfg, run_dir)
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, best, wandb_id = state["epoch"] + 1, state["best"], state.get("wandb_id")
        if dist_info.is_main:
            print(f"resuming {run_dir} from {checkpoint} after epoch {state['epoch']}")
    logger = RunLogger(run_dir, cfg, resume_id=wandb_id) if dist_info.is_main else None
    if logger is not None:
        logger.truncate_after(start_epoch - 1)

    step_model = model
    if dist_info.enabled:
        step_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.train.compile:
        step_model = torch.compile(step_model)

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
            scaler=None,  # bf16 autocast needs no loss scaling
            rng=rng_state(),
            wandb_id=logger.wandb_id,
        )

    for epoch in range(start_epoch, cfg.train.epochs + 1):
        epoch_seed = cfg.seed * 1000 + epoch  # data order, augmentation and dropout depend on (seed, epoch) only
        seed_everything(epoch_seed)
        generator.manual_seed(epoch_seed)
        train_ds.transform.set_random_state(seed=(epoch_seed + dist_info.rank) % 2**32)  # data.augment_on=loader
        epoch_loader, semi_round = train_loader, None
        if semi:  # a round: pseudo-labels from the model as it starts the epoch (a resumed run recomputes them)
            unlabelled_ds.transform.set_random_state(seed=(epoch_seed + dist_info.rank + 7919) % 2**32)
            warm = epoch <= cfg.train.semi.warmup_epochs
            pseudo = no_pseudo
            if not warm:
                pseudo, semi_round = pseudo_labels(
                    model, unlabelled_loader, spec, device, cfg, epoch, unlabelled_ds.truth, train_criterion.weight, prior
                )
            epoch_loader = semi_loader(
                cfg, train_ds, smeared if warm else plain, unlabelled_ds, pseudo, epoch_seed, dist_info.rank, dist_info.world_size
            )
        augment = training_augment(cfg, device, epoch_seed, dist_info.rank)  # data.augment_on=device: its own generator there
        if train_sampler is not None:
            train_sampler.set_epoch(epoch)
        lr = scheduler.get_last_lr()[0]  # the rate the epoch starts with (the schedule moves every step)
        start = time.perf_counter()
        train_loss = train_one_epoch(
            step_model, epoch_loader, train_criterion, optimizer, scheduler, spec, device, cfg, epoch, dist_info.is_main, augment=augment
        )
        seconds = time.perf_counter() - start
        train_loss = mean_over_ranks(train_loss, len(train_loader.sampler), dist_info)
        sync_buffers(model, dist_info)
        val = predict(model, val_loader, spec, device, cfg.train.amp, desc=f"validate {epoch}/{cfg.train.epochs}")
        val = gather_predictions(val, dist_info)
        if not dist_info.is_main:
            continue
        val_loss = split_loss(criterion, val, spec)
        aucs = point_aucs(val.probs, val.labels, spec.names, spec.kind)
        last = {
            "epoch": epoch,
            "train/loss": train_loss,
            "val/loss": val_loss,
            "val/auc": aucs["mean"],
            "sec/epoch": seconds,
            "lr": lr,
        }
        last.update({f"val/auc/{name}": aucs[name] for name in spec.names})
        if semi_round is not None:
            last.update(semi_round.metrics())
            write_round(run_dir / "semi.jsonl", semi_round)
        logger.log_epoch(last)
        tqdm.write(f"epoch {epoch}: train/loss {train_loss:.4f}  val/loss {val_loss:.4f}  val/auc {aucs['mean']:.4f}  ({seconds:.1f}s)")
        if improves(last, best):
            best = dict(last)
            save_checkpoint(run_dir / "checkpoints" / "best.pt", **checkpoint_content(epoch, last))
        save_checkpoint(run_dir / "checkpoints" / "last.pt", **checkpoint_content(epoch, last))
        logger.write_summary({"best": best, "last": last, "params": params})
    barrier(dist_info)  # every rank reads the checkpoints rank 0 wrote
    calibration = calibrate_checkpoints(model, cfg, spec, val_loader, device, dist_info, run_dir / "checkpoints")
    if logger is not None:
        summary = json.loads((run_dir / "summary.json").read_text())
        logger.write_summary({**summary, "calibration": calibration})
        logger.finish()
    barrier(dist_info)
    return run_dir


def calibrate_checkpoints(
    model: nn.Module, cfg: DictConfig, spec: LabelSpec, val_loader, device: torch.device, dist_info: DistInfo, folder: Path
) -> dict:
    """`train.calibrate`: temperature scaling of best.pt, then last.pt, each fitted on the validation split with
    that checkpoint's own model (`engine.calibration.fit_temperature`) and written into its label spec.

    Every rank predicts its shard (the predictions are gathered, as for the per-epoch AUC); rank 0
    fits and rewrites the files. `model` is left with a checkpoint's weights. Returns summary.json's
    `calibration`: whether it ran, and for best.pt the temperature, validation NLL and ECE before and
    after. `train.calibrate=false` leaves the checkpoints uncalibrated (T = 1).
    """
    ones = [1.0] * (spec.num_outputs if spec.kind == "multilabel" else 1)
    if not cfg.train.calibrate:
        return {"enabled": False, "temperature": ones}
    fitted: dict[int, tuple[tuple[float, ...], dict]] = {}  # epoch -> temperature and report: last.pt may be best.pt's epoch
    best_report = {"temperature": ones}
    for name in ("best.pt", "last.pt"):
        path = folder / name
        if not path.is_file():
            continue
        state = load_checkpoint(path)
        if state["epoch"] not in fitted:
            model.load_state_dict(state["model"])
            val = gather_predictions(predict(model, val_loader, spec, device, cfg.train.amp, desc=f"calibrate {name}"), dist_info)
            fitted[state["epoch"]] = fit_temperature(val.logits, val.labels, spec)
        temperature, report = fitted[state["epoch"]]
        if dist_info.is_main:
            state["label_spec"] = replace(LabelSpec.from_dict(state["label_spec"]), temperature=temperature).to_dict()
            save_checkpoint(path, **{key: value for key, value in state.items() if key != "format"})
        if name == "best.pt":
            best_report = report
    barrier(dist_info)
    return {"enabled": True, "checkpoint": "best.pt", **best_report}
