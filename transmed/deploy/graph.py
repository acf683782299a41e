"""Graph exports: `torch.export` (.pt2) and ONNX (through `torch.onnx.export(dynamo=True)`), with dynamic batch and slice axes.

Both record TransMed's dense forward (`TransMed.export_mode`): every slice group goes through the
stem, padded groups' tokens are zeroed with `torch.where` and masked in attention, and slice groups
are built by indexing rather than `unfold`, so no shape depends on the mask's values. The graph
takes `x` (B, M, S, H, W) float32 in [0, 1] and `mask` (B, M, S) bool, for any B >= 1 and any
S >= the pipeline's minimum (3 slices for `slice_mode=group`; pad shorter stacks with masked
slices, as the data pipeline does); M, H and W are fixed at the checkpoint's values. A stride > 1
(`_extend_tails`) exports too. `stem_chunk` is ignored inside the graph (one stem call).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from .common import Deployable, ExportError, NanPadded, export_mode, nan_padded, require_slices


@contextlib.contextmanager
def size_oblivious() -> Iterator[None]:
    """Lets dynamic sizes stand for every value >= their minimum, 1 included.

    Without it torch.export adds guards for sizes that could be 1 (here the slice-group count in a
    contiguity check), which narrows the slice axis to S >= 4. `backed_size_oblivious` is a private
    switch of torch.fx; where it is missing the export goes on without it.
    """
    try:
        from torch.fx.experimental import _config

        patch = _config.patch(backed_size_oblivious=True)
    except (ImportError, AttributeError, KeyError):
        patch = contextlib.nullcontext()
    with patch:
        yield


def dynamic_shapes(min_slices: int, names: tuple[str, ...] = ("x", "mask")) -> dict:
    batch = torch.export.Dim("batch", min=1)
    slices = torch.export.Dim("slices", min=min_slices)
    return {name: {0: batch, 2: slices} for name in names}


def example_inputs(num_modalities: int, image_size: int, min_slices: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded batch of two to trace with (the sizes are symbolic in the result)."""
    slices = max(min_slices, 2) + 5
    x = torch.rand(2, num_modalities, slices, image_size, image_size, device=device)
    mask = torch.ones(2, num_modalities, slices, dtype=torch.bool, device=device)
    mask[1, :, slices - 2 :] = False
    return x, mask


def export_program(
    model: nn.Module, example: tuple[torch.Tensor, torch.Tensor], min_slices: int, single_input: bool = False
) -> torch.export.ExportedProgram:
    """`torch.export` of `Deployable(model)` (inputs `x`, `mask`), or with `single_input` of `NanPadded(model)`
    (input `image`, padding as NaN slices), in export mode, dynamic in batch and slices."""
    wrapped, args, names = Deployable(model), example, ("x", "mask")
    if single_input:
        wrapped, args, names = NanPadded(model), (nan_padded(*example),), ("image",)
    with export_mode(model), size_oblivious(), torch.no_grad():
        try:
            return torch.export.export(wrapped.eval(), args, dynamic_shapes=dynamic_shapes(min_slices, names))
        except Exception as err:  # the exporters raise many types; the user needs one line and the cause
            raise ExportError(f"torch.export failed: {type(err).__name__}: {str(err).strip().splitlines()[0]}") from err


def save_pt2(program: torch.export.ExportedProgram, path: Path) -> None:
    torch.export.save(program, str(path))


def load_pt2(path: Path) -> nn.Module:
    """The module of a saved `.pt2`: call it as `module(x, mask)`."""
    return torch.export.load(str(path)).module()


def save_onnx(
    program: torch.export.ExportedProgram,
    example: tuple[torch.Tensor, torch.Tensor],
    path: Path,
    min_slices: int,
    metadata: dict[str, str],
) -> int:
    """The exported program as one self-contained .onnx file (inputs `x`, `mask`; output `logits`) with
    `metadata` as its `metadata_props` (`describe.onnx_metadata_props`); returns its opset."""
    import onnx

    with size_oblivious(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # progress lines and axis-renaming notes of the exporter
        try:
            onnx_program = torch.onnx.export(
                program,
                example,
                dynamo=True,
                dynamic_shapes=dynamic_shapes(min_slices),
                input_names=["x", "mask"],
                output_names=["logits"],
                external_data=False,
                optimize=True,
                verbose=False,
            )
        except Exception as err:
            raise ExportError(f"ONNX export failed: {type(err).__name__}: {str(err).strip().splitlines()[0]}") from err
    onnx_program.save(str(path), external_data=False)
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, metadata)
    onnx.save(proto, str(path))
    return int(next(op.version for op in onnx_program.model_proto.opset_import if op.domain in ("", "ai.onnx")))


def onnx_runner(path: Path, min_slices: int):
    """`run(x, mask) -> logits` through ONNX Runtime on the CPU; refuses fewer than `min_slices` slices
    (`TooFewSlicesError`), which the graph itself would run on silently."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
        require_slices(x, min_slices, f"the input of {path.name}")
        return session.run(["logits"], {"x": x.cpu().numpy().astype(np.float32), "mask": mask.cpu().numpy().astype(bool)})[0]

    return run
