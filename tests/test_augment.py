"""Training augmentation (data/augment.py): one draw per study, padding untouched; one definition for the device and the loader."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.transforms import Affine

from transmed.data import augment
from transmed.data.augment import RANGES, BatchAugment, RandAugmentd, augment_where, draw_params, sampling_grid, training_augment
from transmed.data.collate import to_device, to_float


def whole_batch_reference(x: torch.Tensor, mask: torch.Tensor, params: dict) -> torch.Tensor:
    """The augmentation as whole-batch tensor ops (flip, warp, intensity as separate passes over the padded batch):
    the reference the product's per-study form (`augment.apply_params`) must equal up to rounding."""
    x = to_float(x)
    b, h, w = x.shape[0], *x.shape[-2:]
    view = (b, 1, 1, 1, 1)
    out = torch.where(params["flip"].view(view), x.flip(-1), x)
    grid = sampling_grid(params["angle"], params["scale"], params["shift"], (h, w))
    warped = F.grid_sample(out.flatten(1, 2), grid, mode="bilinear", padding_mode="zeros", align_corners=False).view_as(out)
    out = torch.where(params["affine"].view(view), warped, out)
    out = out * params["gain"].view(view) + params["offset"].view(view)
    return torch.where(mask[..., None, None], out, x)


def apply_params(x: torch.Tensor, mask: torch.Tensor, params: dict, batched: bool) -> torch.Tensor:
    """`batched`: the whole-batch reference; else the product's augmentation."""
    return whole_batch_reference(x, mask, params) if batched else augment.apply_params(x, mask, params)


def _batch(b=6, m=3, s=5, size=24, seed=0):
    """Every real slice of every modality of a study is the same smooth image; padding holds a sentinel."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    images = []
    for _ in range(b):
        cy, cx = torch.rand(2, generator=g) * size * 0.5 + size * 0.25
        images.append(0.8 * torch.exp(-(((yy - cy) / 4) ** 2 + ((xx - cx) / 3) ** 2)) + 0.1 * (xx / size))  # off-centre, asymmetric
    x = torch.stack(images)[:, None, None].expand(b, m, s, size, size).clone()
    mask = torch.ones(b, m, s, dtype=torch.bool)
    if b >= 3 and m >= 3:
        mask[0, :, 3:] = False  # a short study
        mask[1, 1, 2:] = False  # one short modality
        mask[2, 2] = False  # a missing modality
    x[~mask] = 7.0  # padding is "exactly what it was", whatever it was
    return x, mask


@pytest.mark.parametrize("batched", [False, True])
def test_one_transform_per_study_for_all_slices_and_modalities_and_padding_untouched(batched):
    x, mask = _batch()
    changed, results = 0, []
    for seed in range(8):
        params = draw_params(len(x), (24, 24), torch.Generator().manual_seed(seed))
        out = apply_params(x, mask, params, batched=batched)
        assert out.dtype == x.dtype and out.shape == x.shape
        assert torch.equal(out[~mask], x[~mask])  # padded (and missing) slices: bit for bit as they came
        for b in range(len(x)):
            real = out[b][mask[b]]  # (n_real, H, W): every slice of every modality of study b
            assert torch.equal(real, real[:1].expand_as(real)), f"study {b}: slices or modalities transformed differently"
            changed += not torch.allclose(real[0], x[b, 0, 0])
            results.append(real[0])
    assert changed >= 0.7 * len(results)  # flip 0.5, affine 0.7, intensity 0.5 + 0.5: almost every draw changes something
    assert len({tuple(r.flatten()[:50].tolist()) for r in results}) > 0.7 * len(results)  # and studies differ from each other


def test_batched_and_per_study_forms_agree():
    x, mask = _batch(b=8, size=32)
    for seed in range(4):
        params = draw_params(len(x), (32, 32), torch.Generator().manual_seed(seed))
        assert torch.allclose(apply_params(x, mask, params, batched=True), apply_params(x, mask, params, batched=False), atol=1e-5)


@pytest.mark.parametrize(
    "angle, scale, shift",
    [(0.0, (1.0, 1.0), (3.0, 0.0)), (0.0, (1.1, 0.92), (0.0, -2.0)), (0.17, (1.0, 1.0), (0.0, 0.0)), (-0.15, (1.08, 0.93), (1.5, -1.2))],
)
def test_spatial_transform_is_monais_affine(angle, scale, shift):
    """Same family as the loader's MONAI RandAffine: the same parameters give the same image."""
    x, _ = _batch(b=1, m=1, s=1, size=40, seed=3)
    image = x[0, 0]  # (1, H, W)
    want = torch.as_tensor(
        Affine(rotate_params=angle, scale_params=scale, translate_params=shift, padding_mode="zeros", image_only=True)(image)
    )
    grid = sampling_grid(torch.tensor([angle]), torch.tensor([scale]), torch.tensor([shift]), (40, 40))
    got = torch.nn.functional.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    assert torch.allclose(got, want, atol=1e-5)
    flipped = sampling_grid(torch.tensor([angle]), torch.tensor([scale]), torch.tensor([shift]), (40, 40), torch.tensor([True]))
    mirrored = Affine(rotate_params=angle, scale_params=scale, translate_params=shift, padding_mode="zeros", image_only=True)(
        image.flip(-1)
    )
    got = torch.nn.functional.grid_sample(image[None], flipped, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    assert torch.allclose(got, torch.as_tensor(mirrored), atol=1e-5)  # flip first, then the affine, as the loader's Compose


def test_draws_stay_in_todays_ranges():
    n = 20000
    p = draw_params(n, (200, 100), torch.Generator().manual_seed(0))
    for key, prob in (("flip", "flip_prob"), ("affine", "affine_prob")):
        assert abs(p[key].float().mean() - RANGES[prob]) < 0.02
    assert p["angle"].abs().max() <= math.radians(10) + 1e-6 and p["angle"].abs().max() > math.radians(9.9)
    assert ((p["scale"] - 1).abs() <= 0.1 + 1e-6).all()
    assert (p["shift"][:, 0].abs() <= 10 + 1e-4).all() and (p["shift"][:, 1].abs() <= 5 + 1e-4).all()  # 5% of 200 rows, 100 columns
    assert abs((p["gain"] != 1).float().mean() - 0.5) < 0.02 and ((p["gain"] - 1).abs() <= 0.1 + 1e-6).all()
    assert abs((p["offset"] != 0).float().mean() - 0.5) < 0.02 and (p["offset"].abs() <= 0.05 + 1e-6).all()


def test_reproducible_from_epoch_seed_and_rank():
    x, mask = _batch()
    a, b = BatchAugment("cpu", epoch_seed=42001), BatchAugment("cpu", epoch_seed=42001)
    first = a(x, mask)
    assert torch.equal(first, b(x, mask))
    assert not torch.equal(first, a(x, mask))  # the next batch gets new draws
    a.reseed(42001)
    assert torch.equal(first, a(x, mask))  # a resumed epoch replays
    assert not torch.equal(first, BatchAugment("cpu", epoch_seed=42001, rank=1)(x, mask))
    assert not torch.equal(first, BatchAugment("cpu", epoch_seed=42002)(x, mask))


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float16])
def test_a_stored_batch_augments_as_its_float_form(batched, dtype):
    """The conversion is fused into the augmentation: a compact batch gives what its float32 form (`to_float`) gives."""
    x, mask = _batch(b=8, size=32)
    stored = (x.clamp(0, 1) * 255).round().to(torch.uint8) if dtype == torch.uint8 else x.to(torch.float16)
    for seed in range(3):
        params = draw_params(len(x), (32, 32), torch.Generator().manual_seed(seed))
        out = apply_params(stored, mask, params, batched=batched)
        assert out.dtype == torch.float32
        assert torch.allclose(out, apply_params(to_float(stored), mask, params, batched=batched), atol=1e-5)
        assert torch.equal(out[~mask], to_float(stored)[~mask])


