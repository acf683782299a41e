"""A model card per evaluation (`MODEL_CARD.md` next to `metrics.json`), in the Hugging Face layout.

YAML front matter (`library_name`, `license`, `tags`, `model-index` with one result per metric, as
the Hub and `huggingface_hub.ModelCard` read it), a warning when the split reported is the one that
chose the checkpoint's epoch, then sections: model details, inputs and outputs, data
and splits, evaluation results (every metric with its 95% interval, calibration, thresholds),
robustness (each `uap.json` of the run), intended use, limitations, how to use, citation. The
numbers are those of `metrics.json`, so the card is what the `hub` and `monai-bundle` exports carry.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import yaml
from omegaconf import DictConfig
from torch import nn

from ..core.errors import TransMedError
from ..core.labels import LabelSpec
from ..core.tables import markdown_table
from .metrics import ECE_BINS, METRICS

CARD_NAME = "MODEL_CARD.md"
# The trained weights carry the repository's licence (LICENSE; pyproject.toml `license`): no config key sets
# another, and the card says so next to the data's own terms.
LICENSE = "mit"  # a Hugging Face Hub licence identifier
SELECTION_SPLIT = "valid"  # the split whose val/auc picks best.pt's epoch (engine/trainer.py)
PAPER = "Dai, Gao & Liu, *TransMed: Transformers Advance Multi-modal Medical Image Classification*, Diagnostics 11(8), 2021"
METRIC_NAMES = {
    "auc": "AUC",
    "average_precision": "average precision",
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "sensitivity": "sensitivity",
    "specificity": "specificity",
    "f1": "F1",
    "ece": "calibration error (ECE)",
    "ece_uncalibrated": "ECE before temperature scaling",
    "auc_macro": "AUC (macro)",
    "auc_micro": "AUC (micro)",
    "f1_macro": "F1 (macro)",
}


def _temperature(temperature: Optional[list[float]]) -> str:
    """The card's sentence on temperature scaling (`train.calibrate`)."""
    if temperature is None:
        return "Probabilities are not calibrated (no temperature in the checkpoint)."
    values = ", ".join(f"{t:.3g}" for t in temperature)
    return (
        f"Probabilities are temperature-scaled (T = {values}, fitted on `{SELECTION_SPLIT}` at the end of training); the ECE "
        "before scaling is the `ECE before temperature scaling` row. AUC and average precision are computed from the "
        "unscaled probabilities, whose ranking is the model's own."
    )


def split_statistics(cfg: DictConfig, spec: LabelSpec, evaluated: Optional[tuple[str, np.ndarray]] = None) -> dict[str, dict]:
    """Per split of the data: `studies` and label `prevalence` (fraction positive per task, or per class).

    `evaluated` = (split, labels) gives the studies actually evaluated (after `data.on_error=skip`);
    the other splits are counted from their manifests, and left out when they cannot be read.
    """
    from ..data.datasets import read_manifest
    from ..data.inspection import splits_of
    from ..data.synthesis import MARKER

    if cfg.data.format == "synthetic" and not (Path(str(cfg.data.root)) / MARKER).is_file():
        names = []  # reading its manifest would generate the dataset (`ensure_synthetic` tests the same marker)
    else:
        try:
            names = splits_of(cfg)
        except (TransMedError, OSError):
            names = []
    if evaluated is not None and evaluated[0] not in names:
        names.append(evaluated[0])
    out = {}
    for split in names:
        if evaluated is not None and split == evaluated[0]:
            labels = np.asarray(evaluated[1])
        else:
            try:
                labels = np.asarray([item["label"] for item in read_manifest(cfg, split)])
            except (TransMedError, OSError, KeyError):
                continue
        out[split] = {"studies": int(len(labels)), "prevalence": prevalence(labels, spec)}
    return out


def prevalence(labels: np.ndarray, spec: LabelSpec) -> dict[str, float]:
    if len(labels) == 0:
        return {name: float("nan") for name in spec.names}
    if spec.kind == "multiclass":
        counts = np.bincount(labels.astype(int).ravel(), minlength=spec.num_outputs)
    else:
        counts = labels.reshape(len(labels), -1).sum(axis=0)
    return {name: float(c) / len(labels) for name, c in zip(spec.names, counts)}


def robustness_results(run_dir: Path) -> list[tuple[str, dict]]:
    """(folder name, content) of every `uap.json` one level below the run folder."""
    results = []
    for path in sorted(Path(run_dir).glob("*/uap.json")):
        try:
            results.append((path.parent.name, json.loads(path.read_text())))
        except (OSError, json.JSONDecodeError):
            continue
    return results


