"""From a config to datasets and loaders: manifests, label spec, MONAI cached datasets, collate.

Bad studies are found when the dataset is built, not halfway through an epoch: `build_dataset`
runs the deterministic preprocessing of every study up front (which also fills the cache). Under
`data.on_error=skip` the failures are left out and listed in the dataset's `skipped`.

Studies without labels (`data.unlabelled_root`, for `train.semi`) go through the same path:
`read_unlabelled_manifest` and `build_unlabelled_dataset`, the split named `UNLABELLED`.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from functools import partial
from multiprocessing.pool import ThreadPool
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import monai
import numpy as np
import torch
from monai.data import CacheDataset, DataLoader, Dataset, PersistentDataset
from monai.data.utils import pickle_hashing
from monai.transforms import Compose
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Sampler

from ..config import min_slices_for
from ..core.errors import ConfigError, DataError
from ..core.labels import LabelSpec
from ..core.progress import progress
from .augment import RandAugmentd, augment_where
from .collate import pad_collate
from .mrnet import read_mrnet, read_mrnet_unlabelled
from .nifti import class_names, label_index, nifti_preprocess, read_labels, read_nifti_manifest, read_nifti_unlabelled
from .screening import OnError, catch_study_error
from .synthesis import MARKER, TRUTH_FILE, UNLABELLED_DIR, generate_mrnet
from .transforms import CompactStacksd, mrnet_preprocess

PREPROCESSING_VERSION = 2  # part of the cache key: bump when a transform's output changes for the same settings
# 2: stacks cached in `data.cache_dtype` (uint8 / float16 under auto), no longer always float32
UNLABELLED = "unlabelled"  # the split name of `data.unlabelled_root`'s studies (progress bars, messages)


class Manifest(list):
    """The study dicts of one split, plus `skipped`: studies `data.on_error=skip` left out ({id, file, reason})."""

    def __init__(self, items: Iterable[dict] = (), skipped: Iterable[dict] = ()) -> None:
        super().__init__(items)
        self.skipped = list(skipped)


def label_kind(cfg: DictConfig) -> str:
    """"multiclass" for `nifti` (one class per patient), "multilabel" for the knee formats; reads no files."""
    return "multiclass" if cfg.data.format == "nifti" else "multilabel"


def label_spec(cfg: DictConfig) -> LabelSpec:
    """Multi-label tasks for the knee formats; for `nifti` one class per patient (`data.classes` or the labels found)."""
    if label_kind(cfg) == "multiclass":
        frame = read_labels(cfg.data.root, cfg.data.label_column)
        return LabelSpec("multiclass", class_names(frame, cfg.data.label_column, cfg.data.classes))
    return LabelSpec("multilabel", tuple(cfg.data.tasks))


def ensure_synthetic(cfg: DictConfig) -> None:
    """`data.format: synthetic` writes the dataset into `data.root` once, then reads it as MRNet."""
    root, s = Path(cfg.data.root), cfg.data.synthetic
    keys = ("num_train", "num_valid", "image_size", "min_slices", "max_slices", "seed", "fusion", "num_unlabelled")
    wanted = {"format": "mrnet", **{key: s[key] for key in keys}}
    marker = root / MARKER
    if marker.is_file():
        try:
            made = json.loads(marker.read_text())
        except json.JSONDecodeError:
            made = {}
        made = {"fusion": False, "num_unlabelled": 0, **made} if made else made  # recorded only when on / not 0
        changed = [f"{key}={made.get(key)} (config: {value})" for key, value in wanted.items() if made.get(key) != value]
        if changed:
            what = f"made with other settings: {', '.join(changed)}" if made else "without recorded settings (an earlier version)"
            raise DataError(
                f"data.root {root} holds synthetic data {what}; delete the folder to regenerate it, or point data.root at a new one"
            )
        return
    if root.exists() and any(root.iterdir()):
        raise DataError(
            f"data.root {root} holds files but no complete synthetic dataset (no {MARKER} file; an interrupted generation?); "
            f"refusing to write into it: delete it or point data.root elsewhere"
        )
    kind = "fusion-needing " if s.fusion else ""
    unlabelled = f", {s.num_unlabelled} unlabelled in {root / UNLABELLED_DIR}" if s.num_unlabelled else ""
    print(f"generating synthetic {kind}MRNet-layout data in {root} ({s.num_train} train, {s.num_valid} valid studies{unlabelled})")
    generate_mrnet(
        root, s.num_train, s.num_valid, s.image_size, s.min_slices, s.max_slices, s.seed, fusion=s.fusion, num_unlabelled=s.num_unlabelled
    )


def read_manifest(cfg: DictConfig, split: str) -> Manifest:
    """Study dicts (id, one file per modality, label) for `split`: train | valid, and test where the data defines one."""
    d, on_error = cfg.data, OnError(cfg.data.on_error)
    if d.format == "synthetic":
        ensure_synthetic(cfg)
    if d.format == "nifti":
        items = read_nifti_manifest(
            d.root, split, list(d.modalities), d.label_column, d.classes, d.num_folds, d.fold, d.split_seed, on_error
        )
    elif d.format in ("mrnet", "synthetic"):
        items = read_mrnet(d.root, split, list(d.modalities), list(d.tasks), d.val_fraction, d.split_seed, on_error)
    else:
        raise DataError(f"data.format {d.format!r} has no reader")
    return Manifest(items, on_error.skipped)


def read_unlabelled_manifest(cfg: DictConfig) -> Manifest:
    """Study dicts of `data.unlabelled_root` (id, one file per modality, a placeholder label: NaN per
    task for the knee formats, `nifti.UNLABELLED` for nifti), in `data.format`'s layout without labels."""
    d, on_error = cfg.data, OnError(cfg.data.on_error)
    if not d.unlabelled_root:
        raise ConfigError("config key 'data.unlabelled_root' is not set: give the folder of studies without labels, in data.root's format")
    root = Path(d.unlabelled_root)
    if d.format == "synthetic":
        ensure_synthetic(cfg)
        if not root.exists() and not d.synthetic.num_unlabelled:
            raise DataError(
                f"data.unlabelled_root not found: {root}; with data.format=synthetic, data.synthetic.num_unlabelled=N writes "
                f"N unlabelled studies into {Path(d.root) / UNLABELLED_DIR} (into a new data.root: an existing set is not extended)"
            )
    if d.format == "nifti":
        items = read_nifti_unlabelled(root, list(d.modalities), d.label_column, on_error)
    elif d.format in ("mrnet", "synthetic"):
        items = read_mrnet_unlabelled(root, list(d.modalities), list(d.tasks), on_error)
    else:
        raise DataError(f"data.format {d.format!r} has no reader")
    return Manifest(items, on_error.skipped)


