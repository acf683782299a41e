"""Universal adversarial perturbations: norms, the mask, the rates and the command on a model that learned."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_overrides
from PIL import Image

from transmed.commands._common import run_main
from transmed.core.errors import DataError, ResultExistsError
from transmed.core.labels import LabelSpec, Predictions
from transmed.evaluation import adversarial as R


@pytest.fixture(scope="module")
def learned(mrnet_root, tmp_path_factory):
    """A tiny model trained long enough to rank the valid studies better than chance (val AUC ~0.7);
    it calls some task positive in some valid studies only, so a targeted UAP has room to act."""
    from transmed.config import load_config
    from transmed.engine import train

    overrides = tiny_overrides(
        mrnet_root, tmp_path_factory.mktemp("runs"), **{"run_name": "robust", "train.epochs": "6", "train.lr": "1e-3", "seed": "4"}
    )
    run = train(load_config(None, overrides))
    assert json.loads((run / "summary.json").read_text())["last"]["val/auc"] > 0.65
    return run / "checkpoints" / "last.pt"  # the most trained; an early "best" can be saturated


def test_projection_and_random_control_have_the_asked_norm():
    rho = torch.randn(3, 8, 8) * 5
    for norm in R.NORMS:
        assert torch.allclose(R.lp_norm(R.project(rho, 0.7, norm), norm), torch.full((3,), 0.7))
        small = rho * 1e-3
        assert torch.equal(R.project(small, 0.7, norm), small)  # inside the ball: unchanged
        control = R.random_perturbation((3, 8, 8), 0.7, norm, torch.Generator().manual_seed(0))
        assert torch.allclose(R.lp_norm(control, norm), torch.full((3,), 0.7))


def test_perturbation_stays_on_real_slices_and_in_range():
    x = torch.rand(2, 2, 5, 4, 4)
    mask = torch.zeros(2, 2, 5, dtype=torch.bool)
    mask[0, 0, :3] = mask[0, 1, :5] = mask[1, 0, :2] = True
    rho = torch.full((2, 4, 4), 0.5)
    out = R.apply_perturbation(x, mask, rho)
    assert torch.equal(out[~mask], x[~mask])  # padded slices (and a missing modality) untouched
    assert torch.equal(out[mask], (x[mask] + 0.5).clamp(0, 1)) and out.max() <= 1


def _preds(ids, probs) -> Predictions:
    probs = np.asarray(probs, dtype=np.float32)
    return Predictions(ids=ids, logits=probs, probs=probs, labels=None)


def test_rates_match_studies_by_id_for_both_kinds():
    multilabel = LabelSpec("multilabel", ("a", "b"))
    clean = _preds(["x", "y", "z"], [[0.9, 0.1], [0.2, 0.3], [0.6, 0.6]])
    attacked = _preds(["z", "x", "y"], [[0.6, 0.4], [0.9, 0.1], [0.2, 0.7]])  # z flips b, y flips b
    assert R.success_rate(clean, attacked, multilabel) == pytest.approx(2 / 3)
    assert R.success_rate(clean, attacked, multilabel, target=1) == pytest.approx(1 / 3)
    multiclass = LabelSpec("multiclass", ("p", "q", "r"))
    clean = _preds(["x", "y"], [[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    attacked = _preds(["x", "y"], [[0.3, 0.5, 0.2], [0.1, 0.2, 0.7]])
    assert R.success_rate(clean, attacked, multiclass) == 0.5
    assert R.success_rate(clean, attacked, multiclass, target=2) == 0.5


def test_uap_fools_the_model_far_more_than_random_noise(learned, tmp_path, capsys):
    from transmed.commands.robustness import main

    out = tmp_path / "uap"
    main(["--checkpoint", str(learned), "--zeta", "0.2", "--max-iter", "2", "--random-trials", "2", "--out", str(out)])
    result = json.loads((out / "uap.json").read_text())
    assert result == json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert result["fooling_rate"] >= result["random_fooling_rate"] + 0.3
    s = result["settings"]
    assert (s["zeta"], s["norm"], s["source"], s["n_eval"]) == (0.2, "l2", "train", 12)
    assert s["radius"] == pytest.approx(0.2 * s["mean_input_norm"])
    rho = torch.from_numpy(np.load(out / "uap.npy"))
    assert rho.shape == (3, 32, 32) and (R.lp_norm(rho, "l2") <= s["radius"] * (1 + 1e-5)).all()
    assert result["auc"]["clean"] > 0.65 and (out / "uap.png").stat().st_size > 0
    with pytest.raises(ResultExistsError):
        R.run_robustness(learned, zeta=0.2, out=out)
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: main(["--checkpoint", str(learned), "--target", "cartilage", "--out", str(tmp_path / "t")]))
    assert exit_info.value.code == 2 and "unknown task or class 'cartilage'" in capsys.readouterr().err


def test_targeted_uap_pushes_studies_to_the_target(learned):
    from transmed.data import build_dataset, build_loader
    from transmed.models.loading import load_trained

    model, cfg, spec, _ = load_trained(learned)
    valid = build_loader(cfg, build_dataset(cfg, "valid", train=False), train=False)
    clean = R.predict_with(model, spec, valid)
    target = int((clean.probs > 0.5).mean(axis=0).argmin())  # the task the model calls positive least often
    uap = R.craft_uap(model, spec, valid, zeta=0.2, target=target, max_iter=2)
    before = R.success_rate(clean, clean, spec, target)
    after = R.success_rate(clean, R.predict_with(model, spec, valid, uap.perturbation), spec, target)
    assert before < 0.5 and after >= before + 0.3 and after == uap.crafting_rate


def test_crafting_from_a_folder_of_other_images(learned, tmp_path):
    from transmed.models.loading import load_trained

    rng = np.random.default_rng(0)
    for i in range(3):  # unrelated pictures: bright discs on noise, in another size
        yy, xx = np.mgrid[:48, :48]
        disc = ((yy - rng.integers(10, 38)) ** 2 + (xx - rng.integers(10, 38)) ** 2 < 80) * 200 + rng.integers(0, 50, (48, 48))
        Image.fromarray(disc.astype(np.uint8)).save(tmp_path / f"{i}.png")
    np.save(tmp_path / "stack.npy", rng.random((2, 20, 20)))
    (tmp_path / "notes.txt").write_text("ignored")
    model, cfg, spec, _ = load_trained(learned)
    batches = R.image_folder_batches(tmp_path, cfg, batch_size=3)
    assert [len(b["id"]) for b in batches] == [3, 1] and batches[1]["id"] == ["stack.npy"]
    first, stack = batches[0]["x"], batches[1]["x"]
    assert first.shape == (3, 3, 3, 32, 32) and stack.shape == (1, 3, 4, 32, 32)  # 2D -> 3 slices; 2 slices -> 4
    assert torch.equal(first[:, 0], first[:, 2]) and first.min() >= 0 and first.max() <= 1 and first.std() > 0.1
    uap = R.craft_uap(model, spec, batches, zeta=0.1, norm="linf", max_iter=1)
    assert uap.perturbation.shape == (3, 32, 32) and uap.radius == pytest.approx(0.1 * uap.mean_input_norm)
    assert uap.perturbation.abs().max() <= uap.radius + 1e-6
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        R.image_folder_batches(tmp_path / "empty", cfg, 2)
