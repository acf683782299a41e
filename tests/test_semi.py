"""Learning from unlabelled studies (`train.semi`): the loss, the targets, the batches and the pseudo-label rules."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from transmed.core.labels import LabelSpec
from transmed.engine import semi
from transmed.engine.semi import SemiBatchSampler, SemiLoss, labelled_targets, pseudo_labels, round_limit

KNEE = LabelSpec("multilabel", ("abnormal", "acl", "meniscus"))
PAROTID = LabelSpec("multiclass", ("a", "b", "c", "d"))


def test_semi_loss_equals_the_labelled_criterion_when_every_entry_is_known():
    torch.manual_seed(0)
    logits, y = torch.randn(5, 3), (torch.rand(5, 3) > 0.5).float()
    bce = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([1.0, 2.0, 3.0]))
    ours = SemiLoss(KNEE, bce)(logits[:, None], y[:, None])
    assert torch.allclose(ours, bce(logits, y), atol=1e-6)

    logits, classes = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 1, 0])
    ce = nn.CrossEntropyLoss(weight=torch.tensor([0.5, 1.0, 2.0, 1.5]))
    onehot = torch.eye(4)[classes]
    assert torch.allclose(SemiLoss(PAROTID, ce)(logits[:, None], onehot[:, None]), ce(logits, classes), atol=1e-6)


def test_semi_loss_ignores_unknown_entries_and_their_gradient():
    logits = torch.randn(2, 3, 3, requires_grad=True)
    target = torch.full((2, 3, 3), float("nan"))
    target[0, 1] = torch.tensor([1.0, 0.0, 1.0])
    loss = SemiLoss(KNEE, nn.BCEWithLogitsLoss())(logits, target)
    loss.backward()
    expected = nn.functional.binary_cross_entropy_with_logits(logits[0, 1], target[0, 1])
    assert torch.allclose(loss, expected)
    grad = logits.grad.clone()
    grad[0, 1] = 0
    assert torch.all(grad == 0)  # nothing flows from NaN entries

    rows = torch.full((2, 3, 4), float("nan"))
    rows[1, 2] = torch.eye(4)[3]
    loss = SemiLoss(PAROTID, nn.CrossEntropyLoss())(logits.detach()[..., :1].expand(2, 3, 4).contiguous(), rows)
    assert torch.isfinite(loss) and torch.allclose(loss, torch.log(torch.tensor(4.0)))  # equal logits: ln 4


@pytest.mark.parametrize("spec", [KNEE, PAROTID])
def test_pseudo_labelled_studies_are_averaged_apart_and_weighted(spec):
    torch.manual_seed(0)
    k = len(spec.names)
    logits = torch.randn(6, 3, k, requires_grad=True)
    target = torch.eye(k)[torch.tensor([0, 1, 2, 0, 1, 2]) % k][:, None].expand(6, 3, k).clone()
    target[4, 1] = float("nan")  # a classifier without a pseudo-label
    pseudo = torch.tensor([False, False, True, True, True, True])
    crit = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([1.0, 2.0, 3.0])) if spec is KNEE else nn.CrossEntropyLoss(weight=torch.tensor([0.5, 1.0, 2.0, 1.5]))
    plain = SemiLoss(spec, crit)
    expected = plain(logits[:2], target[:2]) + 0.5 * plain(logits[2:], target[2:])
    assert torch.allclose(SemiLoss(spec, crit, pseudo_weight=0.5)(logits, target, pseudo), expected, atol=1e-6)
    SemiLoss(spec, crit, pseudo_weight=0.0)(logits, target, pseudo).backward()
    assert torch.all(logits.grad[2:] == 0) and logits.grad[:2].abs().sum() > 0  # weight 0: the pseudo-labels change nothing
    only_labelled = SemiLoss(spec, crit)(logits[:2], target[:2], torch.zeros(2, dtype=torch.bool))
    assert torch.allclose(only_labelled, plain(logits[:2], target[:2]))  # a batch without pseudo-labels: the labelled loss


def test_output_smearing_gives_each_classifier_its_own_targets():
    labels = np.array([[1, 0, 1], [0, 0, 1]], dtype=np.float32)
    plain = labelled_targets(labels, KNEE, 3)
    assert plain.shape == (2, 3, 3) and np.array_equal(plain[:, 2], labels)
    smeared = labelled_targets(labels, KNEE, 3, smearing=0.2, seed=4)
    assert np.array_equal(smeared, labelled_targets(labels, KNEE, 3, smearing=0.2, seed=4))  # fixed by the seed
    assert not np.allclose(smeared[:, 0], smeared[:, 1])
    assert smeared.min() >= 0 and smeared.max() <= 1
    assert np.all(np.abs(smeared - plain) < 1)  # moved towards the other label, never past it

    classes = np.array([2, 0, 3])
    soft = labelled_targets(classes, PAROTID, 3, smearing=0.2, seed=1)
    assert np.allclose(soft.sum(-1), 1) and np.array_equal(labelled_targets(classes, PAROTID, 1)[:, 0].argmax(-1), classes)


def test_batches_hold_each_labelled_study_once_and_the_pseudo_labelled_at_the_ratio():
    pool = np.arange(10, 16)  # six pseudo-labelled studies after ten labelled ones
    batches = list(SemiBatchSampler(10, pool, batch_size=4, ratio=2, seed=3))
    assert len(batches) == len(SemiBatchSampler(10, pool, 4, 2, 3)) == 3
    labelled = [i for batch in batches for i in batch if i < 10]
    assert sorted(labelled) == list(range(10))
    assert [sum(i >= 10 for i in batch) for batch in batches] == [8, 8, 4]
    assert all(i in pool for batch in batches for i in batch if i >= 10)
    assert [len(b) for b in SemiBatchSampler(10, np.array([], dtype=int), 4, 2, 3)] == [4, 4, 2]  # no pool: labelled only

    shards = [list(SemiBatchSampler(10, pool, 4, 2, seed=3, rank=r, world=3)) for r in range(3)]
    assert len({len(s) for s in shards}) == 1  # every rank runs as many batches
    assert set().union(*({i for b in s for i in b if i < 10} for s in shards)) == set(range(10))


class _Heads(nn.Module):
    """What `pseudo_labels` reads of a model: its heads (C classifiers x K outputs side by side)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.num_classifiers, self.num_outputs = weight.shape[0], weight.shape[1]
        self.head = nn.Linear(weight.shape[2], weight.shape[0] * weight.shape[1])
        with torch.no_grad():
            self.head.weight.copy_(weight.flatten(0, 1))
            self.head.bias.copy_(bias.flatten())