def read_truth(folder: str | Path, spec: LabelSpec) -> Optional[dict[str, np.ndarray | int]]:
    """The generator's labels of unlabelled synthetic studies (`synthesis.TRUTH_FILE`), encoded as the labelled
    items' are (multilabel: float32 per task of `spec`; multiclass: the index into its classes); None without the file.

    Only for scoring pseudo-labels: nothing may train on it, or the studies are not unlabelled.
    """
    path = Path(folder) / TRUTH_FILE
    if not path.is_file():
        return None
    try:
        labels = json.loads(path.read_text())["labels"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise DataError(f"cannot read {path}: {err}; it is the synthetic generator's, delete it (or regenerate the folder)") from None
    return {sid: _truth_label(label, spec, path) for sid, label in labels.items()}


def _truth_label(label: object, spec: LabelSpec, path: Path) -> np.ndarray | int:
    if spec.kind == "multilabel":
        if not isinstance(label, dict) or any(task not in label for task in spec.names):
            raise DataError(f"{path}: label {label!r} does not give every task of data.tasks {list(spec.names)}")
        return np.array([label[task] for task in spec.names], dtype=np.float32)
    index = label_index(str(label), spec.names)
    if index is None:
        raise DataError(f"{path}: label {label!r} is not one of the classes {list(spec.names)}")
    return index


def preprocessing(cfg: DictConfig) -> Compose:
    """The deterministic part of the pipeline (what evaluation, prediction and inspection apply)."""
    d, m = cfg.data, cfg.model
    min_slices = min_slices_for(m.slice_mode, m.slice_window)
    if d.format == "nifti":
        spacing = list(d.spacing) if d.spacing else None
        return nifti_preprocess(list(d.modalities), d.image_size, d.num_slices, min_slices, d.slice_axis, spacing)
    return mrnet_preprocess(list(d.modalities), d.image_size, d.num_slices, min_slices)


def cache_dtype(cfg: DictConfig) -> torch.dtype:
    """What the cache (and so the batches) hold, `data.cache_dtype`: under auto the source's type,
    uint8 for MRNet's .npy (uint8 itself), float16 for NIfTI/DICOM after normalisation; else float32.
    `CompactStacksd` documents the rounding; `collate.to_device` makes the float32 model input."""
    if cfg.data.cache_dtype == "float32":
        return torch.float32
    return torch.float16 if cfg.data.format == "nifti" else torch.uint8


def pipeline(cfg: DictConfig, train: bool) -> Compose:
    """Preprocessing, then the cache's type (`cache_dtype`); with `train` the augmentation per study
    after it (`augment.RandAugmentd`). `build_dataset` asks for it where `augment.augment_where`
    says "loader"; under "device" the trainer augments the batch, and with `data.augment: false` nothing does."""
    modalities = list(cfg.data.modalities)
    stages = [preprocessing(cfg), CompactStacksd(modalities, cache_dtype(cfg))]
    if train:
        stages.append(RandAugmentd(modalities))
    return Compose(stages).flatten()  # flat, so cached datasets see where the random part begins


def preprocessing_settings(cfg: DictConfig) -> dict:
    """Everything the cached (deterministic) output depends on besides the input files."""
    d = cfg.data
    settings = {
        "version": PREPROCESSING_VERSION,
        "monai": monai.__version__,
        "format": "mrnet" if d.format == "synthetic" else d.format,
        "modalities": list(d.modalities),
        "image_size": d.image_size,
        "num_slices": d.num_slices,
        "min_slices": min_slices_for(cfg.model.slice_mode, cfg.model.slice_window),
        "stages": [type(t).__name__ for t in preprocessing(cfg).flatten().transforms],
        "cache_dtype": str(cache_dtype(cfg)).removeprefix("torch."),
    }
    if d.format == "nifti":
        settings.update(spacing=OmegaConf.to_container(d.spacing) if d.spacing else None, slice_axis=d.slice_axis)
    return settings


def cache_folder(cfg: DictConfig) -> Path:
    """`{data.cache_dir}/{format}-{hash of the preprocessing settings}`: other settings never reuse this cache."""
    settings = preprocessing_settings(cfg)
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    folder = Path(cfg.data.cache_dir) / f"{settings['format']}-{digest}"
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "settings.json").is_file():
        (folder / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    return folder


def _file_stamp(path: Path) -> list[tuple[str, int, int]]:
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    return [(p.name, (st := p.stat()).st_size, st.st_mtime_ns) for p in files]


def stamped_hash(item: dict, modalities: Sequence[str]) -> bytes:
    """Cache key of a study: its dict plus size and modification time of its files (a rewritten file is re-read)."""
    return pickle_hashing({**item, "_files": {m: _file_stamp(Path(item[m])) for m in modalities}})


def _screen(items: Sequence[dict], run: Callable[[int], object], on_error: OnError, desc: Optional[str] = None) -> list[dict]:
    """The items for which `run(index)` raises no `StudyError`; each failure goes to `on_error`.
    With `desc`, a progress bar (`run` does the work: preprocessing, filling the cache)."""
    good = []
    for index, item in enumerate(items if desc is None else progress(items, desc=desc, unit="studies")):
        _, failure = catch_study_error(run, index)
        if failure is None:
            good.append(item)
        else:
            on_error(failure)
    return good


class _CollectingCacheDataset(CacheDataset):
    """CacheDataset whose cache-filling threads never raise: failures are kept in `failures`
    (index -> error) for `build_dataset` to hand to `data.on_error` once the pool is done. An
    exception escaping MONAI's thread pool while other threads are still inside torch aborts the
    interpreter at exit."""

    def __init__(self, *args, desc: Optional[str] = None, **kwargs) -> None:
        self.failures: dict[int, Exception] = {}
        self.desc = desc
        super().__init__(*args, **kwargs)

    def _fill_cache(self, indices=None) -> list:
        """MONAI's cache fill (a thread pool over the studies) with our progress bar."""
        if self.cache_num <= 0:
            return []
        indices = list(range(self.cache_num)) if indices is None else list(indices)
        with ThreadPool(self.num_workers) as pool:
            if self.desc is None:
                return list(pool.imap(self._load_cache_item, indices))
            with progress(total=len(indices), desc=self.desc, unit="studies") as bar:
                cache = []
                for item in pool.imap(self._load_cache_item, indices):
                    cache.append(item)
                    bar.update()
            return cache

    def _load_cache_item(self, idx: int):
        try:
            return super()._load_cache_item(idx)
        except Exception as err:  # noqa: BLE001 - handed to data.on_error by build_dataset, in study order
            self.failures[idx] = err
            return None


def _raise_failure(failures: dict[int, Exception], index: int) -> None:
    if index in failures:
        raise failures[index]


def _is_cached(ds: PersistentDataset, item: dict) -> bool:
    return (ds.cache_dir / f"{ds.hash_func(item).decode('utf-8')}{ds.transform_hash}.pt").is_file()


def build_dataset(
    cfg: DictConfig, split: str, train: bool, manifest: Optional[list[dict]] = None, show_progress: bool = True
) -> Dataset:
    """MONAI dataset: deterministic preprocessing cached (on disk with `data.cache_dir`, else in memory).

    Items hold one (S, H, W) stack per modality in `cache_dtype(cfg)` (uint8 for MRNet under the
    default `data.cache_dtype: auto`); `collate.to_device` turns a batch into the model's float
    input. Training items are augmented here only where `augment.augment_where` says "loader". `show_progress`:
    a progress bar over the studies (`core.progress`; off for the few studies of a prediction).
    Every study is preprocessed here, so a bad file fails now with a `StudyError` naming study and
    file; under `data.on_error=skip` it is left out instead and listed in the dataset's `skipped`.
    """
    manifest = read_manifest(cfg, split) if manifest is None else manifest
    items, on_error = list(manifest), OnError(cfg.data.on_error)
    transform = pipeline(cfg, train and augment_where(cfg) == "loader")
    desc = f"build {split} dataset" if show_progress else None
    if cfg.data.cache_dir:
        make = partial(
            PersistentDataset,
            transform=transform,
            cache_dir=cache_folder(cfg),
            hash_func=partial(stamped_hash, modalities=list(cfg.data.modalities)),
        )
        ds = make(items)
        good = _screen(items, lambda i: _is_cached(ds, items[i]) or ds[i], on_error, desc=desc)
        if len(good) < len(items):
            ds = make(good)
    else:
        make = partial(_CollectingCacheDataset, transform=transform, cache_rate=1.0, num_workers=None, progress=False, desc=desc)
        ds = make(items)
        good = _screen(items, partial(_raise_failure, ds.failures), on_error)
        if len(good) < len(items):
            ds = make(good)
    ds.skipped = [*getattr(manifest, "skipped", []), *on_error.skipped]
    if len(ds) == 0:
        raise DataError(_no_usable_studies(cfg, split, ds.skipped))
    return ds


def _no_usable_studies(cfg: DictConfig, split: str, skipped: list[dict]) -> str:
    first = skipped[0] if skipped else None
    left = f"; data.on_error=skip left out {len(skipped)} (first: study {first['id']}: {first['reason']})" if first else ""
    if split == UNLABELLED:
        return f"data.unlabelled_root {cfg.data.unlabelled_root} has no usable studies{left}; fix or remove those studies"
    return (
        f"the {split} split of {cfg.data.root} has no usable studies{left}; check data.root, the label files and the split "
        f"settings (labels.csv's split/fold column, data.val_fraction, data.fold)"
    )


def build_unlabelled_dataset(cfg: DictConfig, train: bool, show_progress: bool = True) -> Dataset:
    """`build_dataset` for the studies of `data.unlabelled_root`: the same preprocessing, cache, screening
    (`data.on_error`) and, with `train`, augmentation; labels are placeholders (`read_unlabelled_manifest`).

    The dataset's `truth` is `read_truth`'s: the true label per study id where the folder is a synthetic
    generator's (it wrote `synthetic_truth.json`), else None. It is there only to score pseudo-labels;
    training never reads it.
    """
    manifest = read_unlabelled_manifest(cfg)  # first: it writes a synthetic set, truth included
    truth = read_truth(cfg.data.unlabelled_root, label_spec(cfg))
    ds = build_dataset(cfg, UNLABELLED, train, manifest=manifest, show_progress=show_progress)
    ds.truth = truth
    return ds


def skipped_studies(*sources: object) -> list[dict]:
    """The studies left out under `data.on_error=skip`, each once; sources: datasets, manifests, `OnError`s."""
    seen, out = set(), []
    for source in sources:
        for record in getattr(source, "skipped", []):
            key = (record["id"], record["file"], record["reason"])
            if key not in seen:
                seen.add(key)
                out.append(record)
    return out


def report_skipped(path: str | Path, *datasets: Dataset) -> list[dict]:
    """Writes the skipped studies to `path` (JSON) and warns with their count; nothing when none were skipped."""
    skipped = skipped_studies(*datasets)
    if skipped:
        Path(path).write_text(json.dumps(skipped, indent=2) + "\n")
        warnings.warn(f"data.on_error=skip left out {len(skipped)} studies; each is listed with its reason in {path}", stacklevel=2)
    return skipped


def build_loader(
    cfg: DictConfig, dataset: Dataset, train: bool, sampler: Optional[Sampler] = None, generator: Optional[torch.Generator] = None
) -> DataLoader:
    """MONAI's DataLoader (it reseeds random transforms per worker); `generator` fixes the data order."""
    workers = cfg.data.num_workers
    return DataLoader(
        dataset,
        batch_size=cfg.train.batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        num_workers=workers,
        # training workers start afresh every epoch, seeded from `generator` (reseeded per epoch by the trainer):
        # persistent ones would keep their first seeds, and a resumed run would not replay the augmentation
        persistent_workers=workers > 0 and not train,
        pin_memory=str(cfg.train.device).startswith("cuda"),
        collate_fn=partial(pad_collate, modalities=list(cfg.data.modalities)),
        generator=generator,
    )
