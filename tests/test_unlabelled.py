"""Studies without labels (`data.unlabelled_root`): both layouts, placeholder labels, the synthetic
generator's truth, and one clear line for each kind of bad folder."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from transmed.commands.synthetic import main as synthetic_main
from transmed.config import load_config
from transmed.core.errors import ConfigError, DataError, StudyError
from transmed.data import (
    build_dataset,
    build_unlabelled_dataset,
    generate_mrnet,
    generate_nifti,
    pad_collate,
    read_manifest,
    read_unlabelled_manifest,
)
from transmed.data.datasets import ensure_synthetic

KNEE = ["--num-train", "3", "--num-valid", "2", "--image-size", "16", "--min-slices", "3", "--max-slices", "4"]
PLANES = ["sagittal", "coronal", "axial"]


@pytest.fixture(scope="module")
def knee(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("unlabelled") / "knee"
    synthetic_main([str(root), *KNEE, "--unlabelled", "4"])
    return root


@pytest.fixture(scope="module")
def parotid(tmp_path_factory) -> Path:
    return generate_nifti(tmp_path_factory.mktemp("unlabelled") / "parotid", num_studies=6, num_unlabelled=3)


def knee_cfg(root: Path, unlabelled: Path, *extra: str):
    return load_config(None, ["data.format=mrnet", f"data.root={root}", f"data.unlabelled_root={unlabelled}", "data.image_size=16", *extra])


def nifti_cfg(root: Path, unlabelled: Path, *extra: str):
    settings = [f"data.root={root}", f"data.unlabelled_root={unlabelled}", "data.image_size=16", "data.modalities=[T1,T2]"]
    return load_config(None, ["data.format=nifti", *settings, *extra])


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_synthetic_command_writes_unlabelled_studies_and_their_truth(knee):
    folder = knee / "unlabelled"
    assert sorted(p.name for p in folder.iterdir()) == ["synthetic_truth.json", "train"]
    for plane in PLANES:
        assert sorted(p.name for p in (folder / "train" / plane).iterdir()) == ["0005.npy", "0006.npy", "0007.npy", "0008.npy"]
    truth = json.loads((folder / "synthetic_truth.json").read_text())
    assert "only to score pseudo-labels" in truth["note"]
    assert set(truth["labels"]) == {"0005", "0006", "0007", "0008"}
    assert all(set(label) == {"abnormal", "acl", "meniscus"} for label in truth["labels"].values())
    assert json.loads((knee / "SYNTHETIC").read_text())["num_unlabelled"] == 4


@pytest.mark.parametrize("fusion", [False, True])
def test_labelled_knee_studies_do_not_depend_on_the_unlabelled_count(tmp_path, fusion):
    args = dict(num_train=3, num_valid=2, image_size=16, min_slices=3, max_slices=4, seed=3, fusion=fusion)
    without = files_of(generate_mrnet(tmp_path / "without", **args))
    with_unlabelled = files_of(generate_mrnet(tmp_path / "with", **args, num_unlabelled=3))
    assert {k: v for k, v in with_unlabelled.items() if not k.startswith("unlabelled/") and k != "SYNTHETIC"} == {
        k: v for k, v in without.items() if k != "SYNTHETIC"
    }


def test_labelled_nifti_studies_do_not_depend_on_the_unlabelled_count(tmp_path, parotid):
    without = files_of(generate_nifti(tmp_path / "without", num_studies=6))
    assert {k: v for k, v in files_of(parotid).items() if not k.startswith("unlabelled/")} == without


def test_mrnet_layout_reads_with_nan_labels_and_the_truth(knee):
    cfg = knee_cfg(knee, knee / "unlabelled")
    manifest = read_unlabelled_manifest(cfg)
    assert [item["id"] for item in manifest] == ["0005", "0006", "0007", "0008"]
    assert all(item["label"].dtype == np.float32 and item["label"].shape == (3,) and np.isnan(item["label"]).all() for item in manifest)
    ds = build_unlabelled_dataset(cfg, train=True)
    assert len(ds) == 4 and ds.skipped == []
    batch = pad_collate([ds[0], ds[1]], PLANES)
    labelled = pad_collate([build_dataset(cfg, "valid", train=False)[0]], PLANES)
    assert batch["label"].shape == (2, 3) and batch["label"].dtype == labelled["label"].dtype and batch["label"].isnan().all()
    written = json.loads((knee / "unlabelled" / "synthetic_truth.json").read_text())["labels"]
    assert set(ds.truth) == set(written)
    for sid, label in written.items():
        assert ds.truth[sid].dtype == np.float32 and ds.truth[sid].tolist() == [label[t] for t in ("abnormal", "acl", "meniscus")]
    assert len(read_manifest(cfg, "train")) == 3  # the labelled set beside it is untouched


def test_nifti_layout_reads_with_minus_one_labels_and_the_truth(parotid):
    cfg = nifti_cfg(parotid, parotid / "unlabelled")
    assert len(read_manifest(cfg, "train")) + len(read_manifest(cfg, "valid")) == 6  # unlabelled/ is no patient of data.root
    manifest = read_unlabelled_manifest(cfg)
    assert [(item["id"], item["label"]) for item in manifest] == [("P006", -1), ("P007", -1), ("P008", -1)]
    ds = build_unlabelled_dataset(cfg, train=False)
    assert pad_collate([ds[0], ds[2]], ["T1", "T2"])["label"].tolist() == [-1, -1]
    written = json.loads((parotid / "unlabelled" / "synthetic_truth.json").read_text())["labels"]
    classes = ["adenoma", "malignant", "warthin"]
    assert ds.truth == {sid: classes.index(name) for sid, name in written.items()}


def test_nifti_labels_csv_listing_ids_only_picks_those_patients(parotid, tmp_path):
    folder = shutil.copytree(parotid / "unlabelled", tmp_path / "u")
    (folder / "synthetic_truth.json").unlink()
    (folder / "labels.csv").write_text("patient_id\nP007\n")
    cfg = nifti_cfg(parotid, folder)
    assert [item["id"] for item in read_unlabelled_manifest(cfg)] == ["P007"]
    (folder / "labels.csv").write_text("patient_id\nP007\nP099\n")
    with pytest.raises(StudyError, match="study P099 .* is listed in labels.csv but has no folder"):
        read_unlabelled_manifest(cfg)
    (folder / "labels.csv").write_text("patient_id,label\nP006,\nP008,\n")
    assert [item["id"] for item in read_unlabelled_manifest(cfg)] == ["P006", "P008"]
    assert build_unlabelled_dataset(cfg, train=False).truth is None


def test_a_broken_study_raises_or_is_skipped(knee, tmp_path):
    folder = shutil.copytree(knee / "unlabelled", tmp_path / "u")
    truncated = folder / "train" / "coronal" / "0006.npy"
    truncated.write_bytes(truncated.read_bytes()[:60])
    (folder / "train" / "axial" / "0007.npy").unlink()
    with pytest.raises(StudyError, match=r"study 0007 .*axial/0007\.npy.*missing axial file"):
        read_unlabelled_manifest(knee_cfg(knee, folder))
    ds = build_unlabelled_dataset(knee_cfg(knee, folder, "data.on_error=skip"), train=False)
    assert [ds[i]["id"] for i in range(len(ds))] == ["0005", "0008"]
    assert [(record["id"], Path(record["file"]).name) for record in ds.skipped] == [("0007", "0007.npy"), ("0006", "0006.npy")]


def test_bad_mrnet_folders_fail_with_one_line_naming_the_folder(knee, parotid, tmp_path):
    def fails(folder: Path, pattern: str) -> None:
        with pytest.raises(DataError, match=pattern) as err:
            read_unlabelled_manifest(knee_cfg(knee, folder))
        assert str(folder) in str(err.value) and "\n" not in str(err.value)

    fails(tmp_path / "absent", "data.unlabelled_root not found: .*laid out as train/{plane}/NNNN.npy")
    fails(knee, r"holds label files \(train-abnormal.csv, .*valid-meniscus.csv\), so it is labelled data")
    fails(parotid / "unlabelled", "holds patient folders of NIfTI files .* but data.format is mrnet")
    (tmp_path / "notes").mkdir()
    fails(tmp_path / "notes", r"has no train/ folder \(it holds nothing\)")
    two = shutil.copytree(knee / "unlabelled", tmp_path / "two")
    shutil.rmtree(two / "train" / "axial")
    fails(two, r"no folder .*train/axial for the plane 'axial' .* holds the planes \['coronal', 'sagittal'\]")
    empty = tmp_path / "empty"
    for plane in PLANES:
        (empty / "train" / plane).mkdir(parents=True)
    fails(empty, "holds no studies: no .npy files")


def test_bad_nifti_folders_fail_with_one_line_naming_the_folder(knee, parotid, tmp_path):
    def fails(folder: Path, pattern: str, *extra: str) -> None:
        with pytest.raises(DataError, match=pattern) as err:
            read_unlabelled_manifest(nifti_cfg(parotid, folder, *extra))
        assert str(folder) in str(err.value) and "\n" not in str(err.value)

    fails(tmp_path / "absent", "data.unlabelled_root not found: .*laid out as {patient_id}/{modality}.nii.gz")
    fails(parotid, r"holds labels: column 'label' of labels.csv has values \(line 2: ")
    fails(knee / "unlabelled", r"holds train/{plane} folders of .npy files \(the MRNet layout\) but data.format is nifti")
    flair = r"no patient folder in .* has a FLAIR file .* they hold \['T1.nii.gz', 'T2.nii.gz'\]"
    fails(parotid / "unlabelled", flair, "data.modalities=[T1,FLAIR]")
    (tmp_path / "empty").mkdir()
    fails(tmp_path / "empty", "holds no studies: no patient folders")


def test_unset_unlabelled_root_is_a_config_error(knee):
    cfg = load_config(None, ["data.format=mrnet", f"data.root={knee}"])
    with pytest.raises(ConfigError, match="data.unlabelled_root"):
        read_unlabelled_manifest(cfg)


def test_synthetic_format_records_num_unlabelled_and_writes_the_folder(tmp_path):
    root = tmp_path / "knee"
    settings = [f"data.root={root}", f"data.unlabelled_root={root / 'unlabelled'}", "data.image_size=16", "data.synthetic.num_train=2"]
    settings += ["data.synthetic.num_valid=1", "data.synthetic.image_size=16", "data.synthetic.min_slices=3", "data.synthetic.max_slices=4"]
    cfg = load_config(None, ["data.format=synthetic", *settings, "data.synthetic.num_unlabelled=2"])
    ds = build_unlabelled_dataset(cfg, train=False)
    assert sorted(ds.truth) == ["0003", "0004"] and len(ds) == 2
    with pytest.raises(DataError, match=r"num_unlabelled=2 \(config: 0\)"):
        ensure_synthetic(load_config(None, ["data.format=synthetic", *settings]))
    marker = json.loads((root / "SYNTHETIC").read_text())
    del marker["num_unlabelled"]  # a marker from before the key: 0 unlabelled studies
    (root / "SYNTHETIC").write_text(json.dumps(marker))
    ensure_synthetic(load_config(None, ["data.format=synthetic", *settings]))
    with pytest.raises(DataError, match="data.synthetic.num_unlabelled=N writes"):
        read_unlabelled_manifest(load_config(None, ["data.format=synthetic", *settings, f"data.unlabelled_root={tmp_path / 'no'}"]))


def test_synthetic_command_refuses_a_negative_count(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        synthetic_main([str(tmp_path / "x"), "--unlabelled", "-1"])
    assert exit_.value.code == 2 and "not a count" in capsys.readouterr().err and not (tmp_path / "x").exists()