def _run(monkeypatch, model, features, method, truth=None, **settings):
    from transmed.config import load_config

    monkeypatch.setattr(semi, "pre_logits", lambda *a, **k: ([f"{i:04d}" for i in range(len(features))], features))
    cfg = load_config(None, ["data.unlabelled_root=u", f"train.semi.method={method}", *(f"train.semi.{k}={v}" for k, v in settings.items())])
    return pseudo_labels(model, None, KNEE if model.num_outputs == 3 else PAROTID, torch.device("cpu"), cfg, epoch=5, truth=truth)


def test_pseudo_label_keeps_confident_entries_only(monkeypatch):
    bias = torch.tensor([[4.0, -4.0, 0.5]])  # confident yes, confident no, unsure
    model = _Heads(torch.zeros(1, 3, 2), bias)
    truth = {"0000": np.array([1, 1, 0], dtype=np.float32), "0001": np.array([1, 0, 0], dtype=np.float32)}
    targets, record = _run(monkeypatch, model, torch.randn(2, 2), "pseudo_label", truth)
    assert np.array_equal(targets[:, 0, :2], [[1, 0], [1, 0]]) and np.isnan(targets[:, 0, 2]).all()
    assert (record.pseudo_labelled, record.entries, record.correct, record.edited) == (2, 4, 3, 0)
    assert record.metrics()["semi/accuracy"] == 0.75


def test_round_size_keeps_the_most_confident_studies_and_doubles_each_round(monkeypatch):
    assert [round_limit(2, t, 10) for t in (1, 2, 3, 4)] == [2, 4, 8, 10] and round_limit(0, 1, 10) == 10
    weight = torch.zeros(1, 3, 1)
    weight[0, :, 0] = torch.tensor([1.0, -1.0, 1.0])  # the feature is each study's margin on every task
    features = torch.tensor([[3.0], [6.0], [4.0], [5.0]])
    # epoch 5 after 3 warm-up epochs is round 2: N_t = 1 x 2 studies, the two surest (studies 1 and 3)
    targets, record = _run(monkeypatch, _Heads(weight, torch.zeros(1, 3)), features, "pseudo_label", round_size=1)
    assert [not np.isnan(t).all() for t in targets[:, 0]] == [False, True, False, True]
    assert (record.pseudo_labelled, record.limit, record.entries) == (2, 2, 6)
    targets, record = _run(monkeypatch, _Heads(weight, torch.zeros(1, 3)), features, "pseudo_label")
    assert record.pseudo_labelled == 4 and record.limit == 4  # round_size 0: every confident study
    from transmed.config import load_config
    from transmed.core.errors import ConfigError

    with pytest.raises(ConfigError, match="train.semi.round_size"):
        load_config(None, ["train.semi.round_size=-1"])


