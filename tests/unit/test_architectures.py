"""The architecture registry: nnU-Net's families recognised on real networks, declared input projections, and a
family registered from outside the package getting groups, head mapping and input-channel adaptation."""

from __future__ import annotations

import doctest
import re

import pytest
import torch
from helpers import make_unet
from torch import nn

from nnunet_transfer import derive_groups, load_pretrained
from nnunet_transfer.core import architectures
from nnunet_transfer.core.architectures import (
    GENERIC,
    PLAIN_CONV_UNET,
    PRIMUS,
    SEG_LAYERS_HEAD_PATTERN,
    ArchitectureSpec,
    architecture_for,
    class_named,
    list_architectures,
    register_architecture,
    unregister_architecture,
)
from nnunet_transfer.core.loading.loader import DEFAULT_HEAD_PATTERN
from nnunet_transfer.core.schedules.groups import default_group_patterns
from nnunet_transfer.errors import ArchitectureError

BUILTIN = ["PlainConvUNet", "ResidualEncoderUNet", "Primus", "generic"]


def _primus(cls_name: str = "Primus", **kwargs) -> nn.Module:
    from dynamic_network_architectures.architectures import primus

    torch.manual_seed(0)
    return getattr(primus, cls_name)(1, 96, (8, 8, 8), 3, eva_depth=2, eva_numheads=4, input_shape=(32, 32, 32),
                                     **kwargs)


def _save(net: nn.Module, path, labels: dict) -> str:
    torch.save({"network_weights": net.state_dict(), "init_args": {"dataset_json": {"labels": labels}}}, path)
    return str(path)


def _in_proj(prefix: str) -> list[str]:
    return [f"{prefix}.convs.0.conv", f"{prefix}.convs.0.all_modules.0",
            f"decoder.{prefix}.convs.0.conv", f"decoder.{prefix}.convs.0.all_modules.0"]


@pytest.mark.parametrize(("build", "name", "in_proj", "lpe"), [
    (make_unet, "PlainConvUNet", _in_proj("encoder.stages.0.0"), None),
    (lambda: make_unet(residual=True), "ResidualEncoderUNet", _in_proj("encoder.stem"), None),
    (_primus, "Primus", ["down_projection.proj"], "eva.pos_embed"),
    (lambda: _primus(use_abs_pos_embed=False), "Primus", ["down_projection.proj"], None),
    (lambda: _primus("PrimusV2"), "Primus",
     ["down_projection.stem.blocks.0.conv1.conv", "down_projection.stem.blocks.0.conv1.all_modules.0"],
     "eva.pos_embed"),
    # no declaration: the first non-transposed convolution, as the loader always guessed
    (lambda: nn.Sequential(nn.ConvTranspose3d(1, 2, 2), nn.Conv3d(2, 4, 3), nn.Conv3d(4, 2, 1)), "generic", ["1"],
     None),
])
def test_families_are_recognised_on_real_networks(build, name, in_proj, lpe):
    net = build()
    for wrapped in (net, torch.compile(net), nn.DataParallel(net)):
        assert architecture_for(wrapped).name == name
    spec = architecture_for(net)
    assert spec.input_projection(net) == in_proj
    assert spec.positional_embedding(net) == lpe
    heads = [k for k in net.state_dict() if re.fullmatch(spec.head_pattern, k)]
    if name in ("PlainConvUNet", "ResidualEncoderUNet"):
        assert heads and all(".seg_layers." in k for k in heads)
    elif name == "Primus":  # the patch decoder's last transposed convolution (output channels on dim 1)
        last = len(net.up_projection.decode) - 1
        assert heads == [f"up_projection.decode.{last}.weight", f"up_projection.decode.{last}.bias"]
    else:
        assert heads == []
    assert SEG_LAYERS_HEAD_PATTERN == DEFAULT_HEAD_PATTERN  # the loader's default and the U-Nets' declaration agree


def test_group_patterns_use_the_declared_stem_and_encoder():
    res = make_unet(residual=True)
    stages = {f"encoder.stage{i}": [rf"encoder\.stages\.{i}\..+"] for i in range(3)}
    decoder = {f"decoder.stage{j}": [rf"decoder\.stages\.{j}\..+", rf"decoder\.transpconvs\.{j}\..+"] for j in range(2)}
    heads = {"heads": [r"decoder\.seg_layers\..+"]}
    assert default_group_patterns(res) == {"encoder.stem": [r"encoder\.stem\..+"], **stages, **decoder, **heads}
    # PlainConvUNet declares its stem inside stage 0 (key_to_stem = encoder.stages.0): no separate stem group
    assert default_group_patterns(make_unet()) == {**stages, **decoder, **heads}
    assert default_group_patterns(torch.compile(res)) == default_group_patterns(res)