def model_card(
    cfg: DictConfig,
    spec: LabelSpec,
    *,
    model: Optional[nn.Module] = None,
    checkpoint: Optional[str | Path] = None,
    epoch: Optional[int] = None,
    metrics: Optional[dict] = None,
    splits: Optional[dict[str, dict]] = None,
    robustness: Iterable[tuple[str, dict]] = (),
    n_bootstrap: Optional[int] = None,
) -> str:
    """The card as Markdown with YAML front matter; `metrics` is the content of metrics.json (None: not evaluated)."""
    name = cfg.run_name or f"transmed-{cfg.model.name}"
    robustness = list(robustness)
    front = {
        "library_name": "transmed",
        "license": LICENSE,
        "pipeline_tag": "image-classification",
        "tags": ["transmed", "medical-imaging", "mri", "multi-modal", "transformer", "research-only", spec.kind],
    }
    if metrics is not None:
        front["model-index"] = [{"name": name, "results": [_model_index_result(cfg, spec, metrics)]}]
    parts = [
        "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True) + "---",
        f"# Model card: {name}",
        f"TransMed ({cfg.model.name}, {cfg.model.backbone} stem) classifying multi-modal MRI studies "
        f"({', '.join(cfg.data.modalities)}) for {spec.kind} {', '.join(spec.names)}. "
        "**A research model: not a medical device, not for diagnosis.**",
        _selection_warning(metrics),
        _details(cfg, spec, model, checkpoint, epoch),
        _io(cfg, spec),
        _data(cfg, spec, splits),
        _results(spec, metrics, n_bootstrap),
        _robustness(robustness),
        _intended_use(),
        _how_to_use(),
        _license(cfg),
        f"## Citation\n\n{PAPER}.",
    ]
    return "\n\n".join(part for part in parts if part) + "\n"


def write_model_card(out: Path, cfg: DictConfig, spec: LabelSpec, **kwargs: Any) -> Path:
    path = Path(out) / CARD_NAME
    path.write_text(model_card(cfg, spec, **kwargs))
    return path


def _model_index_result(cfg: DictConfig, spec: LabelSpec, metrics: dict) -> dict:
    entries = []
    for section, values in [*metrics["tasks"].items(), ("overall", metrics["overall"])]:
        for metric, entry in values.items():
            value = entry["value"]
            if value is None or not math.isfinite(value):
                continue
            entries.append({"type": metric, "name": f"{section} {METRIC_NAMES.get(metric, metric)}", "value": float(value)})
    return {
        "task": {"type": "image-classification", "name": f"{spec.kind} classification"},
        "dataset": {
            "name": f"{cfg.data.format} ({Path(str(cfg.data.root)).name})",
            "type": str(cfg.data.format),
            "split": metrics.get("split", ""),
        },
        "metrics": entries,
    }


def _selection_warning(metrics: Optional[dict]) -> str:
    """A visible warning when the figures come from the split that chose the epoch: they are optimistic."""
    if metrics is None or metrics.get("split") != SELECTION_SPLIT:
        return ""
    return (
        f"> **Warning: these results are on `{SELECTION_SPLIT}`, the split that chose this checkpoint's epoch** "
        f"(training keeps the epoch with the best `val/auc`), so they overstate how the model does on new studies. "
        "Report a split that took no part in training: `transmed evaluate --split test` (for MRNet, "
        "`data.val_fraction` carves validation out of train and keeps MRNet's valid as the test split)."
    )


def bootstrap_description(spec: LabelSpec) -> str:
    """What the interval bootstrap did for this label spec (as `metrics._bootstrap_weights` resamples)."""
    if spec.kind == "multiclass":
        return "a bootstrap of studies stratified on the class (each resample keeps every class's count)"
    if spec.num_outputs == 1:
        return "a bootstrap of studies stratified on the label (each resample keeps the positives' count)"
    return (
        "an unstratified bootstrap of studies, one resample shared by all tasks (stratifying on the combination of "
        f"{spec.num_outputs} labels would leave most strata with a single study)"
    )


def _license(cfg: DictConfig) -> str:
    return (
        f"## License\n\nMIT (`license: {LICENSE}`): the weights carry the TransMed repository's license by default; no "
        f"config key sets another. The training data (`{cfg.data.format}` at `{cfg.data.root}`) may come with terms "
        "of its own (MRNet's research use agreement, a hospital's data use agreement) that restrict the weights further."
    )


def _weights_origin(cfg: DictConfig) -> str:
    pretrained = cfg.model.pretrained
    if pretrained is True:
        stem = f"the stem started from timm's ImageNet weights for {cfg.model.backbone}"
    elif isinstance(pretrained, str) and pretrained:
        stem = f"the stem started from the local weights file {pretrained}"
    else:
        stem = "random initialisation (no pretrained weights)"
    if cfg.model.init_from:
        stem += f"; matching tensors initialised from {cfg.model.init_from}"
    return f"trained with TransMed from {stem}"


