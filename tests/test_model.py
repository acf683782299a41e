import pytest
import torch
from conftest import TINY_BACKBONE

from transmed import TransMed, create_model, list_models
from transmed.models.stem import PretrainedWeightsUnavailable
from transmed.models.tokens import group_slices


def tiny_model(**kw) -> TransMed:
    torch.manual_seed(0)
    args = dict(num_modalities=3, num_outputs=3, backbone=TINY_BACKBONE, variant="tiny", depth=2)
    args.update(kw)
    return TransMed(**args).eval()


@pytest.mark.parametrize("m,s,outputs", [(1, 3, 2), (2, 5, 4), (3, 8, 3), (4, 4, 1)])
def test_output_shape_for_modality_and_slice_counts(m, s, outputs):
    model = tiny_model(num_modalities=m, num_outputs=outputs)
    assert model(torch.rand(2, m, s, 32, 32)).shape == (2, outputs)


def test_padding_content_cannot_change_logits():
    model = tiny_model()
    x = torch.rand(2, 3, 7, 32, 32)
    mask = torch.ones(2, 3, 7, dtype=torch.bool)
    mask[0, 1, 4:] = False
    mask[1, 0, 5:] = False
    with torch.no_grad():
        ref = model(x, mask)
        noisy = x.clone()
        noisy[~mask] = torch.randn_like(noisy[~mask]) * 1e3
        assert torch.equal(model(noisy, mask), ref)


def test_study_logits_independent_of_batch_and_padding_length():
    model = tiny_model()
    study = torch.rand(1, 3, 5, 32, 32)
    alone = model(study)
    padded = torch.cat([study, torch.rand(1, 3, 6, 32, 32)], dim=2)
    mask = torch.zeros(2, 3, 11, dtype=torch.bool)
    mask[0, :, :5] = True
    mask[1] = True
    batch = torch.cat([padded, torch.rand(1, 3, 11, 32, 32)])
    with torch.no_grad():
        in_batch = model(batch, mask)[:1]
    # bit-identical is not promised across different GEMM shapes; far below any meaningful change
    torch.testing.assert_close(in_batch, alone, atol=1e-5, rtol=0)


def test_wholly_missing_modality_is_ignored():
    model = tiny_model()
    x = torch.rand(1, 3, 5, 32, 32)
    mask = torch.ones(1, 3, 5, dtype=torch.bool)
    mask[0, 2] = False
    with torch.no_grad():
        a = model(x, mask)
        x2 = x.clone()
        x2[0, 2] = torch.rand(5, 32, 32)
        assert torch.equal(model(x2, mask), a)
        assert torch.isfinite(a).all()


def test_returns_logits_not_probabilities():
    model = tiny_model(num_outputs=4)
    with torch.no_grad():
        model.head.bias.fill_(5.0)
        out = model(torch.rand(2, 3, 4, 32, 32))
    assert (out > 1).any()


def test_slice_grouping_windows_and_mask():
    x = torch.arange(6.0).view(1, 1, 6, 1, 1).expand(1, 1, 6, 2, 2)
    mask = torch.tensor([[[True, True, True, True, True, False]]])
    images, gmask = group_slices(x, mask, window=3, stride=1)
    assert images.shape == (1, 1, 4, 3, 2, 2)
    assert images[0, 0, 1, :, 0, 0].tolist() == [1.0, 2.0, 3.0]
    assert gmask.tolist() == [[[True, True, True, False]]]
    images, gmask = group_slices(x, mask, window=3, stride=2)  # 5 real slices end on a group boundary
    assert gmask.tolist() == [[[True, True, False]]]
    images, gmask = group_slices(x, mask, window=3, stride=3)  # a tail group repeats the last real slice
    groups = [images[0, 0, g, :, 0, 0].tolist() for g in range(images.shape[2]) if gmask[0, 0, g]]
    assert groups == [[0.0, 1.0, 2.0], [3.0, 4.0, 4.0]]
    rep, rmask = group_slices(x, mask, mode="replicate", stride=1)
    assert rep.shape == (1, 1, 6, 3, 2, 2) and rep[0, 0, 4, :, 0, 0].tolist() == [4.0, 4.0, 4.0]
    assert rmask.tolist() == mask.tolist()