def test_primus_register_tokens_join_the_stem_group():
    """Defect: Primus' top-level register_tokens matched no group, so derive_groups raised on such a network."""
    net = _primus(num_register_tokens=2)
    groups = {g.name: g for g in derive_groups(net)}
    assert list(groups) == ["encoder.stem", "encoder.stage0", "encoder.stage1", "heads"]
    assert "register_tokens" in groups["encoder.stem"].names
    assert any(p is net.register_tokens for p in groups["encoder.stem"].params)
    assert sum(g.numel for g in groups.values()) == sum(p.numel() for p in net.parameters())


class LateStem(nn.Module):
    """Two convolutions see the image; the declared input projection is the one registered second."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.gate = nn.Conv3d(in_channels, 4, 1)
        self.stem = nn.Conv3d(in_channels, 4, 3)
        self.keys_to_in_proj = ("stem",)


def test_declared_input_projection_is_adapted_not_the_first_convolution(tmp_path):
    """Defect: the loader adapted the first convolution in registration order, ignoring keys_to_in_proj."""
    torch.manual_seed(0)
    src, net = LateStem(1), LateStem(2)
    fresh_gate = net.gate.weight.detach().clone()
    assert architecture_for(net) is GENERIC and GENERIC.input_projection(net) == ["stem"]
    report = load_pretrained(net, _save(src, tmp_path / "c.pth", {"background": 0}), min_coverage=0.0)
    by_key = {r.key: r for r in report.tensors}
    assert [r.key for r in report.tensors if r.status == "adapted"] == ["stem.weight"]
    assert by_key["stem.weight"].reason.startswith("input channels 1->2")
    assert by_key["gate.weight"].status == "skipped" and "channel widths differ" in by_key["gate.weight"].reason
    torch.testing.assert_close(net.stem.weight.detach().sum(1), src.stem.weight.detach().sum(1))
    assert torch.equal(net.gate.weight.detach(), fresh_gate)
    net.keys_to_in_proj = ("stem", "nowhere")
    with pytest.raises(ArchitectureError, match=r"LateStem has no submodule 'nowhere'.*keys_to_in_proj"):
        load_pretrained(net, tmp_path / "c.pth", min_coverage=0.0)


class TinySegNet(nn.Module):
    """A user's network nnunet-transfer has never heard of: no nnU-Net names, nothing declared."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.enc = nn.Sequential(nn.Conv3d(in_channels, 4, 3, padding=1), nn.InstanceNorm3d(4, affine=True),
                                 nn.Conv3d(4, 8, 3, padding=1))
        self.dec = nn.Conv3d(8, 4, 3, padding=1)
        self.out = nn.Conv3d(4, num_classes, 1)


TINY = ArchitectureSpec(
    name="TinySegNet",
    matches=class_named("TinySegNet"),
    group_patterns=lambda net: {"encoder": [r"enc\..+"], "decoder": [r"dec\..+"], "heads": [r"out\..+"]},
    head_pattern=r"out\.(?:weight|bias)",
    input_projection=lambda net: ["enc.0"],
)
SRC_LABELS = {"background": 0, "liver": 1, "spleen": 2}
TGT_LABELS = {"background": 0, "spleen": 1, "kidney": 2, "liver": 3}