def _details(cfg: DictConfig, spec: LabelSpec, model: Optional[nn.Module], checkpoint: Optional[str | Path], epoch: Optional[int]) -> str:
    m = cfg.model
    rows = [
        {"": "architecture", "value": f"{m.name} (variant {m.variant}, depth {m.depth if m.depth is not None else 'of the variant'})"},
        {
            "": "backbone (CNN stem)",
            "value": f"{m.backbone}, feature stage {m.stem_stage}, {m.grid_size}x{m.grid_size} tokens per slice group",
        },
        {"": "slice grouping", "value": f"{m.slice_mode}, window {m.slice_window}, stride {m.slice_stride}"},
        {"": "weights origin", "value": _weights_origin(cfg)},
    ]
    if model is not None:
        rows.append({"": "parameters", "value": f"{sum(p.numel() for p in model.parameters()):,}"})
    if checkpoint is not None:
        rows.append({"": "checkpoint", "value": f"{checkpoint}" + (f" (epoch {epoch})" if epoch is not None else "")})
    rows.append({"": "outputs", "value": f"{spec.num_outputs} logits: {', '.join(spec.names)}"})
    return "## Model details\n\n" + markdown_table(rows, ["", "value"])


def _io(cfg: DictConfig, spec: LabelSpec) -> str:
    from ..config import min_slices_for

    low = min_slices_for(cfg.model.slice_mode, cfg.model.slice_window)
    prob = "sigmoid per task (independent tasks)" if spec.kind == "multilabel" else "softmax over the classes"
    slices = (
        f"resampled to {cfg.data.num_slices} slices"
        if cfg.data.num_slices
        else f"any number of slices (at least {low}; shorter stacks are padded)"
    )
    return (
        "## Inputs and outputs\n\n"
        f"- `x`: (batch, modality, slice, height, width) float32 in [0, 1]; modalities in the order "
        f"{', '.join(cfg.data.modalities)}; {cfg.data.image_size}x{cfg.data.image_size} pixels; {slices}. "
        f"Preprocessing: TransMed's `{cfg.data.format}` pipeline (`transmed.data.preprocessing`).\n"
        "- `mask`: (batch, modality, slice) bool, True for real slices; padding and a missing modality (all False) "
        "cannot change the output.\n"
        f"- output: logits (batch, {spec.num_outputs}); probabilities by {prob}."
        + (f" Modalities {list(cfg.data.drop_modalities)} are treated as missing at inference." if cfg.data.drop_modalities else "")
    )


def _pct(value: float) -> str:
    return "" if value is None or not math.isfinite(value) else f"{100 * value:.1f}%"


def _data(cfg: DictConfig, spec: LabelSpec, splits: Optional[dict[str, dict]]) -> str:
    text = f"## Data and splits\n\n{cfg.data.format} data at `{cfg.data.root}`."
    if cfg.data.format == "nifti":
        d = cfg.data
        text += f" Validation fold {d.fold} of {d.num_folds} (split seed {d.split_seed}) unless the labels name the splits."
    elif cfg.data.val_fraction is not None:
        text += f" Validation: a stratified {cfg.data.val_fraction:g} of MRNet's train (seed {cfg.data.split_seed}); test: MRNet's valid."
    if not splits:
        return text + " Split statistics were not available."
    label = "positive" if spec.kind == "multilabel" else "class share"
    rows = [
        {"split": split, "studies": s["studies"], **{f"{n} ({label})": _pct(s["prevalence"].get(n)) for n in spec.names}}
        for split, s in splits.items()
    ]
    return text + "\n\n" + markdown_table(rows)


def _cell(entry: Optional[dict]) -> str:
    if not entry or entry.get("value") is None or not math.isfinite(entry["value"]):
        return "n/a" if entry else ""
    lo, hi = entry.get("ci") or (None, None)
    if lo is None or hi is None:
        return f"{entry['value']:.3f}"
    return f"{entry['value']:.3f} [{lo:.3f}, {hi:.3f}]"


def _metric_table(spec: LabelSpec, block: dict) -> str:
    order = list(METRICS) + [k for k in block["overall"] if k not in METRICS]
    rows = []
    for metric in order:
        row = {"metric": METRIC_NAMES.get(metric, metric)}
        row.update({name: _cell(block["tasks"].get(name, {}).get(metric)) for name in spec.names})
        row["overall"] = _cell(block["overall"].get(metric))
        rows.append(row)
    return markdown_table(rows, ["metric", *spec.names, "overall"])