def test_any_slice_count_works_without_a_maximum():
    model = tiny_model(num_modalities=1, num_outputs=1, slice_stride=16)
    assert model(torch.rand(1, 1, 300, 32, 32)).shape == (1, 1)


def test_timm_like_surface_and_attention():
    model = tiny_model(grid_size=2)
    x = torch.rand(2, 3, 4, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 1 + 3 * 2 * 4, 192)
        assert torch.equal(model.forward_head(feats), model(x))
        assert model.forward_head(feats, pre_logits=True).shape == (2, 192)
        maps = model.attention_maps(x)
    att = maps["attention"]
    assert att.shape == (2, 2, 3, 25, 25)
    torch.testing.assert_close(att.sum(-1), torch.ones_like(att.sum(-1)))
    assert maps["layout"].shape == (24, 3)


def test_attention_gives_padded_tokens_no_weight():
    model = tiny_model(grid_size=1)
    mask = torch.ones(1, 3, 6, dtype=torch.bool)
    mask[0, 0, 3:] = False
    maps = model.attention_maps(torch.rand(1, 3, 6, 32, 32), mask)
    padded = ~maps["key_mask"][0]
    assert padded.any() and (maps["attention"][..., padded] == 0).all()


def test_registry_and_variants():
    assert {"transmed_tiny", "transmed_small", "transmed_base"} <= set(list_models())
    small = create_model("transmed_small", num_modalities=2, num_outputs=2, backbone=TINY_BACKBONE, depth=1)
    assert small.dim == 384 and small.encoder.blocks[0].attn.heads == 6
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        create_model("nope", num_modalities=1, num_outputs=1)


def test_a_name_that_fixes_the_variant_refuses_another(tiny_cfg):
    """timm's entrypoints: `transmed_small` is TransMed with variant small; asking it for base is an error, not base or small."""
    from transmed.core.errors import ConfigError
    from transmed.models import build_model

    with pytest.raises(ConfigError, match=r"'model\.name' and 'model\.variant'.*model\.name=transmed_small.*model\.variant='base'") as err:
        build_model(tiny_cfg(**{"model.name": "transmed_small", "model.variant": "base"}), 3)
    assert "\n" not in str(err.value)
    assert build_model(tiny_cfg(**{"model.name": "transmed_small", "model.variant": "small"}), 3).dim == 384
    with pytest.raises(ValueError, match="fixes variant='small'; got variant='base'"):
        create_model("transmed_small", num_modalities=2, num_outputs=2, backbone=TINY_BACKBONE, variant="base")