def test_user_registered_family_gets_groups_heads_and_input_adaptation(tmp_path):
    torch.manual_seed(1)
    src = TinySegNet(1, 3)
    torch.manual_seed(2)
    net = TinySegNet(2, 4)
    ckpt = _save(src, tmp_path / "c.pth", SRC_LABELS)
    # unregistered: the generic fallback (one group, no heads: the new head cannot load)
    assert architecture_for(net) is GENERIC and [g.name for g in derive_groups(net)] == ["all"]
    before = load_pretrained(TinySegNet(2, 4), ckpt, TGT_LABELS, dry_run=True, min_coverage=0.0)
    assert not any(r.is_head for r in before.tensors) and before.label_mapping == []
    assert {r.key: r.status for r in before.tensors}["out.weight"] == "skipped"

    assert register_architecture(TINY) is TINY
    try:
        assert list_architectures() == ["TinySegNet", *BUILTIN]
        assert architecture_for(torch.compile(net)) is TINY
        groups = derive_groups(net)
        assert [(g.name, g.names) for g in groups] == [
            ("encoder", ["enc.0.weight", "enc.0.bias", "enc.1.weight", "enc.1.bias", "enc.2.weight", "enc.2.bias"]),
            ("decoder", ["dec.weight", "dec.bias"]),
            ("heads", ["out.weight", "out.bias"]),
        ]
        assert groups[2].params[0] is net.out.weight

        fresh = {k: v.clone() for k, v in net.state_dict().items()}
        report = load_pretrained(net, ckpt, TGT_LABELS)
        by_key = {r.key: r for r in report.tensors}
        assert sorted(k for k, r in by_key.items() if r.is_head) == ["out.bias", "out.weight"]
        assert by_key["out.weight"].status == "adapted"
        assert [(m.target_name, m.source_name) for m in report.label_mapping] == [
            ("background", "background"), ("spleen", "spleen"), ("kidney", None), ("liver", "liver")]
        tgt, ref = net.state_dict(), src.state_dict()
        for t, s in ((0, 0), (1, 2), (3, 1)):
            assert torch.equal(tgt["out.weight"][t], ref["out.weight"][s])
            assert torch.equal(tgt["out.bias"][t], ref["out.bias"][s])
        assert torch.equal(tgt["out.weight"][2], fresh["out.weight"][2])  # the new label keeps its fresh init
        assert by_key["enc.0.weight"].status == "adapted" and "input channels 1->2" in by_key["enc.0.weight"].reason
        torch.testing.assert_close(tgt["enc.0.weight"].sum(1), ref["enc.0.weight"].sum(1))
        rest = {k: r.status for k, r in by_key.items() if k not in ("enc.0.weight", "out.weight", "out.bias")}
        assert set(rest.values()) == {"loaded"} and len(rest) == 7
        assert report.coverage == 1.0
        # a head pattern the caller gives still wins over the declared one
        again = load_pretrained(TinySegNet(2, 4), ckpt, TGT_LABELS, dry_run=True, min_coverage=0.0,
                                head_pattern=r"dec\.bias")
        assert [r.key for r in again.tensors if r.is_head] == ["dec.bias"]
    finally:
        assert unregister_architecture("TinySegNet") is TINY
    assert list_architectures() == BUILTIN and architecture_for(net) is GENERIC


def test_registry_order_and_errors():
    assert list_architectures() == BUILTIN
    mine = ArchitectureSpec("MyUNet", class_named("PlainConvUNet"), lambda net: {"all": [r".+"]})
    late = ArchitectureSpec("Late", class_named("Sequential"))
    register_architecture(mine)
    register_architecture(late, first=False)
    try:
        assert list_architectures() == ["MyUNet", "PlainConvUNet", "ResidualEncoderUNet", "Primus", "Late", "generic"]
        assert architecture_for(make_unet()) is mine  # registered first: takes over a built-in family
        assert [g.name for g in derive_groups(make_unet())] == ["all"]
        assert architecture_for(nn.Sequential(nn.Linear(1, 1))) is late
        with pytest.raises(ArchitectureError, match=r"named 'Late' is already registered; call unregister_arch"):
            register_architecture(ArchitectureSpec("Late", class_named("Linear")))
        with pytest.raises(ArchitectureError, match="named 'generic' is already registered"):
            register_architecture(ArchitectureSpec("generic", class_named("Linear")))
    finally:
        assert unregister_architecture("Late") is late and unregister_architecture("MyUNet") is mine
    assert list_architectures() == BUILTIN and architecture_for(make_unet()) is PLAIN_CONV_UNET
    assert architecture_for(_primus()) is PRIMUS
    with pytest.raises(ArchitectureError, match=r"no removable architecture named 'generic'; registered: \["):
        unregister_architecture("generic")
    with pytest.raises(ArchitectureError, match=r"takes an ArchitectureSpec, got str"):
        register_architecture("MyUNet")
    with pytest.raises(ArchitectureError, match=r"'bad': head_pattern '\(' is no valid regex"):
        ArchitectureSpec("bad", class_named("X"), head_pattern="(")
    with pytest.raises(ArchitectureError, match=r"'bad': matches must be a function of the network"):
        ArchitectureSpec("bad", True)


def test_module_docstring_example_runs():
    result = doctest.testmod(architectures)
    assert result.attempted >= 8 and result.failed == 0
    assert list_architectures() == BUILTIN
