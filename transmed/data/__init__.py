"""Data: readers for the on-disk formats, MONAI pipelines, splits, collate, synthetic data."""

from .collate import pad_collate
from .datasets import (
    LabelSpec,
    Manifest,
    build_dataset,
    build_loader,
    label_spec,
    pipeline,
    preprocessing,
    read_manifest,
    report_skipped,
    skipped_studies,
)
from .errors import DataError, OnError, StudyError
from .synthetic import generate_mrnet, generate_nifti

__all__ = [
    "DataError",
    "LabelSpec",
    "Manifest",
    "OnError",
    "StudyError",
    "build_dataset",
    "build_loader",
    "generate_mrnet",
    "generate_nifti",
    "label_spec",
    "pad_collate",
    "pipeline",
    "preprocessing",
    "read_manifest",
    "report_skipped",
    "skipped_studies",
]