def _thresholds(spec: LabelSpec, thresholds: dict) -> str:
    if spec.kind == "multiclass":
        return "Decision rule: the predicted class is the argmax of the probabilities (no threshold)."
    return "Decision thresholds on the probabilities: " + ", ".join(f"{k} {v:g}" for k, v in thresholds.items()) + "."


def _results(spec: LabelSpec, metrics: Optional[dict], n_bootstrap: Optional[int]) -> str:
    if metrics is None:
        return "## Evaluation results\n\nNot evaluated here: see `transmed evaluate`, which writes a card with its results."
    boot = f" ({n_bootstrap} resamples)" if n_bootstrap else ""
    text = [
        "## Evaluation results",
        f"Split `{metrics.get('split')}`: {metrics['n']} studies"
        + (f" ({metrics['skipped']} left out by `data.on_error=skip`, see skipped.json)" if metrics.get("skipped") else "")
        + f", checkpoint epoch {metrics.get('epoch')}. Each value with its 95% interval{boot} from {bootstrap_description(spec)}. "
        "Overall: the mean over tasks" + (" (one-vs-rest, macro) plus micro AUC and accuracy." if spec.kind == "multiclass" else "."),
        _metric_table(spec, metrics),
        f"Calibration error: expected calibration error (ECE) over {ECE_BINS} equal-width probability bins, per task "
        "(the `calibration error (ECE)` row); see calibration.png. " + _temperature(metrics.get("temperature")),
        _thresholds(spec, metrics.get("thresholds", {})),
    ]
    if "youden" in metrics:
        text += [
            "### With Youden thresholds chosen on `valid`",
            _thresholds(spec, metrics.get("thresholds_youden_from_valid", {})),
            _metric_table(spec, metrics["youden"]),
        ]
    return "\n\n".join(text)


def _robustness(results: list[tuple[str, dict]]) -> str:
    if not results:
        return "## Robustness\n\nNo robustness evaluation in this run (`transmed robustness` writes uap.json)."
    rows = []
    for folder, r in results:
        s = r.get("settings", {})
        auc = r.get("auc", {})
        rows.append(
            {
                "result": folder,
                "norm": s.get("norm"),
                "zeta (budget)": s.get("zeta"),
                "achieved zeta": max(s["achieved_zeta"]) if s.get("achieved_zeta") else None,
                "split": s.get("split"),
                "studies": s.get("n_eval"),
                "crafting-set rate": s.get("crafting_rate"),
                "fooling rate": r.get("fooling_rate"),
                "random, same norm": r.get("random_fooling_rate"),
                "AUC clean": auc.get("clean"),
                "AUC with UAP": auc.get("uap"),
                "AUC random": auc.get("random"),
            }
        )
    formats = {k: ".3f" for k in ("fooling rate", "random, same norm", "crafting-set rate", "AUC clean", "AUC with UAP", "AUC random")}
    formats["achieved zeta"] = ".3g"
    return (
        "## Robustness\n\nUniversal adversarial perturbations (uap.json): the share of held-out studies whose prediction a "
        "single perturbation changes, against random perturbations with the UAP's achieved norm (crafting can stop short of "
        "its budget; the achieved zeta is the largest over modalities), and the rate on the studies it was crafted from.\n\n"
        + markdown_table(rows, formats=formats)
    )


def _intended_use() -> str:
    return (
        "## Intended use\n\n"
        "Research on multi-modal MRI classification: benchmarking, ablations, method development. "
        "**Not for clinical use**: it is not a medical device, has not been validated prospectively or by a regulator, "
        "and must not inform diagnosis or treatment.\n\n"
        "## Limitations\n\n"
        "- Performance is measured on the split above only; other scanners, protocols, sites and populations can differ.\n"
        "- The intervals reflect sampling of studies, not shifts between sites or time.\n"
        "- Thresholds other than the ones stated change sensitivity and specificity.\n"
        "- Probabilities may be miscalibrated (see the calibration error), in particular after class-weighted training.\n"
        "- Inputs must follow TransMed's preprocessing, modality order and image size."
    )


def _how_to_use() -> str:
    return (
        "## How to use\n\n"
        "```python\n"
        "import torch, transmed\n"
        'model = transmed.load_model("path/to/checkpoint.pt or hub folder")  # eval mode, CPU\n'
        "logits = model(x, mask)  # x (B, M, S, H, W) in [0, 1], mask (B, M, S) bool\n"
        "```\n\n"
        "Or from the command line: `transmed predict --checkpoint best.pt FILE_PER_MODALITY...`."
    )
