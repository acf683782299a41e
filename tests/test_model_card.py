"""MODEL_CARD.md: written by evaluate next to metrics.json, with the same numbers, in the Hugging Face layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_overrides
from huggingface_hub import ModelCard

from transmed.config import load_config, to_dict
from transmed.core.checkpoint import save_checkpoint
from transmed.core.labels import LabelSpec
from transmed.data import label_spec, read_manifest
from transmed.evaluation.evaluate import evaluate_checkpoint
from transmed.evaluation.metrics import compute_metrics, to_jsonable
from transmed.evaluation.model_card import model_card
from transmed.models import build_model

UAP = {
    "fooling_rate": 0.25,
    "random_fooling_rate": 0.0833,
    "auc": {"clean": 0.61, "uap": 0.42, "random": 0.6},
    "settings": {"norm": "linf", "zeta": 0.02, "achieved_zeta": [0.0125, 0.01], "split": "valid", "n_eval": 12, "crafting_rate": 0.5},
}


@pytest.fixture(scope="module")
def evaluation(mrnet_root, tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    cfg = load_config(None, tiny_overrides(mrnet_root, runs, **{"model.stem_stage": "1"}))
    torch.manual_seed(0)
    model = build_model(cfg, len(cfg.data.tasks), pretrained=False)
    checkpoint = runs / "tiny" / "checkpoints" / "best.pt"
    save_checkpoint(checkpoint, model=model.state_dict(), config=to_dict(cfg), label_spec=label_spec(cfg).to_dict(), epoch=2)
    (runs / "tiny" / "uap-linf-zeta0.02").mkdir()
    (runs / "tiny" / "uap-linf-zeta0.02" / "uap.json").write_text(json.dumps(UAP))
    return evaluate_checkpoint(checkpoint, "valid", n_bootstrap=50)


def cell(entry: dict) -> str:
    return f"{entry['value']:.3f} [{entry['ci'][0]:.3f}, {entry['ci'][1]:.3f}]"


def test_card_numbers_equal_metrics_json(evaluation):
    metrics = json.loads((evaluation / "metrics.json").read_text())
    path = evaluation / "MODEL_CARD.md"
    card = ModelCard.load(path)  # the Hugging Face parser reads the front matter
    assert card.data.library_name == "transmed"
    results = {r.metric_name: r for r in card.data.eval_results}
    expected = {
        f"{section} {name}": entry["value"]
        for section, values in [*metrics["tasks"].items(), ("overall", metrics["overall"])]
        for name, entry in values.items()
        if entry["value"] is not None
    }
    assert len(results) == len(expected)
    for key, value in expected.items():
        section, metric = key.split(" ", 1)
        found = results[f"{section} {card_metric_name(metric)}"]
        assert found.metric_value == value and found.metric_type == metric and found.dataset_split == "valid"
    text = path.read_text()
    for task, values in metrics["tasks"].items():
        for entry in values.values():
            if entry["value"] is not None:
                assert cell(entry) in text
    assert cell(metrics["overall"]["auc"]) in text
    assert f"Split `valid`: {metrics['n']} studies" in text and "50 resamples" in text
    assert "abnormal 0.5, acl 0.5, meniscus 0.5" in text  # the thresholds used
    assert "calibration error (ECE)" in text and "10 equal-width" in text


def card_metric_name(metric: str) -> str:
    from transmed.evaluation.model_card import METRIC_NAMES

    return METRIC_NAMES.get(metric, metric)


def test_card_has_data_splits_robustness_and_intended_use(evaluation, mrnet_root):
    text = (evaluation / "MODEL_CARD.md").read_text()
    cfg = load_config(None, tiny_overrides(mrnet_root, evaluation))
    for split, n in (("train", 24), ("valid", 12)):
        labels = np.array([item["label"] for item in read_manifest(cfg, split)])
        assert len(labels) == n
        row = f"| {split} | {n} | " + " | ".join(f"{100 * p:.1f}%" for p in labels.mean(axis=0)) + " |"
        assert row in text
    assert "| uap-linf-zeta0.02 | linf | 0.02 | 0.0125 | valid | 12 | 0.500 | 0.250 | 0.083 | 0.610 | 0.420 | 0.600 |" in text
    assert "not for diagnosis" in text and "## Limitations" in text and "## Intended use" in text
    assert "test_resnet" in text and "parameters" in text and "random initialisation" in text


def test_multiclass_card_uses_argmax_and_macro_overall(mrnet_root, tmp_path):
    cfg = load_config(None, tiny_overrides(mrnet_root, tmp_path))
    spec = LabelSpec("multiclass", ("benign", "malignant", "other"))
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=30)
    labels = np.arange(30) % 3
    metrics = to_jsonable({**compute_metrics(probs, labels, list(spec.names), spec.kind, n_bootstrap=20), "split": "test"})
    text = model_card(cfg, spec, metrics=metrics, splits={"test": {"studies": 30, "prevalence": {n: 1 / 3 for n in spec.names}}})
    assert "argmax" in text and cell(metrics["overall"]["auc_micro"]) in text and "| test | 30 | 33.3% | 33.3% | 33.3% |" in text
    values = {r.metric_name: r.metric_value for r in ModelCard(text).data.eval_results}
    assert values["overall AUC (micro)"] == metrics["overall"]["auc_micro"]["value"]


def test_card_says_which_bootstrap_ran_and_carries_a_license(evaluation, mrnet_root, tmp_path):
    text = (evaluation / "MODEL_CARD.md").read_text()  # three knee tasks: one unstratified resample of studies
    assert "unstratified bootstrap of studies" in text and "stratified bootstrap" not in text.replace("unstratified", "")
    assert ModelCard(text).data.license == "mit"
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert 'license = "MIT"' in pyproject and "## License" in text and "repository" in text
    cfg = load_config(None, tiny_overrides(mrnet_root, tmp_path))
    for spec, words in (
        (LabelSpec("multiclass", ("benign", "malignant")), "stratified on the class"),
        (LabelSpec("multilabel", ("abnormal",)), "stratified on the label"),
    ):
        labels = np.arange(20) % 2 if spec.kind == "multiclass" else (np.arange(20) % 2)[:, None]
        probs = np.random.default_rng(0).random((20, spec.num_outputs))
        metrics = to_jsonable({**compute_metrics(probs, labels, list(spec.names), spec.kind, n_bootstrap=10), "split": "test"})
        assert words in model_card(cfg, spec, metrics=metrics)


def test_card_warns_when_the_split_also_chose_the_epoch(evaluation, mrnet_root, tmp_path):
    warning = "the split that chose this checkpoint's epoch"
    text = (evaluation / "MODEL_CARD.md").read_text()  # evaluated on valid
    assert f"> **Warning: these results are on `valid`, {warning}**" in text
    assert text.index("Warning") < text.index("## Evaluation results")  # at the top, not in a footnote
    cfg = load_config(None, tiny_overrides(mrnet_root, tmp_path))
    spec = LabelSpec("multilabel", ("abnormal",))
    labels = (np.arange(20) % 2)[:, None]
    metrics = to_jsonable({**compute_metrics(np.random.default_rng(0).random((20, 1)), labels, ["abnormal"], "multilabel", n_bootstrap=10)})
    assert warning not in model_card(cfg, spec, metrics={**metrics, "split": "test"})
    assert warning not in model_card(cfg, spec)  # no results, nothing to warn about
