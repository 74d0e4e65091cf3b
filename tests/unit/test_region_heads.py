"""Region-based heads: label -> region and region -> region fine-tuning map output channels by name and label set."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import make_unet

from nnunet_transfer import load_pretrained
from nnunet_transfer.core.loading.heads import head_channels, match_channels

LABELS = {"background": 0, "outer": 1, "middle": 2, "inner": 3}  # softmax: 4 channels
NESTED = {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "inner": 3}  # sigmoid: 3 channels
OTHER = {"background": 0, "whole": [1, 2, 3], "core": [2], "inner": [3]}  # "core" is another label set
HEADS = ("decoder.seg_layers.0.weight", "decoder.seg_layers.0.bias", "decoder.seg_layers.1.weight",
         "decoder.seg_layers.1.bias")


def _source(tmp_path, labels, seed=1):
    net = make_unet(seed=seed, num_classes=len(head_channels(labels).names))
    path = tmp_path / "source.pth"
    torch.save({"network_weights": net.state_dict(), "init_args": {"dataset_json": {"labels": labels}}}, path)
    return net.state_dict(), path


def _load(tmp_path, src_labels, tgt_labels):
    src, path = _source(tmp_path, src_labels)
    net = make_unet(seed=2, num_classes=len(head_channels(tgt_labels).names))
    fresh = {k: v.clone() for k, v in net.state_dict().items()}
    report = load_pretrained(net, path, tgt_labels)
    return src, fresh, net.state_dict(), report


def _assert_channels(src, fresh, now, expected):
    """``expected[j]``: the source channel target channel j holds, or None for its fresh initialisation."""
    for key in HEADS:
        for j, i in enumerate(expected):
            want = fresh[key][j] if i is None else src[key][i]
            assert torch.equal(now[key][j], want), f"{key} channel {j}: expected {'fresh' if i is None else i}"


def test_channels_carry_their_label_sets():
    assert head_channels(LABELS).label_sets == tuple(frozenset({v}) for v in range(4))
    assert head_channels(NESTED).label_sets == (frozenset({1, 2, 3}), frozenset({2, 3}), frozenset({3}))
    assert head_channels(["a", "b"]).label_sets == ()


def test_label_source_to_region_target(tmp_path):
    src, fresh, now, report = _load(tmp_path, LABELS, NESTED)
    _assert_channels(src, fresh, now, [None, None, 3])  # inner {3} <- label inner (channel 3); whole, core fresh
    heads = [r for r in report.tensors if r.is_head]
    assert heads and {r.code for r in heads} == {"head_mapped"} and {r.status for r in heads} == {"adapted"}
    assert "copied 1 of 3 channels by name and label set (inner<-inner); fresh: whole, core" in heads[0].reason
    assert [(m.target_index, m.target_name, m.source_index, m.source_name) for m in report.label_mapping] == [
        (0, "whole", None, None), (1, "core", None, None), (2, "inner", 3, "inner")]
    assert report.label_mapping[0].note == "no source channel named 'whole'"
    assert report.coverage == 1.0 and report.passed  # heads stay out of the coverage, as for labels
    assert "0:whole<-new (no source channel named 'whole')" in report.table()


def test_region_source_with_other_regions(tmp_path):
    src, fresh, now, report = _load(tmp_path, OTHER, NESTED)
    _assert_channels(src, fresh, now, [0, None, 2])
    core = report.label_mapping[1]
    assert (core.source_index, core.note) == (None, "'core' stands for labels {2, 3} here but {2} in the source")
    data = json.loads(json.dumps(report.to_dict()))
    assert [m["source_name"] for m in data["label_mapping"]] == ["whole", None, "inner"]
    assert "fresh: core" in next(r for r in report.tensors if r.is_head).reason


def test_same_regions_in_another_order(tmp_path):
    reordered = {"background": 0, "inner": [3], "WHOLE ": [3, 2, 1]}  # names ignore case and blanks; sets ignore order
    src, fresh, now, report = _load(tmp_path, NESTED, reordered)
    _assert_channels(src, fresh, now, [2, 0])
    assert {r.code for r in report.tensors if r.is_head} == {"head_mapped"}


def test_same_regions_load_as_they_are(tmp_path):
    src, fresh, now, report = _load(tmp_path, NESTED, NESTED)
    _assert_channels(src, fresh, now, [0, 1, 2])
    assert {r.code for r in report.tensors if r.is_head} == {"head_same_labels"}


def test_region_source_to_label_target(tmp_path):
    src, fresh, now, report = _load(tmp_path, NESTED, LABELS)
    # softmax background {0} has no region; outer {1} and middle {2} have none of their name; inner {3} <- region 2
    _assert_channels(src, fresh, now, [None, None, None, 2])
    assert report.label_mapping[0].note == "no source channel named 'background'"


def test_no_region_in_common_keeps_every_channel_fresh(tmp_path):
    src, fresh, now, report = _load(tmp_path, LABELS, {"background": 0, "whole": [1, 2, 3], "core": [2, 3]})
    _assert_channels(src, fresh, now, [None, None])
    heads = [r for r in report.tensors if r.is_head]
    assert {r.code for r in heads} == {"head_kind_differs"} and {r.status for r in heads} == {"skipped"}
    assert "source uses labels (softmax), target regions (sigmoid)" in heads[0].reason


@pytest.mark.parametrize(("source", "target", "expected"), [
    (LABELS, LABELS, [0, 1, 2, 3]),
    ({"bg": 0, "a": 1}, {"background": 0, "b": 1, "A": 2}, [0, None, 1]),  # softmax: background by position
    (LABELS, {"background": 0, "inner": [3], "core": [2, 3], "middle": 2}, [3, None, 2]),
    ({"background": 0, "inner": [2], "x": [1, 2]}, {"background": 0, "inner": [3], "x": [2, 1]}, [None, 1]),
])
def test_match_channels(source, target, expected):
    """Lists of one value are labels, not regions (nnU-Net's LabelManager: a region lists two or more)."""
    matches = match_channels(head_channels(source), head_channels(target))
    assert [m.source_index for m in matches] == expected
