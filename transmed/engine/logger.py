"""Run files (`config.yaml`, `metrics.jsonl`, `summary.json`) and the W&B run, written by one object."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig

from ..config import save_config, to_dict
from ..core.io import atomic_write, write_json


def _clean(record: dict) -> dict:
    """JSON-safe: NaN/Inf become None."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


MAX_TAG = 64  # W&B refuses a run whose tags are longer


def wandb_tags(tags) -> list[str]:
    """Tags as W&B takes them: a longer one (a grid value that is a path, say) is cut to 64 characters, ending in "..."."""
    return [tag if len(tag) <= MAX_TAG else tag[: MAX_TAG - 3] + "..." for tag in map(str, tags)]


class RunLogger:
    """Writes the files DESIGN.md promises under the run dir and mirrors them to W&B."""

    def __init__(self, run_dir: Path, cfg: DictConfig, resume_id: Optional[str] = None, job_type: str = "train") -> None:
        self.run_dir = run_dir
        self.metrics_path = run_dir / "metrics.jsonl"
        save_config(cfg, run_dir / "config.yaml")
        self.wandb_run = None
        if cfg.wandb.mode != "disabled":
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            self.wandb_run = wandb.init(
                mode=cfg.wandb.mode,
                project=cfg.wandb.project,
                entity=cfg.wandb.entity,
                group=cfg.wandb.group,
                tags=wandb_tags(cfg.wandb.tags),
                name=cfg.run_name,
                job_type=job_type,
                dir=str(run_dir),
                config=to_dict(cfg),
                id=resume_id,
                resume="allow" if resume_id else None,
                reinit="finish_previous",
            )

    @property
    def wandb_id(self) -> Optional[str]:
        return None if self.wandb_run is None else self.wandb_run.id

    def truncate_after(self, epoch: int) -> None:
        """Drops metric lines past `epoch` (a resumed run re-runs them), so each epoch appears once."""
        if not self.metrics_path.exists():
            return
        lines = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                if json.loads(line)["epoch"] <= epoch:
                    lines.append(line)
            except (json.JSONDecodeError, KeyError):
                continue  # a line cut short by a kill during the write
        atomic_write(self.metrics_path, lambda f: f.write("".join(line + "\n" for line in lines)), mode="w")

    def log_epoch(self, record: dict) -> None:
        record = _clean(record)
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in record.items() if v is not None}, step=record["epoch"])

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json(self.run_dir / "summary.json", {k: _clean(v) if isinstance(v, dict) else v for k, v in summary.items()})
        if self.wandb_run is not None:
            for section, values in summary.items():
                if isinstance(values, dict):
                    for k, v in values.items():
                        self.wandb_run.summary[f"{section}/{k}"] = v

    def finish(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None
