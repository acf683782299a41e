"""python -m transmed.predict: same probabilities as evaluate.py for the same study, named inputs, clear input errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from test_evaluation import save_untrained

from transmed.commands._common import run_main
from transmed.commands.predict import main, split_items
from transmed.core.errors import UsageError
from transmed.evaluation.evaluate import evaluate_checkpoint
from transmed.evaluation.prediction import predict_study

PLANES = ("sagittal", "coronal", "axial")


@pytest.fixture(scope="module")
def evaluated(mrnet_root, tmp_path_factory):
    """An (untrained) checkpoint and evaluate.py's predictions for the valid split."""
    checkpoint = save_untrained(mrnet_root, tmp_path_factory.mktemp("runs"), seed=3)
    out = evaluate_checkpoint(checkpoint, "valid", n_bootstrap=10)
    return checkpoint, pd.read_csv(out / "predictions.csv", dtype={"id": str}).set_index("id")


def inputs(root, sid: str) -> list[str]:
    return [str(root / "valid" / plane / f"{sid}.npy") for plane in PLANES]


def test_predict_equals_evaluate_for_the_same_study(evaluated, mrnet_root):
    checkpoint, frame = evaluated
    counts = {sid: [np.load(p).shape[0] for p in inputs(mrnet_root, sid)] for sid in frame.index}
    chosen = [sid for sid in frame.index if counts[sid] != counts[frame.index[0]]][:1] + [frame.index[0]]  # different slice counts
    for sid in chosen:
        result = predict_study(checkpoint, inputs(mrnet_root, sid))
        assert result["id"] == sid
        expected = frame.loc[sid, [f"prob/{t}" for t in ("abnormal", "acl", "meniscus")]].to_numpy(dtype=float)
        np.testing.assert_allclose(list(result["probabilities"].values()), expected, atol=1e-6, rtol=0)
        assert result["prediction"] == {t: p >= 0.5 for t, p in result["probabilities"].items()}


def test_command_prints_and_writes_json(evaluated, mrnet_root, tmp_path, capsys):
    checkpoint, frame = evaluated
    sid = frame.index[1]
    main(
        [
            "--checkpoint",
            str(checkpoint),
            *inputs(mrnet_root, sid),
            "--json-out",
            str(tmp_path / "p.json"),
            "--threshold",
            "0.0",
            "train.device=cpu",
        ]
    )
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "p.json").read_text())
    assert printed["prediction"] == {"abnormal": True, "acl": True, "meniscus": True} and printed["threshold"] == 0.0
    assert printed["probabilities"]["acl"] == pytest.approx(frame.loc[sid, "prob/acl"], abs=1e-6)


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "coronal input not found: "),
        ("count", "expected 3 inputs, one per modality in the order ['sagittal', 'coronal', 'axial']; got 2"),
        ("unreadable", "study 0024 (file "),
    ],
)
def test_bad_inputs_fail_with_one_clear_line(evaluated, mrnet_root, tmp_path, capsys, case, message):
    checkpoint, _ = evaluated
    files = inputs(mrnet_root, "0024")
    if case == "missing":
        files[1] = str(tmp_path / "nope.npy")
    elif case == "count":
        files = files[:2]
    else:
        files[0] = str(tmp_path / "0024.npy")
        (tmp_path / "0024.npy").write_text("not an array")
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: main(["--checkpoint", str(checkpoint), *files]))
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    if case == "unreadable":
        assert "cannot read sagittal file" in err


def test_overrides_are_told_apart_from_inputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a=b.npy").write_bytes(b"")  # an existing file is an input, whatever its name
    items = ["x.npy", "train.device=cpu", "a=b.npy", "/d/k=v", "seed=1"]
    assert split_items(items) == (["x.npy", "a=b.npy", "/d/k=v"], {}, ["train.device=cpu", "seed=1"])
    assert split_items(["T2=b.nii", "train.device=cpu", "T1=a.nii"]) == ([], {"T2": "b.nii", "T1": "a.nii"}, ["train.device=cpu"])


def test_named_inputs_in_any_order_and_the_json_says_which_is_which(evaluated, mrnet_root, capsys):
    checkpoint, frame = evaluated
    sid = frame.index[2]
    paths = dict(zip(PLANES, inputs(mrnet_root, sid)))
    main(["--checkpoint", str(checkpoint), *(f"{plane}={paths[plane]}" for plane in reversed(PLANES))])
    printed = json.loads(capsys.readouterr().out)
    assert printed["inputs"] == paths and list(printed["inputs"]) == list(PLANES)
    assert printed["probabilities"]["acl"] == pytest.approx(frame.loc[sid, "prob/acl"], abs=1e-6)


@pytest.mark.parametrize(
    "case, message",
    [
        ("unknown", "unknown modality 'T2' in T2=PATH; this model takes sagittal, coronal, axial"),
        ("missing", "no input for modality 'axial'; give one per modality: sagittal=PATH coronal=PATH axial=PATH"),
        ("twice", "modality 'coronal' is given twice"),
        ("mixed", "give every input by name"),
    ],
)
def test_bad_names_fail_with_one_line_naming_them(evaluated, mrnet_root, capsys, case, message):
    checkpoint, _ = evaluated
    paths = dict(zip(PLANES, inputs(mrnet_root, "0024")))
    items = [f"{plane}={path}" for plane, path in paths.items()]
    if case == "unknown":
        items[2] = f"T2={paths['axial']}"
    elif case == "missing":
        items = items[:2]
    elif case == "twice":
        items.append(f"coronal={paths['coronal']}")
    else:
        items[2] = paths["axial"]
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: main(["--checkpoint", str(checkpoint), *items]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err, err


def test_default_study_id_comes_from_the_file_or_its_folder(tiny_cfg, tmp_path):
    from transmed.evaluation.prediction import study_item

    cfg = tiny_cfg(**{"data.modalities": "[T1,T2]"})
    (tmp_path / "P001" / "T2").mkdir(parents=True)  # a DICOM folder
    (tmp_path / "P001" / "T1.nii.gz").write_bytes(b"")
    (tmp_path / "0200.npy").write_bytes(b"")
    assert study_item(cfg, [tmp_path / "P001" / "T1.nii.gz", tmp_path / "P001" / "T2"])["id"] == "P001"
    assert study_item(cfg, [tmp_path / "0200.npy", tmp_path / "P001" / "T2"])["id"] == "0200"
    assert study_item(cfg, [tmp_path / "0200.npy", tmp_path / "P001" / "T2"], "x")["id"] == "x"
    with pytest.raises(UsageError, match="P001/T2 is given as T1 but is named after T2"):
        study_item(cfg, [tmp_path / "P001" / "T2", tmp_path / "P001" / "T1.nii.gz"])
