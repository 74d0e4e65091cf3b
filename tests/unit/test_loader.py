"""The adaptive loader on real nnU-Net networks: matching, adaptation, heads, aliases, wrappers, report, guard."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import make_unet
from torch import nn

from nnunet_transfer import LoadGuardError, load_pretrained, unwrap_network
from nnunet_transfer.core.loading.report import TensorRecord

ANISO = dict(kernels=((1, 3, 3), (3, 3, 3), (3, 3, 3)), strides=((1, 1, 1), (1, 2, 2), (2, 2, 2)))
LABELS = {"background": 0, "organ": 1, "lesion": 2}


def _save(net, path, labels=LABELS):
    torch.save({"network_weights": net.state_dict(), "init_args": {"dataset_json": {"labels": labels}}}, path)
    return path


def _distinct(net):
    return {id(t): t for t in net.state_dict(keep_vars=True).values()}


def test_each_tensor_counted_and_loaded_once(tmp_path, unet_factory):
    for residual in (False, True):
        src, net = unet_factory(residual=residual, seed=1), unet_factory(residual=residual, seed=2)
        report = load_pretrained(net, _save(src, tmp_path / "c.pth"), LABELS)
        assert len(report.tensors) == len(_distinct(net)) < len(net.state_dict())
        keys = [r.key for r in report.tensors]
        assert not any(k.startswith("decoder.encoder.") for k in keys)
        assert not any(".all_modules." in k for k in keys)
        aliases = {a for r in report.tensors for a in r.aliases}
        assert any(a.startswith("decoder.encoder.") for a in aliases)
        assert report.coverage == 1.0 and report.unused_source_keys == []
        for k, v in net.state_dict().items():
            assert torch.equal(v, src.state_dict()[k]), k


def test_anisotropic_target_adapts_kernels_and_transposed_convs(tmp_path, unet_factory):
    src = unet_factory(seed=1)
    net = unet_factory(seed=2, **ANISO)
    report = load_pretrained(net, _save(src, tmp_path / "c.pth"), LABELS)
    by_key = {r.key: r for r in report.tensors}
    adapted = {k for k, r in by_key.items() if r.status == "adapted" and not r.is_head}
    assert adapted == {
        "encoder.stages.0.0.convs.0.conv.weight",
        "encoder.stages.0.0.convs.1.conv.weight",
        "decoder.stages.1.convs.0.conv.weight",
        "decoder.transpconvs.1.weight",
    }
    assert by_key["decoder.transpconvs.1.weight"].target_shape == [8, 4, 1, 2, 2]
    assert by_key["decoder.transpconvs.1.weight"].source_shape == [8, 4, 2, 2, 2]
    assert report.coverage == 1.0
    # the adapted kernel keeps the sum along the collapsed axis; the transposed conv averages it
    sw = src.state_dict()
    torch.testing.assert_close(net.state_dict()["encoder.stages.0.0.convs.0.conv.weight"],
                               sw["encoder.stages.0.0.convs.0.conv.weight"].sum(2, keepdim=True))
    torch.testing.assert_close(net.state_dict()["decoder.transpconvs.1.weight"],
                               sw["decoder.transpconvs.1.weight"].mean(2, keepdim=True))


def test_isotropic_target_from_anisotropic_source_grows_kernels(tmp_path, unet_factory):
    src = unet_factory(seed=1, **ANISO)
    net = unet_factory(seed=2)
    report = load_pretrained(net, _save(src, tmp_path / "c.pth"), LABELS)
    assert report.coverage == 1.0
    w = net.state_dict()["encoder.stages.0.0.convs.0.conv.weight"]
    assert torch.equal(w[:, :, 1:2], src.state_dict()["encoder.stages.0.0.convs.0.conv.weight"])
    assert torch.count_nonzero(w[:, :, 0]) == 0 and torch.count_nonzero(w[:, :, 2]) == 0


@pytest.mark.parametrize(("n_src", "n_tgt"), [(1, 2), (2, 1), (3, 2)])
def test_only_the_first_convolution_adapts_input_channels(tmp_path, unet_factory, n_src, n_tgt):
    src = unet_factory(input_channels=n_src, seed=1)
    net = unet_factory(input_channels=n_tgt, seed=2)
    report = load_pretrained(net, _save(src, tmp_path / "c.pth"), LABELS)
    adapted = [r for r in report.tensors if r.status == "adapted"]
    assert [r.key for r in adapted] == ["encoder.stages.0.0.convs.0.conv.weight"]
    assert f"input channels {n_src}->{n_tgt}" in adapted[0].reason
    w_s = src.state_dict()["encoder.stages.0.0.convs.0.conv.weight"]
    w_t = net.state_dict()["encoder.stages.0.0.convs.0.conv.weight"]
    torch.testing.assert_close(w_t.sum(1), w_s.sum(1))


def test_heads_copy_channels_by_label_name(tmp_path, unet_factory):
    src = unet_factory(seed=1)
    net = unet_factory(seed=2, num_classes=4)
    fresh = {k: v.clone() for k, v in net.state_dict().items()}
    target_labels = {"background": 0, "vessel": 1, "Lesion": 2, "organ": 3}
    report = load_pretrained(net, _save(src, tmp_path / "c.pth"), target_labels)
    heads = [r for r in report.tensors if r.is_head]
    assert heads and all(r.status == "adapted" for r in heads)
    assert [(m.target_name, m.source_name) for m in report.label_mapping] == [
        ("background", "background"), ("vessel", None), ("Lesion", "lesion"), ("organ", "organ")]
    for i in range(2):
        w_t, w_s = net.state_dict()[f"decoder.seg_layers.{i}.weight"], src.state_dict()[f"decoder.seg_layers.{i}.weight"]
        assert torch.equal(w_t[0], w_s[0]) and torch.equal(w_t[2], w_s[2]) and torch.equal(w_t[3], w_s[1])
        assert torch.equal(w_t[1], fresh[f"decoder.seg_layers.{i}.weight"][1])  # new label keeps its fresh init
    # heads are excluded from coverage
    assert report.coverage == 1.0


def test_heads_without_shared_labels_keep_fresh_init(tmp_path, unet_factory):
    src, net = unet_factory(seed=1), unet_factory(seed=2)
    fresh = net.state_dict()["decoder.seg_layers.0.weight"].clone()
    report = load_pretrained(net, _save(src, tmp_path / "c.pth"), {"bg": 0, "x": 1, "y": 2})
    # softmax channel 0 is background whatever its name; x and y are new
    assert all(r.status == "adapted" for r in report.tensors if r.is_head)
    assert torch.equal(net.state_dict()["decoder.seg_layers.0.weight"][1:], fresh[1:])
    report = load_pretrained(unet_factory(seed=3, num_classes=1), _save(src, tmp_path / "c.pth"),
                             {"background": (0,), "whole": (1, 2)}, min_coverage=0.0)
    assert all(r.status == "skipped" and r.code == "head_kind_differs" and "regions" in r.reason
               for r in report.tensors if r.is_head)


def test_heads_without_target_labels(tmp_path, unet_factory):
    src = unet_factory(seed=1)
    report = load_pretrained(unet_factory(seed=2), _save(src, tmp_path / "c.pth"))
    assert all(r.status == "skipped" and "label names of the target unknown" in r.reason
               for r in report.tensors if r.is_head)
    torch.save(src.state_dict(), tmp_path / "plain.pth")  # no labels on either side: same shape loads
    report = load_pretrained(unet_factory(seed=2), tmp_path / "plain.pth")
    assert all(r.status == "loaded" for r in report.tensors)


def test_heads_can_be_left_fresh(tmp_path, unet_factory):
    report = load_pretrained(unet_factory(seed=2), _save(unet_factory(seed=1), tmp_path / "c.pth"), LABELS,
                             map_heads=False)
    heads = [r for r in report.tensors if r.is_head]
    assert heads and all(r.status == "skipped" and "map_heads is off" in r.reason for r in heads)
    assert report.coverage == 1.0


def test_different_widths_and_stages_are_skipped_with_reasons(tmp_path, unet_factory):
    src = unet_factory(seed=1, features=(4, 8, 16))
    net = unet_factory(seed=2, features=(4, 8, 32))
    report = load_pretrained(net, _save(src, tmp_path / "c.pth"), LABELS, min_coverage=0.0)
    skipped = [r for r in report.tensors if r.status == "skipped"]
    assert skipped and all("channel widths" in r.reason for r in skipped)
    assert any(r.key.startswith("encoder.stages.2.") for r in skipped)
    deeper = unet_factory(seed=3, features=(4, 8, 16, 16), kernels=((3, 3, 3),) * 4, strides=((1, 1, 1),) + ((2, 2, 2),) * 3)
    report = load_pretrained(deeper, _save(src, tmp_path / "c.pth"), LABELS, min_coverage=0.0)
    missing = [r for r in report.tensors if r.status == "missing"]
    assert any(r.key.startswith("encoder.stages.3.") for r in missing)
    assert 0 < report.coverage < 1


def test_report_counts_each_parameter_group_once(tmp_path, unet_factory):
    from nnunet_transfer.core.schedules.groups import derive_groups

    src = unet_factory(seed=1, features=(4, 8, 16))
    net = unet_factory(seed=2, features=(4, 8, 32))  # the deepest stage (and what touches it) cannot load
    report = load_pretrained(net, _save(src, tmp_path / "c.pth"), LABELS, min_coverage=0.0)
    groups = derive_groups(net)
    report.attach_groups(groups)
    by_name = {g.name: g for g in report.groups}
    assert list(by_name) == [g.name for g in groups]
    assert sum(g.tensors for g in report.groups) == sum(r.is_parameter for r in report.tensors)
    assert sum(g.parameters for g in report.groups) == sum(p.numel() for p in net.parameters())
    assert by_name["encoder.stage0"].coverage == 1.0 and by_name["encoder.stage2"].coverage == 0.0
    assert by_name["encoder.stage0"].tensors == len(groups[0].params)  # aliases (decoder.encoder.*) not counted
    data = report.to_dict()["groups"]
    assert {"name": "encoder.stage2", "coverage": 0.0}.items() <= data[2].items()
    assert "encoder.stage2 " in report.table() and "(0% pretrained)" in report.table()


def test_guard_threshold_and_reasons(tmp_path, unet_factory):
    src = unet_factory(seed=1, features=(4, 8, 16))
    net = unet_factory(seed=2, features=(4, 16, 32))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(LoadGuardError, match=r"below the minimum 50%.*Main reasons: channel widths differ") as e:
        load_pretrained(net, _save(src, tmp_path / "c.pth"), LABELS)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    cov = e.value.report.coverage
    report = load_pretrained(net, tmp_path / "c.pth", LABELS, min_coverage=cov)
    assert report.applied and report.coverage == pytest.approx(cov)


def test_report_json_schema(tmp_path, unet_factory):
    report = load_pretrained(unet_factory(seed=2, **ANISO), _save(unet_factory(seed=1), tmp_path / "c.pth"), LABELS)
    path = report.write_json(tmp_path / "out" / "report.json")
    data = json.loads(path.read_text())
    assert isinstance(data["coverage"], float) and data["coverage"] == 1.0
    assert isinstance(data["unused_source_keys"], list)
    for t in data["tensors"]:
        assert set(TensorRecord.__dataclass_fields__) <= set(t)
        assert t["status"] in ("loaded", "adapted", "skipped", "missing")
    assert {"key", "status", "reason", "source_key", "source_shape", "target_shape"} <= set(data["tensors"][0])
    assert report.summary() in report.table()


def test_dry_run_touches_nothing(tmp_path, unet_factory):
    net = unet_factory(seed=2)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    report = load_pretrained(net, _save(unet_factory(seed=1), tmp_path / "c.pth"), LABELS, dry_run=True)
    assert not report.applied and report.coverage == 1.0
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_unknown_option_is_an_error(tmp_path, unet_factory):
    with pytest.raises(TypeError, match=r"unknown loader option.*min_coverge"):
        load_pretrained(unet_factory(), _save(unet_factory(), tmp_path / "c.pth"), min_coverge=0.3)


def test_compiled_network_keeps_parameter_identity(tmp_path, unet_factory):
    src, net = unet_factory(seed=1), unet_factory(seed=2)
    compiled = torch.compile(net)  # compilation is lazy: wrapping is what matters here
    params = list(compiled.parameters())
    opt = torch.optim.SGD(compiled.parameters(), lr=0.1)
    assert unwrap_network(compiled) is net
    load_pretrained(compiled, _save(src, tmp_path / "c.pth"), LABELS)
    assert all(a is b for a, b in zip(params, compiled.parameters(), strict=True))
    assert opt.param_groups[0]["params"][0] is params[0]
    assert torch.equal(net.state_dict()["encoder.stages.0.0.convs.0.conv.weight"],
                       src.state_dict()["encoder.stages.0.0.convs.0.conv.weight"])


def _ddp_worker(rank: int, world: int, ckpt: str, port: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        net = make_unet(seed=10 + rank, **ANISO)  # a different initialisation on each rank
        # as nnU-Net wraps it on GPU: compiled, then DDP (the eager backend keeps this fast on CPU)
        ddp = nn.parallel.DistributedDataParallel(torch.compile(net, backend="eager"))
        report = load_pretrained(ddp, ckpt, LABELS)
        loaded = {k: v.clone() for k, v in net.state_dict().items()}
        opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
        gen = torch.Generator().manual_seed(rank)
        for _ in range(2):  # steps on different data per rank: DDP keeps the ranks in sync
            opt.zero_grad()
            outputs = ddp(torch.randn(2, 1, 8, 16, 16, generator=gen))  # deep supervision: one output per scale
            sum(o.square().mean() for o in outputs).backward()
            opt.step()
        torch.save({"coverage": report.coverage, "loaded": loaded, "state": net.state_dict()}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_ddp_wrapped_network_gloo(tmp_path, unet_factory):
    ckpt = _save(unet_factory(seed=1), tmp_path / "c.pth")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    mp.spawn(_ddp_worker, args=(2, str(ckpt), port, str(tmp_path / "out")), nprocs=2, join=True)
    r0, r1 = (torch.load(f"{tmp_path / 'out'}.{r}", weights_only=True) for r in (0, 1))
    assert r0["coverage"] == r1["coverage"] == 1.0
    for k in r0["state"]:
        assert torch.equal(r0["loaded"][k], r1["loaded"][k]), k  # both ranks loaded the same weights
        assert torch.equal(r0["state"][k], r1["state"][k]), k  # and stayed identical after training steps
    assert not torch.equal(r0["state"]["decoder.stages.0.convs.0.conv.weight"],
                           r0["loaded"]["decoder.stages.0.convs.0.conv.weight"])  # the steps did train


def test_a_family_rule_and_a_format_extend_the_decision_without_an_edit_of_the_loader(tmp_path, unet_factory):
    """plan_load asks a chain of rules per tensor: a rule registered for one architecture family answers for its
    networks only (here: keep ResEnc stems fresh), and a registered checkpoint format maps keys and adds notes."""
    from nnunet_transfer.core.loading.rules import (
        Decision,
        LoadFormat,
        register_load_format,
        register_tensor_rule,
        unregister_load_format,
        unregister_tensor_rule,
    )

    def fresh_stem(ctx, case):
        if not case.key.startswith("encoder.stem."):
            return None
        return Decision("skipped", "test_fresh_stem", "stem: kept fresh by a family rule")

    class Shouting(LoadFormat):  # a format that writes every key in capitals (no prefix rule can undo that)
        name = "shouting"

        @classmethod
        def applies(cls, source):
            return all(k.isupper() for k in source.state_dict)

        def key_map(self):
            return str.lower

        def finish(self, records, mapping):
            return [f"shouting format: {sum(r.status == 'loaded' for r in records)} tensors loaded"]

    src = unet_factory(residual=True, seed=1)
    path = tmp_path / "c.pth"
    torch.save({"network_weights": {k.upper(): v for k, v in src.state_dict().items()},
                "init_args": {"dataset_json": {"labels": LABELS}}}, path)
    register_tensor_rule(fresh_stem, family="ResidualEncoderUNet")
    register_load_format(Shouting)
    try:
        res = unet_factory(residual=True, seed=2)
        report = load_pretrained(res, path, LABELS, min_coverage=0.5)
        stem = [r for r in report.tensors if r.key.startswith("encoder.stem.")]
        assert stem and {(r.status, r.code) for r in stem} == {("skipped", "test_fresh_stem")}
        assert all(r.status == "loaded" for r in report.tensors if not r.key.startswith("encoder.stem."))
        assert torch.equal(res.state_dict()["decoder.seg_layers.1.weight"], src.state_dict()["decoder.seg_layers.1.weight"])
        assert report.notes[0] == f"shouting format: {len(report.tensors) - len(stem)} tensors loaded"
        plain = unet_factory(seed=2)  # another family: the rule does not answer (its stem is stages.0), the format does
        plain_src = unet_factory(seed=1)
        torch.save({"network_weights": {k.upper(): v for k, v in plain_src.state_dict().items()}}, path)
        assert load_pretrained(plain, path, map_heads=False).coverage == 1.0
    finally:
        unregister_tensor_rule(fresh_stem)
        unregister_load_format(Shouting)
    from nnunet_transfer import plan_load, read_checkpoint

    report, _ = plan_load(unet_factory(seed=2), read_checkpoint(path))  # unregistered: nothing lowers the keys
    assert report.coverage == 0.0 and not any("shouting" in n for n in report.notes)
