"""`transmed synthetic --fusion`: labels no single modality gives, and the bound written beside them."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from transmed.commands.synthetic import main as synthetic_main
from transmed.data.synthesis import (
    BOUND_FILE,
    FUSION_CLASSES,
    FUSION_PLANES,
    FUSION_SIGNAL,
    SEQUENCES,
    TASKS,
    fusion_volumes,
    parotid_phantom,
    sequence_grids,
    world_points,
)


def _macro_auc(scores: np.ndarray, labels: list[str]) -> float:
    """Macro one-vs-rest AUC as `point_aucs` computes it."""
    y = np.array([FUSION_CLASSES.index(name) for name in labels])
    return float(np.mean([roc_auc_score(y == k, scores[:, k]) for k in range(len(FUSION_CLASSES))]))


def test_knee_fusion_plane_is_blind_to_the_other_planes_labels():
    """Each plane's volume is identical whatever the labels of the tasks it does not show; its own task changes it."""
    for task, plane in FUSION_PLANES.items():
        negative = dict.fromkeys(TASKS, 0)
        base = fusion_volumes(np.random.default_rng(1), negative)
        flipped = fusion_volumes(np.random.default_rng(1), {**negative, task: 1})
        for other in FUSION_PLANES.values():
            same = np.array_equal(base[other], flipped[other])
            assert same == (other != plane), (task, other)


def test_parotid_fusion_types_pair_up_on_one_sequence_only():
    """Same draw, two types: the sequence on which they share a level is identical, the other is not."""
    shape, affine = sequence_grids(np.random.default_rng(0))["T1"]
    points = world_points(shape, affine)
    signals = {name: parotid_phantom(np.random.default_rng(3), name, fusion=True) for name in FUSION_CLASSES}
    for k, sequence in enumerate(SEQUENCES):
        for a in FUSION_CLASSES:
            for b in FUSION_CLASSES:
                same = np.array_equal(signals[a](points, sequence), signals[b](points, sequence))
                assert same == (FUSION_SIGNAL[a][k] == FUSION_SIGNAL[b][k]), (sequence, a, b)
    # one sequence alone cannot tell the four apart: each level is shared by exactly two types
    for k in range(len(SEQUENCES)):
        levels = [FUSION_SIGNAL[name][k] for name in FUSION_CLASSES]
        assert sorted(levels.count(v) for v in set(levels)) == [2, 2]


def test_synthetic_fusion_nifti_writes_four_types_and_the_bound(tmp_path):
    root = tmp_path / "parotid"
    synthetic_main([str(root), "--format", "nifti", "--fusion", "--num-train", "10", "--with-split", "--seed", "4"])
    rows = list(csv.DictReader(open(root / "labels.csv")))
    assert {row["label"] for row in rows} == set(FUSION_CLASSES)
    bound = json.loads((root / BOUND_FILE).read_text())
    assert bound["population"]["best_single_modality"] == pytest.approx(5 / 6)
    for split, entry in bound["splits"].items():
        labels = [row["label"] for row in rows if split == "all" or row["split"] == split]
        if len(set(labels)) < len(FUSION_CLASSES):
            continue
        for k, sequence in enumerate(SEQUENCES):
            level = np.array([FUSION_SIGNAL[name][k] for name in labels])
            # the best scorer on one sequence: 1/2 for the two types with the study's level, 0 for the others
            oracle = np.array([[0.5 * (FUSION_SIGNAL[c][k] == v) for c in FUSION_CLASSES] for v in level])
            assert entry["per_modality"][sequence]["macro"] == pytest.approx(_macro_auc(oracle, labels))
        # both sequences together name the type: the bound is a single sequence's ceiling, not fusion's
        assert entry["best_single_modality"] < 1.0


def test_synthetic_fusion_mrnet_writes_the_bound_and_marks_the_set(tmp_path):
    root = tmp_path / "knee"
    args = ["--fusion", "--num-train", "12", "--num-valid", "6", "--image-size", "16", "--min-slices", "3", "--max-slices", "4"]
    synthetic_main([str(root), *args, "--seed", "2"])
    bound = json.loads((root / BOUND_FILE).read_text())
    assert bound["population"]["best_single_modality"] == pytest.approx(2 / 3)
    assert set(bound["splits"]) == {"train", "valid"}
    for plane, aucs in bound["population"]["per_modality"].items():
        assert [task for task in TASKS if aucs[task] == 1.0] == [t for t, p in FUSION_PLANES.items() if p == plane]
    assert json.loads((root / "SYNTHETIC").read_text())["fusion"] is True
    assert np.load(root / "valid" / "axial" / "0012.npy").shape[1:] == (16, 16)