def test_to_device_with_augment_is_the_augmented_float_batch():
    x, mask = _batch()
    batch = {"x": (x.clamp(0, 1) * 255).round().to(torch.uint8), "mask": mask}
    got, got_mask = to_device(batch, "cpu", BatchAugment("cpu", epoch_seed=7))
    assert torch.equal(got_mask, mask) and got.dtype == torch.float32
    assert torch.allclose(got, BatchAugment("cpu", epoch_seed=7)(to_float(batch["x"]), mask), atol=1e-6)
    assert torch.equal(to_device(batch, "cpu")[0], to_float(batch["x"]))  # without augment: the conversion only


def test_training_augment_follows_the_config(tiny_cfg):
    assert isinstance(training_augment(tiny_cfg(), "cpu", 1), BatchAugment)
    assert training_augment(tiny_cfg(**{"data.augment_on": "loader"}), "cpu", 1) is None
    assert training_augment(tiny_cfg(**{"data.augment": "false"}), "cpu", 1) is None


def test_one_switch_decides_where_the_one_augmentation_runs(tiny_cfg):
    """`augment_where` is the one decision; the loader's transform is the same augmentation as the device's."""
    from transmed.data.datasets import pipeline

    assert [augment_where(tiny_cfg(**extra)) for extra in ({}, {"data.augment_on": "loader"}, {"data.augment": "false"})] == [
        "device",
        "loader",
        None,
    ]
    assert [type(t) for t in pipeline(tiny_cfg(), train=True).transforms].count(RandAugmentd) == 1
    x, mask = _batch(b=1, m=2, s=4, size=24)
    stored = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    loader_form = RandAugmentd(["a", "b", "c"])  # c: a missing modality
    loader_form.set_random_state(5)
    out = loader_form({"id": "s", "a": stored[0, 0], "b": stored[0, 1], "c": None})
    seed = torch.Generator().manual_seed(int(np.random.RandomState(5).randint(0, 2**31 - 1)))  # as MONAI seeds it
    want = augment.augment_batch(stored.reshape(1, 1, 8, 24, 24), torch.ones(1, 1, 8, dtype=torch.bool), seed)[0, 0]
    assert out["c"] is None and out["a"].dtype == torch.float32
    assert torch.equal(torch.cat([out["a"], out["b"]]), want)