def test_balance_aligns_decisions_to_the_labelled_shares_and_shares_each_round_out(monkeypatch):
    weight = torch.zeros(1, 3, 1)
    weight[0, :2, 0] = torch.tensor([1.0, 0.5])
    bias = torch.tensor([[0.0, -1.0, 5.0]])
    features = torch.tensor([[-9.0], [-8.0], [-7.0], [-6.0], [3.0], [4.0]])
    # logits: abnormal -9 -8 -7 -6 3 4; acl -5.5 -5 -4.5 -4 0.5 1 (ranked, all below 0); meniscus 5 for every study

    def run(**settings):
        monkeypatch.setattr(semi, "pre_logits", lambda *a, **k: ([f"{i:04d}" for i in range(6)], features))
        from transmed.config import load_config

        overrides = ["data.unlabelled_root=u", "train.semi.method=pseudo_label", "train.semi.threshold=0.75"]
        cfg = load_config(None, [*overrides, *(f"train.semi.{k}={v}" for k, v in settings.items())])
        prior = np.array([0.5, 1 / 3, 0.5])  # the labelled studies' share of positives per task
        return pseudo_labels(_Heads(weight, bias), None, KNEE, torch.device("cpu"), cfg, epoch=4, prior=prior)[0][:, 0]

    plain = run()
    assert np.array_equal(plain[:, 0], [0, 0, 0, 0, 1, 1]) and np.array_equal(plain[:4, 1], [0, 0, 0, 0])
    assert np.isnan(plain[4:, 1]).all() and np.array_equal(plain[:, 2], np.ones(6))  # acl's top two unsure; meniscus all yes
    aligned = run(balance="true")  # logits less each task's (1 - share) quantile: -6.5, -2.5 and 5
    assert np.array_equal(aligned[:, 0], [0, 0, np.nan, np.nan, 1, 1], equal_nan=True)  # -2.5 -1.5 | -0.5 0.5 unsure | 9.5 10.5
    assert np.array_equal(aligned[:, 1], [0, 0, 0, 0, 1, 1])  # acl's ranking: its top third positive
    assert np.isnan(aligned[:, 2]).all()  # a task the model does not rank yet: nothing is confident
    limited = run(balance="true", round_size=4)  # round 1 (epoch 4 after 3 warm-up epochs): N_t = 4
    assert np.array_equal(limited[:, 0], [0, 0, np.nan, np.nan, 1, 1], equal_nan=True)  # 2 of each decision
    assert np.array_equal(limited[:, 1], [0, 0, 0, np.nan, np.nan, 1], equal_nan=True)  # 4 x 1/3 -> 1 positive, 4 x 2/3 -> 3 negatives


def test_balance_caps_each_class_at_its_labelled_share(monkeypatch):
    weight = torch.zeros(1, 4, 1)
    weight[0, 0, 0] = 1.0  # class 0's logit is the feature; the others 0
    features = torch.tensor([[9.0], [8.0], [7.0], [6.0], [-9.0]])  # four sure of class 0, one unsure
    monkeypatch.setattr(semi, "pre_logits", lambda *a, **k: ([f"{i:04d}" for i in range(5)], features))
    from transmed.config import load_config

    cfg = load_config(None, ["data.unlabelled_root=u", "train.semi.method=pseudo_label", "train.semi.balance=true"])
    prior = np.array([0.4, 0.2, 0.2, 0.2])
    targets = pseudo_labels(_Heads(weight, torch.zeros(1, 4)), None, PAROTID, torch.device("cpu"), cfg, epoch=4, prior=prior)[0]
    assert np.array_equal(targets[:2, 0], np.eye(4)[[0, 0]]) and np.isnan(targets[2:, 0]).all()  # 5 x 0.4: the two surest of class 0


