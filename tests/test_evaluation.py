"""Evaluation around evaluate.py: the W&B eval run, compare (DeLong), explain (attention rollout, Grad-CAM)."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_BACKBONE, tiny_overrides

from transmed.config import load_config, to_dict
from transmed.core.checkpoint import save_checkpoint
from transmed.core.errors import DataError
from transmed.core.labels import LabelSpec, Predictions
from transmed.data import label_spec
from transmed.evaluation import attribution as X
from transmed.evaluation import comparison as C
from transmed.evaluation.evaluate import evaluate_checkpoint, flat_metrics, log_evaluation_run, predictions_frame, uncalibrated
from transmed.evaluation.metrics import compute_metrics, delong_test, holm_adjust, to_jsonable
from transmed.evaluation.prediction import study_probabilities
from transmed.models import TransMed, build_model
from transmed.models.loading import load_trained

TASKS = ("abnormal", "acl", "meniscus")


def save_untrained(root: Path, out: Path, seed: int = 0, **extra: str) -> Path:
    """A checkpoint of a freshly initialised tiny model (no training needed to test the plumbing)."""
    cfg = load_config(None, tiny_overrides(root, out, **extra))
    torch.manual_seed(seed)
    model = build_model(cfg, len(cfg.data.tasks), pretrained=False)
    path = out / cfg.run_name / "checkpoints" / "best.pt"
    save_checkpoint(path, model=model.state_dict(), config=to_dict(cfg), label_spec=label_spec(cfg).to_dict(), epoch=0)
    return path


@pytest.fixture(scope="module")
def checkpoint(mrnet_root, tmp_path_factory) -> Path:
    return save_untrained(mrnet_root, tmp_path_factory.mktemp("runs"), **{"wandb.group": "grp"})


# --- W&B evaluation run ---------------------------------------------------------------------------


class FakeWandb(types.ModuleType):
    """Records what evaluate sends to W&B."""

    def __init__(self) -> None:
        super().__init__("wandb")
        self.init_kwargs, self.logged, self.finished = None, {}, False

    def init(self, **kwargs):
        self.init_kwargs = kwargs
        return types.SimpleNamespace(log=self.logged.update, finish=lambda: setattr(self, "finished", True))

    @staticmethod
    def Image(path):  # noqa: N802 - wandb's name
        return ("image", Path(path).name)


def test_eval_run_goes_to_the_training_group(checkpoint, tmp_path, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    out = evaluate_checkpoint(checkpoint, "valid", tmp_path / "eval", overrides=["wandb.mode=offline"], n_bootstrap=20)
    kwargs = fake.init_kwargs
    assert kwargs["job_type"] == "eval" and kwargs["group"] == "grp" and kwargs["mode"] == "offline"
    assert kwargs["name"] == "tiny-eval-valid" and kwargs["dir"] == str(out)
    assert kwargs["config"]["eval"]["split"] == "valid" and kwargs["config"]["model"]["backbone"] == TINY_BACKBONE
    metrics = json.loads((out / "metrics.json").read_text())
    assert fake.logged["abnormal/auc"] == pytest.approx(metrics["tasks"]["abnormal"]["auc"]["value"])
    assert fake.logged["overall/auc/ci_low"] == pytest.approx(metrics["overall"]["auc"]["ci"][0])
    assert fake.logged["n"] == 12
    assert {k: v for k, v in fake.logged.items() if k.startswith("plots/")} == {
        f"plots/{name}": ("image", f"{name}.png") for name in ("calibration", "confusion", "pr", "roc")
    }
    assert fake.finished


def _metrics_and_plot(out: Path) -> dict:
    out.mkdir(parents=True)
    plt.imsave(out / "roc.png", np.zeros((4, 4)))
    return {
        "tasks": {"acl": {"auc": {"value": 0.75, "ci": [0.5, 0.9]}}},
        "overall": {},
        "n": 3,
        "split": "test",
        "checkpoint": "c.pt",
        "epoch": 1,
    }


def test_eval_run_offline_files_land_in_the_eval_folder(tiny_cfg, tmp_path):
    log_evaluation_run(tmp_path / "eval", tiny_cfg(**{"wandb.mode": "offline"}), _metrics_and_plot(tmp_path / "eval"))
    (run,) = (tmp_path / "eval" / "wandb").glob("offline-run-*")
    assert [p.name.split("_")[0] for p in (run / "files" / "media" / "images" / "plots").glob("*.png")] == ["roc"]


def test_no_eval_run_when_disabled(tiny_cfg, tmp_path, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    log_evaluation_run(tmp_path / "eval", tiny_cfg(), _metrics_and_plot(tmp_path / "eval"))  # tiny configs say disabled
    assert fake.init_kwargs is None and not (tmp_path / "eval" / "wandb").exists()


def test_flat_metrics_sections_and_youden_prefix():
    block = {"tasks": {"a": {"auc": {"value": 0.8, "ci": [0.7, 0.9]}}}, "overall": {"f1": {"value": float("nan"), "ci": [0.1, 0.2]}}}
    flat = flat_metrics({**block, "youden": block})
    assert flat == {
        "a/auc": 0.8,
        "a/auc/ci_low": 0.7,
        "a/auc/ci_high": 0.9,
        "overall/f1/ci_low": 0.1,
        "overall/f1/ci_high": 0.2,
        "youden/a/auc": 0.8,
        "youden/a/auc/ci_low": 0.7,
        "youden/a/auc/ci_high": 0.9,
        "youden/overall/f1/ci_low": 0.1,
        "youden/overall/f1/ci_high": 0.2,
    }


# --- compare ---------------------------------------------------------------------------------------


def write_evaluation(folder: Path, ids: list[str], probs: np.ndarray, labels: np.ndarray, kind: str = "multilabel", names=TASKS) -> Path:
    """An evaluate.py-style folder (metrics.json, predictions.csv) from arrays."""
    folder.mkdir(parents=True)
    metrics = compute_metrics(probs, labels, list(names), kind, n_bootstrap=50)
    metrics.update(split="valid")
    (folder / "metrics.json").write_text(json.dumps(to_jsonable(metrics)))
    spec = types.SimpleNamespace(kind=kind, names=tuple(names), num_outputs=len(names))
    predictions_frame(Predictions(ids=ids, logits=np.log(probs), probs=probs, labels=labels), spec).to_csv(
        folder / "predictions.csv", index=False
    )
    return folder


def test_compare_table_and_delong_on_shared_studies(tmp_path, capsys):
    rng = np.random.default_rng(0)
    n = 80
    labels = (rng.random((n, 3)) < 0.4).astype(int)
    good = 1 / (1 + np.exp(-(3 * labels + rng.normal(size=(n, 3)))))
    weak = 1 / (1 + np.exp(-(0.5 * labels + rng.normal(size=(n, 3)))))
    ids = [f"{i:04d}" for i in range(n)]
    a = write_evaluation(tmp_path / "runA" / "eval-valid", ids, good, labels)
    order = rng.permutation(n)  # same studies, another row order
    write_evaluation(tmp_path / "runB" / "eval-valid", [ids[i] for i in order], weak[order], labels[order])
    write_evaluation(tmp_path / "other", ids[:40], good[:40], labels[:40])

    result = C.compare([a, tmp_path / "runB", tmp_path / "other"])  # a run folder stands for its eval-* folders
    table = result["table"]
    assert list(table["evaluation"]) == ["runA/eval-valid", "runB/eval-valid", f"{tmp_path.name}/other"]
    assert list(table["n"]) == [80, 80, 40]
    assert table.loc[0, "auc/acl"].startswith(f"{json.loads((a / 'metrics.json').read_text())['tasks']['acl']['auc']['value']:.3f} [")
    tests = pd.DataFrame(result["tests"])
    assert len(tests) == 3 and set(tests["task"]) == set(TASKS)  # only the pair on the same studies
    for j, task in enumerate(TASKS):
        expected = delong_test(labels[:, j], good[:, j], weak[:, j])
        row = tests[tests["task"] == task].iloc[0]
        assert row["diff"] == pytest.approx(expected["diff"]) and row["p_value"] == pytest.approx(expected["p_value"])
        assert row["diff"] > 0 and row["p_value"] < 0.05
    assert tests["p_holm"].tolist() == pytest.approx(holm_adjust(tests["p_value"].tolist()))
    assert (tests["p_holm"] >= tests["p_value"]).all()
    assert len(result["skipped"]) == 2 and all("not on the same studies" in s for s in result["skipped"])

    from transmed.commands.compare import main

    main([str(tmp_path / "runA"), str(tmp_path / "runB"), "--json-out", str(tmp_path / "cmp.json")])
    printed = capsys.readouterr().out
    assert "Paired DeLong tests" in printed and "runA/eval-valid" in printed
    saved = json.loads((tmp_path / "cmp.json").read_text())
    assert len(saved["table"]) == 2 and len(saved["tests"]) == 3


def test_compare_multiclass_and_label_mismatch(tmp_path):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 60)
    probs = rng.dirichlet(np.ones(3), 60)
    names = ("pa", "wt", "mal")
    ids = [str(i) for i in range(60)]
    a = write_evaluation(tmp_path / "a", ids, probs, labels, "multiclass", names)
    b = write_evaluation(tmp_path / "b", ids, probs[::-1].copy(), labels, "multiclass", names)
    flipped = labels.copy()
    flipped[0] = (flipped[0] + 1) % 3
    c = write_evaluation(tmp_path / "c", ids, probs, flipped, "multiclass", names)
    result = C.compare([a, b, c])
    assert "auc" in result["table"].columns  # macro one-vs-rest for multiclass, as for multilabel tasks
    assert len(result["tests"]) == 3 and {(t["a"], t["b"]) for t in result["tests"]} == {(f"{tmp_path.name}/a", f"{tmp_path.name}/b")}
    assert sum("disagree on the labels" in s for s in result["skipped"]) == 2


def test_compare_ranks_by_the_logits_where_calibrated_probabilities_saturate(tmp_path):
    rng = np.random.default_rng(2)
    n = 60
    labels = (rng.random((n, 3)) < 0.5).astype(int)
    logits = 20 + 4 * labels + rng.normal(size=(n, 3))  # all above 17: float32 sigmoid gives 1.0 to every study
    ids = [str(i) for i in range(n)]
    folders = []
    for name, shift in (("a", 0.0), ("b", 0.5)):
        folder = write_evaluation(tmp_path / name, ids, 1 / (1 + np.exp(-(logits + shift * rng.normal(size=(n, 3))))), labels)
        frame = pd.read_csv(folder / "predictions.csv", dtype={"id": str})
        for task in TASKS:
            frame[f"logit/{task}"] = np.log(frame[f"prob/{task}"])  # write_evaluation's logits: log p, p's order
            frame[f"prob/{task}"] = np.float32(1.0)  # what a small temperature leaves of them in float32
        frame.to_csv(folder / "predictions.csv", index=False)
        folders.append(folder)
    tests = pd.DataFrame(C.compare(folders)["tests"])
    for task in TASKS:
        a, b = (pd.read_csv(f / "predictions.csv")[f"logit/{task}"].to_numpy() for f in folders)
        assert tests[tests["task"] == task].iloc[0]["diff"] == pytest.approx(delong_test(labels[:, TASKS.index(task)], a, b)["diff"])
    assert (tests["diff"] != 0).any()  # from the tied probabilities every difference would be 0


def test_uncalibrated_probabilities_keep_the_order_of_large_logits():
    spec = LabelSpec(kind="multilabel", names=("a",), temperature=(0.05,))
    preds = Predictions(ids=["0", "1"], logits=np.array([[18.0], [20.0]], dtype=np.float32), probs=np.ones((2, 1), np.float32), labels=None)
    raw = uncalibrated(preds, spec)
    assert raw.dtype == np.float64 and raw[0, 0] < raw[1, 0] < 1.0


def test_compare_names_a_folder_without_evaluations(tmp_path):
    with pytest.raises(DataError, match="run evaluate.py"):
        C.compare([tmp_path])


# --- explain ---------------------------------------------------------------------------------------


def test_attention_rollout_matches_hand_computation():
    torch.manual_seed(0)
    attn = torch.rand(2, 1, 3, 5, 5)
    key_mask = torch.tensor([[True, True, True, True, False]])
    attn = attn.masked_fill(~key_mask[:, None, None, :], 0)
    attn = attn / attn.sum(-1, keepdim=True)
    a = [(layer.mean(dim=1)[0] + torch.eye(5)) / 2 for layer in attn]  # rows of attention and identity each sum to 1
    expected = (a[1] @ a[0])[0, 1:] * key_mask[0, 1:]
    out = X.attention_rollout(attn, key_mask)
    torch.testing.assert_close(out[0], expected / expected.sum())
    assert out[0, -1] == 0 and out.sum() == pytest.approx(1.0)


def test_slice_index_and_to_slices_follow_the_model_grouping():
    model = TransMed(num_modalities=2, num_outputs=1, backbone=TINY_BACKBONE, depth=1, slice_stride=2)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1, 7:] = False  # 7 slices: ends on a group boundary
    index = X.slice_index(model, mask)
    assert index[0].tolist() == [[0, 1, 2], [2, 3, 4], [4, 5, 6], [6, 7, 7]]  # 8 slices: a tail group repeats slice 7
    assert index[1, :3].tolist() == [[0, 1, 2], [2, 3, 4], [4, 5, 6]]
    values = torch.tensor([[3.0, 6.0, 9.0, 12.0], [1.0, 2.0, 4.0, 8.0]])
    group_mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    shared = X.to_slices(values, index, group_mask, 8, mean=False)
    assert shared[0].tolist() == [1, 1, 3, 2, 5, 3, 7, 8]  # each group's value split over its 3 channels
    assert shared[0].sum() == pytest.approx(values[0].sum()) and shared[1].sum() == pytest.approx(3.0)  # padded groups add nothing
    averaged = X.to_slices(values, index, group_mask, 8, mean=True)
    assert averaged[0].tolist() == [3, 3, 4.5, 6, 7.5, 9, 10.5, 12]
    replicate = TransMed(num_modalities=1, num_outputs=1, backbone=TINY_BACKBONE, depth=1, slice_mode="replicate", slice_stride=2)
    assert X.slice_index(replicate, torch.ones(1, 5, dtype=torch.bool))[0].tolist() == [[0, 0, 0], [2, 2, 2], [4, 4, 4]]


def test_grad_cam_covers_real_groups_only():
    torch.manual_seed(0)
    model = TransMed(num_modalities=2, num_outputs=2, backbone=TINY_BACKBONE, depth=1).eval()
    x = torch.rand(1, 2, 6, 32, 32)
    mask = torch.ones(1, 2, 6, dtype=torch.bool)
    mask[0, 1, 4:] = False  # second modality: 4 slices -> 2 real groups of 4
    cams = X.grad_cam(model, x, mask, [0, 1])
    assert cams.shape == (2, 2, 4, 32, 32)
    assert (cams[:, 1, 2:] == 0).all() and (cams >= 0).all() and cams[:, 0].sum() > 0


def test_explain_writes_figures_and_consistent_numbers(checkpoint, mrnet_root, tmp_path):
    from transmed.commands.explain import main

    main(["--checkpoint", str(checkpoint), "--study", "0024", "--out", str(tmp_path / "x"), "--target", "acl"])
    out = tmp_path / "x"
    assert {p.name for p in out.iterdir()} == {"attention.png", "gradcam-acl.png", "explain.json"}
    report = json.loads((out / "explain.json").read_text())
    assert report["split"] == "valid" and set(report["probabilities"]) == set(TASKS)
    assert sum(v["share"] for v in report["attention"].values()) == pytest.approx(1.0, abs=1e-5)
    for modality, values in report["attention"].items():
        slices = np.load(mrnet_root / "valid" / modality / "0024.npy").shape[0]
        assert len(values["slices"]) == slices == len(report["gradcam"]["acl"][modality])
        assert values["share"] == pytest.approx(sum(values["slices"]), abs=1e-6)
    with pytest.raises(DataError, match="not in the"):
        X.explain_study(checkpoint, "9999", out=tmp_path / "y")


def test_explain_honours_drop_modalities(checkpoint, tmp_path):
    """A modality `data.drop_modalities` hides from the model gets no attention and no Grad-CAM."""
    out = X.explain_study(checkpoint, "0024", out=tmp_path / "x", overrides=["data.drop_modalities=[coronal]"], targets=["acl"])
    report = json.loads((out / "explain.json").read_text())
    assert report["dropped"] == ["coronal"]
    assert report["attention"]["coronal"] == {"share": 0.0, "slices": []} and report["gradcam"]["acl"]["coronal"] == []
    assert sum(v["share"] for v in report["attention"].values()) == pytest.approx(1.0, abs=1e-5)
    model, cfg, spec, _ = load_trained(checkpoint, ["data.drop_modalities=[coronal]"])
    expected = study_probabilities(model, cfg, spec, X.find_study(cfg, "0024")[0])
    assert report["probabilities"] == pytest.approx(expected, abs=1e-6)
