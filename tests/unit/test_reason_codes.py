"""Machine-readable reason codes: one per tensor record, in the JSON report, grouped by main_reasons()."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import make_unet

from nnunet_transfer import LoadOptions, ReasonCode, load_pretrained, plan_load
from nnunet_transfer.core.loading.checkpoint import read_checkpoint
from nnunet_transfer.core.loading.report import REASON_TEXT, LoadReport, TensorRecord

LABELS = {"background": 0, "organ": 1, "lesion": 2}
ANISO = dict(kernels=((1, 3, 3), (3, 3, 3), (3, 3, 3)), strides=((1, 1, 1), (1, 2, 2), (2, 2, 2)))
FIRST = "encoder.stages.0.0.convs.0.conv.weight"
HEAD = "decoder.seg_layers.0.weight"


def _save(sd, path, labels=LABELS):
    torch.save({"network_weights": sd, "init_args": {"dataset_json": {"labels": labels}}}, path)
    return path


def _codes(report) -> dict[str, str]:
    return {r.key: r.code for r in report.tensors}


def _plan(net, ckpt, labels=LABELS, **options):
    report, _ = plan_load(net, read_checkpoint(ckpt), labels, LoadOptions(min_coverage=0.0, **options))
    return report


def test_every_code_has_a_text_and_records_use_only_codes():
    assert set(REASON_TEXT) == {c.value for c in ReasonCode}
    assert str(ReasonCode.KERNEL) == "kernel" and ReasonCode("head_mapped") is ReasonCode.HEAD_MAPPED


def test_codes_of_exact_adapted_skipped_missing_and_head_tensors_in_the_json(tmp_path):
    src = make_unet(seed=1, features=(4, 8, 16, 16), kernels=((3, 3, 3),) * 4, strides=((1, 1, 1),) + ((2, 2, 2),) * 3)
    sd = dict(src.state_dict())
    sd["encoder.stages.1.0.convs.0.conv.weight"] = torch.randn(16, 4, 3, 3, 3)  # another width
    gone = sd["encoder.stages.3.0.convs.1.conv.weight"].data_ptr()
    for k in [k for k, v in sd.items() if v.data_ptr() == gone]:  # the tensor under all its names
        del sd[k]
    ckpt = _save(sd, tmp_path / "c.pth")
    net = make_unet(seed=2, input_channels=2, features=(4, 8, 16, 16), num_classes=4,
                    kernels=((1, 3, 3),) + ((3, 3, 3),) * 3, strides=((1, 1, 1), (1, 2, 2)) + ((2, 2, 2),) * 2)
    report = _plan(net, ckpt, {"background": 0, "organ": 1, "vessel": 2, "lesion": 3})
    path = report.write_json(tmp_path / "r.json")
    by_key = {t["key"]: t for t in json.loads(path.read_text())["tensors"]}
    assert by_key[FIRST]["code"] == "input_channels+kernel" and by_key[FIRST]["status"] == "adapted"
    assert by_key["encoder.stages.0.0.convs.1.conv.weight"]["code"] == "kernel"
    assert by_key["decoder.transpconvs.2.weight"]["code"] == "transposed_kernel"
    assert by_key["encoder.stages.2.0.convs.0.conv.weight"] == {**by_key["encoder.stages.2.0.convs.0.conv.weight"],
                                                               "code": "exact", "status": "loaded"}
    assert by_key["encoder.stages.1.0.convs.0.conv.weight"]["code"] == "width_mismatch"
    assert by_key["encoder.stages.3.0.convs.1.conv.weight"]["code"] == "missing"
    assert by_key[HEAD]["code"] == "head_mapped"
    codes = {t["code"] for t in by_key.values()}
    assert all(part in REASON_TEXT for c in codes for part in c.split("+"))
    rec = next(r for r in report.tensors if r.key == FIRST)
    assert rec.codes == ("input_channels", "kernel")


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("same labels", {HEAD: "head_same_labels"}),
        ("no target labels", {HEAD: "head_labels_unknown"}),
        ("regions", {HEAD: "head_kind_differs"}),
        ("map_heads off", {HEAD: "head_off"}),
        ("input channels off", {FIRST: "input_channels_off"}),
        ("kernels off", {FIRST: "kernel_adapt_off"}),
        ("2d tensor", {FIRST: "ndim_mismatch"}),
        ("transposed 3 vs 2", {"decoder.transpconvs.0.weight": "non_integer_factor"}),
        ("no labels at all", {HEAD: "head_same_shape"}),
    ],
)
def test_skip_and_head_codes(tmp_path, case, expected):
    sd = dict(make_unet(seed=1).state_dict())
    labels, options, net = LABELS, {}, make_unet(seed=2)
    if case == "no target labels":
        labels = None
    elif case == "regions":
        labels = {"background": 0, "organ": (1, 2), "lesion": (2, 3), "vessel": 3}  # no region = a source label
    elif case == "map_heads off":
        options = {"map_heads": False}
    elif case == "input channels off":
        net, options = make_unet(seed=2, input_channels=2), {"adapt_input_channels": False}
    elif case == "kernels off":
        net, options = make_unet(seed=2, **ANISO), {"adapt_kernels": False}
    elif case == "2d tensor":
        sd[FIRST] = sd[FIRST][:, :, 0]
    elif case == "transposed 3 vs 2":
        sd["decoder.transpconvs.0.weight"] = torch.randn(16, 8, 3, 3, 3)
    ckpt = _save(sd, tmp_path / "c.pth", None if case == "no labels at all" else LABELS)
    report = _plan(net, ckpt, None if case == "no labels at all" else labels, **options)
    codes = _codes(report)
    assert {k: codes[k] for k in expected} == expected
    assert codes["encoder.stages.1.0.convs.0.conv.weight"] == "exact"


def _record(key, code, reason, numel, status="skipped"):
    return TensorRecord(key, status, code, reason, None, None, [numel], numel)


def test_main_reasons_group_by_code_not_by_sentence():
    report = LoadReport("c.pth", "torch-zip", "", "", [
        _record("a.weight", "width_mismatch", "channel widths differ: 8x4x3x3x3 vs target 16x4x3x3x3", 60),
        _record("a.bias", "width_mismatch", "shape differs (channel widths): 8 vs target 16", 20),
        _record("b.weight", "missing", "missing: no tensor of this name in the checkpoint", 10, "missing"),
        _record("c.weight", "exact", "exact", 10, "loaded"),
    ], [], 0.5)
    assert report.main_reasons() == [
        "channel widths differ [width_mismatch] (2 tensors, 80% of parameters, e.g. a.weight)",
        "missing from the checkpoint [missing] (1 tensors, 10% of parameters, e.g. b.weight)",
    ]
    assert report.lost_by_code() == {"width_mismatch": (80, 2, "a.weight"), "missing": (10, 1, "b.weight")}


def test_guard_message_names_the_main_code(tmp_path):
    src = make_unet(seed=1, features=(4, 8, 16))
    with pytest.raises(Exception, match=r"Main reasons: channel widths differ \[width_mismatch\] \((\d+) tensors") as e:
        load_pretrained(make_unet(seed=2, features=(4, 16, 32)), _save(src.state_dict(), tmp_path / "c.pth"), LABELS)
    widths = [r for r in e.value.report.tensors if r.code == "width_mismatch" and r.is_parameter and not r.is_head]
    assert f"({len(widths)} tensors" in str(e.value)