def test_tri_net_labels_for_the_third_where_two_agree_confidently(monkeypatch):
    bias = torch.tensor(
        [
            [4.0, 4.0, -4.0],  # classifier 0
            [4.0, -4.0, -4.0],  # classifier 1
            [4.0, 4.0, 0.0],  # classifier 2: unsure of meniscus
        ]
    )
    model = _Heads(torch.zeros(3, 3, 2), bias)  # bias only: dropout cannot move them
    targets, record = _run(monkeypatch, model, torch.randn(1, 2), "tri_net")
    nan = float("nan")
    expected = np.array([[[1, nan, nan], [1, 1, nan], [1, nan, 0]]])  # rows: what the other two agreed on
    assert np.array_equal(targets, expected, equal_nan=True)
    assert record.per_classifier == [1, 1, 1] and record.edited == 0 and record.entries == 5


def test_tri_net_edits_out_pseudo_labels_that_dropout_flips(monkeypatch):
    weight = torch.zeros(3, 3, 2)
    weight[:, 0] = torch.tensor([1.0, 1.0])  # abnormal: 10 - 7 = 3 (confident), but dropping feature 0 gives -10
    bias = torch.tensor([[0.0, -4.0, -4.0]]).expand(3, 3)  # acl, meniscus: confident no, stable
    features = torch.tensor([[10.0, -7.0]])
    targets, record = _run(monkeypatch, _Heads(weight, bias), features, "tri_net", passes=20, dropout=0.3)
    assert np.isnan(targets[0, :, 0]).all()  # abnormal: unstable for every pair, edited out
    assert np.array_equal(targets[0, :, 1:], np.zeros((3, 2)))
    assert record.pseudo_labelled == 1 and record.edited == 0  # the study kept its stable entries

    targets, record = _run(monkeypatch, _Heads(weight, torch.zeros(3, 3)), features, "tri_net", passes=20, dropout=0.3)
    assert np.isnan(targets).all() and record.edited == 1 and record.pseudo_labelled == 0


def test_multiclass_pseudo_labels_are_whole_rows(monkeypatch):
    bias = torch.tensor([[0.0, 6.0, 0.0, 0.0], [0.0, 6.0, 0.0, 0.0], [0.0, 0.0, 6.0, 0.0]])
    targets, record = _run(monkeypatch, _Heads(torch.zeros(3, 4, 2), bias), torch.randn(2, 2), "tri_net", truth={"0000": 1, "0001": 2})
    assert np.isnan(targets[:, :2]).all()  # classifiers 0 and 1: the others (1 or 0, and 2) disagree
    assert np.array_equal(targets[:, 2], np.eye(4)[[1, 1]])
    assert (record.entries, record.correct) == (2, 1)


# --- whole runs: tiny shapes, a few seconds each ---


@pytest.fixture(scope="module")
def knee_with_unlabelled(tmp_path_factory):
    from transmed.data.synthesis import generate_mrnet

    root = tmp_path_factory.mktemp("semi") / "knee"
    return generate_mrnet(root, num_train=16, num_valid=8, image_size=32, min_slices=4, max_slices=6, seed=1, num_unlabelled=10)


def _semi_cfg(root, out, method: str, **extra: str):
    from conftest import tiny_overrides

    from transmed.config import load_config

    settings = {
        "data.unlabelled_root": str(root / "unlabelled"),
        "train.semi.method": method,
        "train.semi.warmup_epochs": "1",
        "train.semi.threshold": "0.5",  # every decision is confident: the rounds label something
        "train.epochs": "3",
        **extra,
    }
    return load_config(None, tiny_overrides(root, out, **settings))


