"""Deploying a trained checkpoint: `transmed export --checkpoint best.pt --format F --out PATH`.

| format         | writes                                                  | checked by                                       |
|----------------|---------------------------------------------------------|--------------------------------------------------|
| `onnx`         | one .onnx file (inputs `x`, `mask`; output `logits`; `metadata_props`: `describe.py`) | ONNX Runtime vs PyTorch |
| `torch-export` | a .pt2 `torch.export` program                           | reloaded (`torch.export.load`) vs PyTorch        |
| `safetensors`  | the weights, the config as metadata                     | reloaded into a fresh model vs PyTorch           |
| `monai-bundle` | configs/{metadata,inference}.json, models/model.pt2, scripts/, docs/README.md | MONAI's verify_metadata, verify_net_in_out; the network vs PyTorch |
| `hub`          | config.json, model.safetensors, README.md (model card)  | `transmed.load_model(folder)` vs PyTorch         |

The graph formats are dynamic in batch and slices (see `graph.py`). Every check runs on three
slice counts and two batch sizes, with padding and a missing modality, and fails the export (the
output is not kept) beyond a 1e-4 logit difference. An existing output is never replaced
without `overwrite`.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Optional

import torch

from ..core.errors import UsageError
from ..evaluation.evaluate import run_folder
from ..evaluation.model_card import CARD_NAME, model_card, robustness_results, split_statistics
from ..models.loading import load_trained, load_weights_file
from .common import (
    ExportError,
    ExportReport,
    check_output,
    check_parity,
    export_mode,
    file_sizes,
    input_geometry,
    nan_padded,
    parity_inputs,
    require_slices,
    require_transmed,
    staged,
)
from .describe import describe, onnx_metadata_props

__all__ = ["FORMATS", "ExportError", "ExportReport", "export_checkpoint", "export_mode"]

FORMATS = ("onnx", "torch-export", "safetensors", "monai-bundle", "hub")
NEEDS = {"onnx": ("onnx", "onnxscript", "onnxruntime"), "monai-bundle": ("jsonschema",)}


def export_checkpoint(
    checkpoint: str | Path,
    fmt: str,
    out: str | Path,
    *,
    overwrite: bool = False,
    check: bool = True,
    card: Optional[str | Path] = None,
    device: str = "cpu",
) -> ExportReport:
    """Exports `checkpoint` as `fmt` to `out` (a file, or a folder for monai-bundle and hub) and checks it."""
    from ..models.hub_reader import is_hub_folder
    from .monai_bundle import is_bundle

    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    missing = [name for name in NEEDS.get(fmt, ()) if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageError(f"--format {fmt} needs {', '.join(missing)}: pip install 'transmed[export]'")
    out = Path(out)
    check_output(out, overwrite, {"monai-bundle": is_bundle, "hub": is_hub_folder}.get(fmt))
    if card is not None and not Path(card).is_file():
        raise UsageError(f"model card not found: {card}")
    trained = load_trained(checkpoint, device=device)
    model, cfg, spec, ckpt = trained
    if fmt in ("onnx", "torch-export", "monai-bundle"):
        require_transmed(model, fmt)
    inputs = parity_inputs(cfg) if check else []
    report = ExportReport(fmt, out)
    with staged(out, overwrite) as tmp:
        if fmt in ("onnx", "torch-export"):
            _graph(fmt, model, cfg, describe(cfg, spec, ckpt.get("epoch")), tmp, inputs, report, torch.device(device))
        elif fmt == "safetensors":
            _safetensors(checkpoint, model, cfg, spec, tmp, inputs, report)
        else:
            card_text, metrics = _card(checkpoint, trained, card)
            if fmt == "hub":
                _hub(model, cfg, spec, ckpt, card_text, tmp, inputs, report)
            else:
                _bundle(model, cfg, spec, ckpt, card_text, metrics, tmp, inputs, report, device)
        report.files = file_sizes(tmp, out.name)
    return report


def _graph(fmt: str, model, cfg, description: dict, tmp: Path, inputs, report: ExportReport, device: torch.device) -> None:
    from .graph import example_inputs, export_program, load_pt2, onnx_runner, save_onnx, save_pt2

    geo = input_geometry(cfg)
    low = geo["min_slices"]
    example = example_inputs(len(geo["modalities"]), geo["image_size"], low, device)
    program = export_program(model, example, low)
    size = geo["image_size"]
    axes = f"dynamic axes: batch >= 1, slices >= {low}; {len(geo['modalities'])} modalities, {size}x{size} pixels"
    if fmt == "onnx":
        opset = save_onnx(program, example, tmp, low, onnx_metadata_props(description))
        report.notes.append(f"ONNX opset {opset}; inputs x (float32), mask (bool); output logits; {axes}")
        report.notes.append(f"metadata_props: {', '.join(description)}; `transmed predict --checkpoint FILE.onnx` reads them")
        run = onnx_runner(tmp, low) if inputs else None
    else:
        save_pt2(program, tmp)
        report.notes.append(f"load with torch.export.load(path).module()(x, mask); {axes}; traced on {device.type}")
        module = load_pt2(tmp) if inputs else None

        def run(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            require_slices(x, low, f"the input of {tmp.name}")  # the program's own guard is an AssertionError
            return module(x.to(device), mask.to(device))

    if inputs:
        report.parity = check_parity(model, run, inputs)


def _safetensors(checkpoint, model, cfg, spec, tmp: Path, inputs, report: ExportReport) -> None:
    from ..core.checkpoint import export_safetensors

    export_safetensors(checkpoint, tmp)
    report.notes.append("weights only; the training config and label spec are in the file's metadata")
    if inputs:
        fresh = load_weights_file(tmp)  # rebuilt from the file alone: its metadata must describe the model
        report.parity = check_parity(model.cpu(), lambda x, mask: fresh(x, mask), inputs)


def _hub(model, cfg, spec, ckpt: dict, card_text: str, tmp: Path, inputs, report: ExportReport) -> None:
    from ..models.loading import load_hub_folder
    from .hub_writer import write_hub_folder

    write_hub_folder(tmp, cfg, spec, model.state_dict(), card_text, ckpt.get("epoch"))
    report.notes.append("read back with transmed.load_model(folder); upload with huggingface_hub.upload_folder")
    if inputs:
        loaded = load_hub_folder(tmp)
        report.parity = check_parity(model.cpu(), lambda x, mask: loaded(x, mask), inputs)


def _bundle(
    model, cfg, spec, ckpt: dict, card_text: str, metrics: Optional[dict], tmp: Path, inputs, report: ExportReport, device: str
) -> None:
    from .graph import example_inputs, export_program
    from .monai_bundle import load_bundle_network, verify_bundle, write_bundle

    geo = input_geometry(cfg)
    low = geo["min_slices"]
    example = example_inputs(len(geo["modalities"]), geo["image_size"], low, torch.device(device))
    program = export_program(model, example, low, single_input=True)
    write_bundle(tmp, cfg, spec, program, card_text, ckpt.get("epoch"), _eval_metrics(metrics), device)
    modalities = " ".join(f"--study#{name} FILE" for name in geo["modalities"])
    report.notes.append(
        f"run: cd {tmp.name.removeprefix('.partial-')} && python -m monai.bundle run --config_file configs/inference.json {modalities}"
    )
    if inputs:
        verify_bundle(tmp, device=device)
        report.notes.append("MONAI verify_metadata (vendored schema, offline) and verify_net_in_out: passed")
        network = load_bundle_network(tmp, device=device)

        def run(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            require_slices(x, low, "the bundle's input")
            return network(nan_padded(x, mask).to(device))

        report.parity = check_parity(model, run, inputs)


def _eval_metrics(metrics: Optional[dict]) -> dict:
    """metadata.json's `eval_metrics`: the point values of one evaluation, `{split}/{task}/{metric}`."""
    if not metrics:
        return {}
    split = metrics.get("split", "eval")
    out = {}
    for section, values in [*metrics["tasks"].items(), ("overall", metrics["overall"])]:
        for metric, entry in values.items():
            if entry.get("value") is not None:
                out[f"{split}/{section}/{metric}"] = entry["value"]
    return out


def _card(checkpoint: str | Path, trained, card: Optional[str | Path]) -> tuple[str, Optional[dict]]:
    """The model card to ship: `card` if given; else the newest evaluation card of this checkpoint
    (eval-test, then eval-valid in its run folder); else one without results."""
    if card is not None:
        return Path(card).read_text(), None
    run_dir = run_folder(checkpoint)
    target = Path(checkpoint).resolve()
    for split in ("test", "valid"):
        folder = run_dir / f"eval-{split}"
        if (folder / CARD_NAME).is_file() and (folder / "metrics.json").is_file():
            try:
                metrics = json.loads((folder / "metrics.json").read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if Path(metrics.get("checkpoint", "")).resolve() == target:
                return (folder / CARD_NAME).read_text(), metrics
    model, cfg, spec, ckpt = trained
    text = model_card(
        cfg,
        spec,
        model=model,
        checkpoint=checkpoint,
        epoch=ckpt.get("epoch"),
        splits=split_statistics(cfg, spec),
        robustness=robustness_results(run_dir),
    )
    return text, None
