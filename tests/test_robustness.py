"""Universal adversarial perturbations: norms, the mask, the rates and the command on a model that learned."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
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
        # the control of a UAP that stopped short of its budget has the UAP's own norm, modality by modality
        uap = R.UAP(R.project(rho, 0.7, norm) * torch.tensor([0.5, 0.2, 0.0])[:, None, None], 0.7, 10.0, 2, 0.5, norm)
        control = R.random_control(uap, torch.Generator().manual_seed(1))
        assert torch.allclose(R.lp_norm(control, norm), uap.norms, rtol=1e-6, atol=0) and uap.norms[0] == pytest.approx(0.35)


def test_perturbation_stays_on_real_slices_and_in_range():
    x = torch.rand(2, 2, 5, 4, 4)
    mask = torch.zeros(2, 2, 5, dtype=torch.bool)
    mask[0, 0, :3] = mask[0, 1, :5] = mask[1, 0, :2] = True
    rho = torch.full((2, 4, 4), 0.5)
    out = R.apply_perturbation(x, mask, rho)
    assert torch.equal(out[~mask], x[~mask])  # padded slices (and a missing modality) untouched
    assert torch.equal(out[mask], (x[mask] + 0.5).clamp(0, 1)) and out.max() <= 1
    own = torch.stack([rho, -rho])  # one perturbation per study
    out = R.apply_perturbation(x, mask, own)
    assert torch.equal(out[0], R.apply_perturbation(x[:1], mask[:1], rho)[0])
    assert torch.equal(out[1], R.apply_perturbation(x[1:], mask[1:], -rho)[0])


def test_a_step_counts_only_where_it_fools_its_own_study():
    """ART's rule: a study's FGSM step is kept only if it fools that study; the kept steps move the UAP."""

    class Brightness(torch.nn.Module):
        """Class p while the mean of the real slices is above 0.5."""

        def __init__(self) -> None:
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            m = mask[:, 0].float()
            s = (x[:, 0].mean((-2, -1)) * m).sum(1) / m.sum(1) - 0.5
            return torch.stack([s, -s], 1) * 10

    mask = torch.ones(2, 1, 3, dtype=torch.bool)
    mask[1, 0, 2] = False  # a shorter study: its padded slice stays zero
    x = torch.full((2, 1, 3, 4, 4), 0.6) * mask[..., None, None]
    batches = [{"x": x, "mask": mask, "id": ["a", "b"]}]
    spec = LabelSpec("multiclass", ("p", "q"))
    # a step to the whole budget (0.06 off each pixel) fools neither study: nothing is kept
    small = R.craft_uap(Brightness(), spec, batches, zeta=0.1, step=1.0, max_iter=2, early_stop=False)
    assert torch.equal(small.perturbation, torch.zeros(1, 4, 4)) and small.crafting_rate == 0 and small.passes == 2
    # with a budget of 0.5 of a slice's norm (2.4) the step (0.3 off each pixel) fools both, and is kept
    large = R.craft_uap(Brightness(), spec, batches, zeta=0.5, step=1.0, max_iter=2)
    assert torch.allclose(large.perturbation, torch.full((1, 4, 4), -0.3)) and large.crafting_rate == 1 and large.passes == 1


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
    # the UAP grows by kept steps only (ART's rule): steps of 0.2 of the budget reach it in two passes over 24 studies
    main(["--checkpoint", str(learned), "--zeta", "0.2", "--step", "0.2", "--max-iter", "2", "--random-trials", "2", "--out", str(out)])
    result = json.loads((out / "uap.json").read_text())
    assert result == json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert result["fooling_rate"] >= result["random_fooling_rate"] + 0.3
    s = result["settings"]
    assert (s["zeta"], s["norm"], s["source"], s["n_eval"], s["n_craft"]) == (0.2, "l2", "train", 12, 24)
    assert s["radius"] == pytest.approx(0.2 * s["mean_input_norm"])
    rho = torch.from_numpy(np.load(out / "uap.npy"))
    assert rho.shape == (3, 32, 32) and (R.lp_norm(rho, "l2") <= s["radius"] * (1 + 1e-5)).all()
    # the achieved norm is recorded beside the budget, and the random control has it, not the budget
    assert s["achieved_norm"] == pytest.approx(R.lp_norm(rho, "l2").tolist(), rel=1e-6)
    assert s["achieved_zeta"] == pytest.approx([n / s["mean_input_norm"] for n in s["achieved_norm"]])
    for control, achieved in zip(s["control_norm"], s["achieved_norm"]):
        assert abs(control - achieved) <= 1e-6 * achieved
    assert 0 <= s["crafting_rate"] <= 1 and s["early_stop"] is True
    per_study = result["per_study"]
    assert len(per_study["id"]) == 12 and np.mean(per_study["fooled"]) == pytest.approx(result["fooling_rate"])
    assert np.mean(per_study["random_fooled"]) == pytest.approx(result["random_fooling_rate"])
    assert result["auc"]["clean"] > 0.65 and (out / "uap.png").stat().st_size > 0
    with pytest.raises(ResultExistsError):
        R.run_robustness(learned, zeta=0.2, out=out)
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: main(["--checkpoint", str(learned), "--target", "cartilage", "--out", str(tmp_path / "t")]))
    assert exit_info.value.code == 2 and "unknown task or class 'cartilage'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # crafting and evaluation must not share studies
        run_main(lambda: main(["--checkpoint", str(learned), "--split", "train", "--out", str(tmp_path / "same")]))
    assert exit_info.value.code == 2 and "shares 24 studies" in capsys.readouterr().err


def test_no_early_stop_runs_every_pass_and_auto_targets_the_least_called_output(learned, tmp_path):
    out = R.run_robustness(
        learned, zeta=0.2, max_iter=2, delta=1.0, early_stop=False, random_trials=1, target="auto", out=tmp_path / "u"
    )
    result = json.loads((out / "uap.json").read_text())
    s = result["settings"]
    assert s["passes"] == 2 and s["early_stop"] is False  # delta=1 would have stopped after the first pass
    assert s["target"] in ("abnormal", "acl", "meniscus")
    assert result["clean_on_target_rate"] < 0.5 and len(result["per_study"]["on_target"]) == 12
    assert np.mean(result["per_study"]["on_target"]) == pytest.approx(result["targeted_success_rate"])


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


def _uap_against_art(seed: int, order: int = 0) -> dict:
    """ART's UniversalPerturbation (FGSM steps, as Minagi et al. use it) and the project's UAP on one tiny
    model, with the same settings (step 0.5 of the norm, 5 passes, delta 0.2), at equal L2 norm (the
    project's budget is ART's achieved norm); fooling rates on held-out inputs, and a random control
    at that norm. The model learns its bands from training images apart from the crafting ones (a
    UAP crafted on the very images a tiny model memorised says little about held-out ones), and the
    crafting and held-out sets are large enough that one crafting run's rate is not mostly chance.
    `seed` draws the images and the model, `order` the crafting orders (ART's and the project's)."""
    import random

    from art.attacks.evasion import UniversalPerturbation
    from art.estimators.classification import PyTorchClassifier

    from transmed import create_model

    torch.manual_seed(seed)
    spec = LabelSpec("multiclass", ("top", "middle", "bottom"))
    model = create_model("transmed_tiny", num_modalities=1, num_outputs=3, backbone="test_resnet", pretrained=False, depth=1)
    slices, n_train, n_craft, n_held = 3, 200, 160, 400
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(n_train + n_craft + n_held, 1, 32, 32, generator=gen)  # the class: the brightest horizontal band, made brighter
    band = torch.arange(32) * 3 // 32
    labels = torch.stack([images[:, 0, band == i].mean((1, 2)) for i in range(3)], 1).argmax(1)
    images = (images + 0.3 * F.one_hot(labels, 3).float()[:, band][:, None, :, None]).clamp(0, 1)
    train, craft, held_out = images.split([n_train, n_craft, n_held])
    stacks = train[:, :, None].expand(-1, -1, slices, -1, -1)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(40):
        loss = F.cross_entropy(model(stacks, torch.ones(n_train, 1, slices, dtype=torch.bool)), labels[:n_train])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()

    class Images(torch.nn.Module):
        """The model on (N, 1, H, W) images, each repeated as a stack of slices (what ART perturbs)."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            x = z[:, :, None].expand(-1, -1, slices, -1, -1)
            return self.model(x, torch.ones(x.shape[:3], dtype=torch.bool))

    classifier = PyTorchClassifier(
        Images(), torch.nn.CrossEntropyLoss(), input_shape=(1, 32, 32), nb_classes=3, clip_values=(0.0, 1.0), device_type="cpu"
    )
    radius = 0.1 * float(R.lp_norm(craft, "l2").mean())
    attack = UniversalPerturbation(
        classifier, attacker="fgsm", attacker_params={"norm": 2, "eps": 0.5 * radius}, delta=0.2, max_iter=5, eps=radius, norm=2, verbose=False
    )
    np.random.seed(seed + order)
    random.seed(seed + order)
    attack.generate(craft.numpy())
    art_rho = torch.from_numpy(attack.noise[0]).float()
    art_norm = float(R.lp_norm(art_rho, "l2")[0])

    def studies(z: torch.Tensor) -> list[dict]:
        x = z[:, :, None].expand(-1, -1, slices, -1, -1).contiguous()
        mask, ids = torch.ones(x.shape[:3], dtype=torch.bool), [str(j) for j in range(len(x))]
        return [{"x": x[i : i + 8], "mask": mask[i : i + 8], "id": ids[i : i + 8]} for i in range(0, len(x), 8)]

    class Shuffled:
        """The crafting batches in a new order each time through, as the training loader gives them."""

        def __init__(self, batches: list[dict]) -> None:
            self.batches, self.generator = batches, torch.Generator().manual_seed(seed + order)

        def __iter__(self):
            return iter([self.batches[i] for i in torch.randperm(len(self.batches), generator=self.generator).tolist()])

    crafting = Shuffled(studies(craft))
    zeta = art_norm / R.mean_slice_norm(crafting, "l2")  # the project's budget: ART's achieved norm
    ours = R.craft_uap(model, spec, crafting, zeta=zeta, norm="l2", step=0.5, max_iter=5, delta=0.2)
    evaluation = studies(held_out)
    clean = R.predict_with(model, spec, evaluation)
    rate = lambda rho: R.success_rate(clean, R.predict_with(model, spec, evaluation, rho), spec)  # noqa: E731
    return {
        "accuracy": float((torch.from_numpy(clean.probs).argmax(1) == labels[-n_held:]).float().mean()),
        "ours": rate(ours.perturbation),
        "art": rate(art_rho),
        "control": rate(R.random_control(ours, torch.Generator().manual_seed(seed))),
        "our_norm": float(ours.norms[0]),
        "art_norm": art_norm,
        "passes": ours.passes,
        "crafting_rate": ours.crafting_rate,
    }