def test_saved_weights_come_back_through_one_rebuild_with_the_same_checks(tiny_cfg, tmp_path):
    """Checkpoint and safetensors export (and the hub folder, which reads the same way) meet the same checks."""
    from safetensors.torch import save_file

    from transmed.config import to_dict
    from transmed.core.checkpoint import save_checkpoint, save_weights
    from transmed.core.errors import CheckpointError, ConfigError
    from transmed.data import label_spec
    from transmed.models import build_model
    from transmed.models.loading import load_trained, load_weights_file

    cfg = tiny_cfg(**{"data.drop_modalities": "[coronal]"})
    spec = label_spec(cfg)
    state = build_model(cfg, spec.num_outputs).state_dict()
    save_checkpoint(tmp_path / "run.pt", model=state, config=to_dict(cfg), label_spec=spec.to_dict(), epoch=1)
    save_weights(state, tmp_path / "run.safetensors", to_dict(cfg), spec.to_dict(), 1)
    save_file(state, str(tmp_path / "bare.safetensors"))  # no config, no label spec
    from_checkpoint = load_trained(tmp_path / "run.pt", device="cpu").model
    from_file = load_weights_file(tmp_path / "run.safetensors")
    for model in (from_checkpoint, from_file):
        assert model.label_spec == spec and model.drop_modalities == (1,) and not model.training
    x = torch.rand(1, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(from_checkpoint(x), from_file(x))
    with pytest.raises(CheckpointError, match="bare.safetensors has no 'config' entry"):
        load_weights_file(tmp_path / "bare.safetensors")
    with pytest.raises(ConfigError, match="trained on 3 modalities"):
        load_trained(tmp_path / "run.pt", ["data.modalities=[sagittal,axial]", "data.drop_modalities=[]"])


def test_constructor_is_keyword_only_and_checks_inputs():
    with pytest.raises(TypeError):
        TransMed(3, 3)
    model = tiny_model()
    with pytest.raises(ValueError, match="expects 3 modalities"):
        model(torch.rand(1, 2, 4, 32, 32))
    with pytest.raises(ValueError, match="mask shape"):
        model(torch.rand(1, 3, 4, 32, 32), torch.ones(1, 3, 5, dtype=torch.bool))


def test_pretrained_offline_or_missing_file_is_a_clear_error(monkeypatch):
    import transmed.models.stem as stem

    monkeypatch.setattr(stem, "_weights_cached", lambda name: False)
    monkeypatch.setattr(stem, "_hub_reachable", lambda *a, **k: False)
    with pytest.raises(PretrainedWeightsUnavailable, match="model.pretrained=false"):
        tiny_model(backbone="resnet18", pretrained=True)
    with pytest.raises(PretrainedWeightsUnavailable, match="does not exist"):
        tiny_model(pretrained="/no/such/weights.pth")


def test_hub_check_honours_offline_mode_and_a_mirror(monkeypatch):
    import transmed.models.stem as stem

    tried = []
    monkeypatch.setattr(stem.socket, "create_connection", lambda address, timeout: tried.append(address) or _closing())
    for name in ("HF_HUB_OFFLINE", "HF_ENDPOINT", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not stem._hub_reachable() and tried == []
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://mirror.local:8080")
    assert stem._hub_reachable() and tried == [("mirror.local", 8080)]


class _closing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_pretrained_from_local_weights_file(tmp_path):
    import timm

    reference = timm.create_model(TINY_BACKBONE, pretrained=False)
    torch.nn.init.constant_(
        reference.conv1[0].weight if isinstance(reference.conv1, torch.nn.Sequential) else reference.conv1.weight, 0.125
    )
    path = tmp_path / "weights.pth"
    torch.save(reference.state_dict(), path)
    model = tiny_model(pretrained=str(path))
    conv = model.stem.body.conv1
    weight = conv[0].weight if isinstance(conv, torch.nn.Sequential) else conv.weight
    assert torch.all(weight == 0.125)


# --- export mode: the dense forward without data-dependent shapes (transmed/deploy) ---------------


@pytest.mark.parametrize("stride,mode", [(1, "group"), (3, "group"), (2, "replicate")])
def test_dense_forward_equals_default_and_ignores_padding(stride, mode):
    model = tiny_model(slice_stride=stride, slice_mode=mode)
    x = torch.rand(3, 3, 10, 32, 32)
    mask = torch.ones(3, 3, 10, dtype=torch.bool)
    mask[1, 0, 6:] = False
    mask[1, 1, 8:] = False
    mask[2, 2] = False  # a missing modality
    with torch.no_grad():
        ref = model(x, mask)
        model.export_mode = True
        dense = model(x, mask)
        noisy = x.clone()
        noisy[~mask] = torch.randn_like(noisy[~mask]) * 1e3
        assert torch.equal(model(noisy, mask), dense)
    torch.testing.assert_close(dense, ref, atol=1e-5, rtol=0)


def test_slice_groups_by_index_equal_unfold():
    x = torch.rand(2, 2, 8, 4, 4)
    mask = torch.rand(2, 2, 8) > 0.3
    for stride in (1, 2, 3):
        unfolded = group_slices(x, mask, stride=stride)
        gathered = group_slices(x, mask, stride=stride, gather=True)
        assert all(torch.equal(a, b) for a, b in zip(unfolded, gathered))


def test_constructor_docstring_documents_every_argument():
    import inspect

    doc = TransMed.__doc__
    for name in inspect.signature(TransMed.__init__).parameters:
        if name != "self":
            assert f"\n        {name}: " in doc, name
    assert ">>> model(x, mask).shape" in doc


def test_constructor_docstring_example_runs():
    import doctest

    torch.manual_seed(0)
    result = doctest.testmod(__import__("transmed.models.transmed", fromlist=["TransMed"]), verbose=False)
    assert result.attempted >= 6 and result.failed == 0