def _metrics(run_dir) -> list[dict]:
    import json

    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_tri_net_run_logs_every_round_and_saves_three_classifiers(knee_with_unlabelled, tmp_path):
    import json

    from transmed import load_model
    from transmed.engine import train

    run = train(_semi_cfg(knee_with_unlabelled, tmp_path, "tri_net"))
    rounds = [json.loads(line) for line in (run / "semi.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rounds] == [2, 3] and all(r["method"] == "tri_net" and r["unlabelled"] == 10 for r in rounds)
    for r in rounds:
        assert 0 <= r["correct"] <= r["entries"] and r["pseudo_labelled"] <= 10 and len(r["per_classifier"]) == 3
    metrics = _metrics(run)
    assert "semi/pseudo_labelled" not in metrics[0] and metrics[1]["semi/pseudo_labelled"] == rounds[0]["pseudo_labelled"]
    model = load_model(run / "checkpoints" / "best.pt")
    assert model.num_classifiers == 3 and model.head.out_features == 9
    x, mask = torch.rand(2, 3, 5, 32, 32), torch.ones(2, 3, 5, dtype=torch.bool)
    each = model(x, mask, classifiers=True)
    assert each.shape == (2, 3, 3) and torch.allclose(model(x, mask), each.mean(dim=1), atol=1e-6)

    from transmed.experiments.studies.analysis import measure_last

    cfg = _semi_cfg(knee_with_unlabelled, tmp_path, "tri_net")
    value = measure_last(run, cfg, None, tmp_path)["last/auc"]  # the semi study's last-epoch predictions, beside best.pt's
    frame = pd.read_csv(run / "last" / "predictions-valid.csv", dtype={"id": str})  # no test split here: valid
    assert len(frame) == 8 and 0 <= value <= 1 and (run / "predictions-valid.csv").exists() is False


def test_semi_run_resumed_equals_uninterrupted(knee_with_unlabelled, tmp_path, monkeypatch):
    """Pseudo-labels come from the model as an epoch starts, so a run stopped after epoch 2 and resumed
    relabels epoch 3 exactly as the uninterrupted run did."""
    from transmed.engine import train, trainer

    whole = train(_semi_cfg(knee_with_unlabelled, tmp_path / "whole", "tri_net"))
    real = trainer.pseudo_labels

    def stop_at_epoch_3(*args, **kwargs):
        if args[5] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "pseudo_labels", stop_at_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train(_semi_cfg(knee_with_unlabelled, tmp_path / "cut", "tri_net"))
    monkeypatch.setattr(trainer, "pseudo_labels", real)
    resumed = train(_semi_cfg(knee_with_unlabelled, tmp_path / "cut", "tri_net", **{"train.resume": "auto"}))
    for ours, theirs in zip(_metrics(resumed), _metrics(whole), strict=True):
        ours.pop("sec/epoch"), theirs.pop("sec/epoch")
        assert ours == pytest.approx(theirs)
    assert (whole / "semi.jsonl").read_text() == (resumed / "semi.jsonl").read_text()


def test_pseudo_label_on_multiclass_studies(tmp_path):
    import json

    from conftest import tiny_nifti_overrides

    from transmed.config import load_config
    from transmed.data.synthesis import generate_nifti
    from transmed.engine import train

    root = generate_nifti(tmp_path / "parotid", num_studies=12, with_split=True, num_unlabelled=4)
    settings = {
        "data.unlabelled_root": str(root / "unlabelled"),
        "data.modalities": "[T1,T2]",
        "train.semi.method": "pseudo_label",
        "train.semi.warmup_epochs": "1",
        "train.semi.threshold": "0.5",
        "train.epochs": "2",
    }
    run = train(load_config(None, tiny_nifti_overrides(root, tmp_path, **settings)))
    (round_,) = [json.loads(line) for line in (run / "semi.jsonl").read_text().splitlines()]
    assert round_["unlabelled"] == 4 and round_["entries"] == round_["pseudo_labelled"] and round_["correct"] <= round_["entries"]


def test_semi_method_none_on_the_command_line_is_the_choice_not_null():
    from transmed.config import load_config
    from transmed.core.errors import ConfigError

    assert load_config(None, ["train.semi.method=none"]).train.semi.method == "none"
    with pytest.raises(ConfigError, match="needs config key 'data.unlabelled_root'"):
        load_config(None, ["train.semi.method=tri_net"])
    with pytest.raises(ConfigError, match="model.name=late_fusion is not one"):
        load_config(None, ["train.semi.method=pseudo_label", "data.unlabelled_root=u", "model.name=late_fusion"])


def test_confidence_is_judged_without_the_loss_weights_shift(monkeypatch):
    """A pos_weight of 4 multiplies the odds a trained model gives by 4: a logit of log 4 + 1 (p 0.92) is
    p 0.73 unweighted, not confident at 0.9; for a task weighted 1/4 a logit of 1 (p 0.73) is p 0.92."""
    import math

    bias = torch.tensor([[math.log(4) + 1, 1.0, 3.0]])
    model = _Heads(torch.zeros(1, 3, 2), bias)
    monkeypatch.setattr(semi, "pre_logits", lambda *a, **k: (["0000"], torch.zeros(1, 2)))
    from transmed.config import load_config

    cfg = load_config(None, ["data.unlabelled_root=u", "train.semi.method=pseudo_label"])
    plain, _ = pseudo_labels(model, None, KNEE, torch.device("cpu"), cfg, epoch=4)
    shifted, _ = pseudo_labels(model, None, KNEE, torch.device("cpu"), cfg, epoch=4, weight=torch.tensor([4.0, 0.25, 1.0]))
    assert np.array_equal(plain[0, 0], [1, np.nan, 1], equal_nan=True)
    assert np.array_equal(shifted[0, 0], [np.nan, 1, 1], equal_nan=True)