def test_project_uap_fools_at_least_0_8_times_as_often_as_art_at_equal_norm():
    """Reference check against the Adversarial Robustness Toolbox (Minagi et al.'s tool): at equal L2 norm
    the project's UAP fools held-out inputs at least 0.8 times as often as ART's. Measured with
    `_uap_against_art` over seeds 0-11 (2026-12, 2-core CPU): one run each, 1.2x to 7.1x (seed 3:
    1.22x and 1.30x in two runs; runs are not bit-identical, the threads' float sums differ and the
    crafting amplifies that); three orders each (six on seeds 3 and 9), every pairing of a project run
    with an ART run >= 0.96x, while ART against itself in another order ranged 0.11x to 9x."""
    pytest.importorskip("art")
    result = _uap_against_art(seed=3)
    assert result["accuracy"] >= 0.9, result  # the model learned the bands
    assert result["art_norm"] * 0.95 <= result["our_norm"] <= result["art_norm"] * (1 + 1e-5), result  # equal norms
    assert result["art"] >= result["control"] + 0.1, result  # the reference UAP is not noise
    assert result["ours"] >= 0.8 * result["art"], result


def test_the_command_spells_the_norms_as_the_library_does():
    from transmed.commands import robustness

    assert robustness.NORMS == R.NORMS
