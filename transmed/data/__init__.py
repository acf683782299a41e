"""Data: readers for the on-disk formats, MONAI pipelines, splits, collate, synthetic data."""

from ..core.errors import DataError, StudyError
from ..core.labels import LabelSpec
from .collate import pad_collate
from .datasets import (
    Manifest,
    build_dataset,
    build_loader,
    build_unlabelled_dataset,
    label_kind,
    label_spec,
    pipeline,
    preprocessing,
    read_manifest,
    read_truth,
    read_unlabelled_manifest,
    report_skipped,
    skipped_studies,
)
from .screening import OnError
from .synthesis import generate_mrnet, generate_nifti

__all__ = [
    "DataError",
    "LabelSpec",
    "Manifest",
    "OnError",
    "StudyError",
    "build_dataset",
    "build_loader",
    "build_unlabelled_dataset",
    "generate_mrnet",
    "generate_nifti",
    "label_kind",
    "label_spec",
    "pad_collate",
    "pipeline",
    "preprocessing",
    "read_manifest",
    "read_truth",
    "read_unlabelled_manifest",
    "report_skipped",
    "skipped_studies",
]
