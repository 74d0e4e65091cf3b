"""Parameter groups, learning-rate tables, freezing (no gradient, norm layers in eval) on real nnU-Net networks."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from nnunet_transfer import RecipeError
from nnunet_transfer.core.schedules.groups import derive_groups
from nnunet_transfer.core.schedules.recipes import Recipe
from nnunet_transfer.core.schedules.schedule import (
    PerGroupLRScheduler,
    apply_freeze,
    build_optimizer,
    freeze_norms,
    resolve_schedule,
)


def _recipe(**kw):
    return Recipe.model_validate({"name": "t", **kw})


@pytest.mark.parametrize("residual", [False, True])
def test_groups_cover_every_parameter_exactly_once(unet_factory, residual):
    net = unet_factory(residual=residual, features=(4, 8, 16, 16), kernels=((3, 3, 3),) * 4,
                       strides=((1, 1, 1),) + ((2, 2, 2),) * 3)
    groups = derive_groups(net)
    names = [g.name for g in groups]
    expected = [f"encoder.stage{i}" for i in range(4)] + [f"decoder.stage{j}" for j in range(3)] + ["heads"]
    assert names == (["encoder.stem"] if residual else []) + expected
    ids = [id(p) for g in groups for p in g.params]
    assert len(ids) == len(set(ids)) == len(list(net.parameters()))
    assert set(ids) == {id(p) for p in net.parameters()}
    assert any(n.startswith("decoder.transpconvs.0.") for n in groups[names.index("decoder.stage0")].names)


def test_primus_and_unknown_architectures():
    from dynamic_network_architectures.architectures.primus import Primus

    net = Primus(1, 96, (8, 8, 8), 3, eva_depth=2, eva_numheads=4, input_shape=(32, 32, 32))
    groups = derive_groups(net)
    assert [g.name for g in groups] == ["encoder.stem", "encoder.stage0", "encoder.stage1", "heads"]
    assert sum(g.numel for g in groups) == sum(p.numel() for p in net.parameters())
    assert "eva.norm.weight" in groups[2].names and "eva.pos_embed" in groups[0].names
    other = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    assert [g.name for g in derive_groups(other)] == ["all"]
    with pytest.raises(RecipeError, match=r"phases\[0\]\.unfreeze: 'decoder\.\*' matches no parameter group"):
        resolve_schedule(_recipe(phases=[{"start_epoch": 0, "unfreeze": ["decoder.*"]}]), ["all"], 10, 0.01)


def test_custom_patterns_errors(unet_factory):
    net = unet_factory()
    with pytest.raises(RecipeError, match=r"parameter 'decoder\..*' matches no parameter group"):
        derive_groups(net, {"enc": [r"encoder\..+"]})
    with pytest.raises(RecipeError, match="matches several parameter groups"):
        derive_groups(net, {"all": [r".+"], "enc": [r"encoder\..+"]})
    with pytest.raises(RecipeError, match=r"group\(s\) \['nothing'\] match no parameter"):
        derive_groups(net, {"all": [r".+"], "nothing": [r"xyz"]})


GROUPS = ["encoder.stage0", "encoder.stage1", "encoder.stage2", "decoder.stage0", "decoder.stage1", "heads"]


def test_lr_table_with_progressive_unfreezing_and_warmup():
    recipe = _recipe(phases=[{"start_epoch": 0, "unfreeze": ["decoder.*", "heads"]}],
                     progressive={"groups": ["encoder.*"], "start_epoch": 4, "every": 2},
                     lr_multipliers={"encoder.*": 0.1}, warmup_epochs=2)
    s = resolve_schedule(recipe, GROUPS, num_epochs=10, base_lr=0.01)
    assert s.unfreeze_epoch == {"encoder.stage2": 4, "encoder.stage1": 6, "encoder.stage0": 8,
                                "decoder.stage0": 0, "decoder.stage1": 0, "heads": 0}
    poly = [(1 - e / 10) ** 0.9 for e in range(10)]
    assert s.lr("heads", 0) == 0.01 and s.lr("heads", 3) == pytest.approx(0.01 * poly[3], abs=0, rel=1e-15)
    assert s.lr("encoder.stage2", 3) == 0.0
    assert s.lr("encoder.stage2", 4) == pytest.approx(0.001 * poly[4] * 0.5, rel=1e-15)  # warmup starts
    assert s.lr("encoder.stage2", 5) == pytest.approx(0.001 * poly[5], rel=1e-15)  # warmup done
    assert s.lr("encoder.stage0", 8) == pytest.approx(0.001 * poly[8] * 0.5, rel=1e-15)
    assert s.trainable(5) == ["encoder.stage2", "decoder.stage0", "decoder.stage1", "heads"]
    table = s.table()
    assert [len(r["trainable"]) for r in table] == [3, 3, 3, 3, 4, 4, 5, 5, 6, 6]


def test_no_phases_means_everything_trains_at_nnunets_rate():
    s = resolve_schedule(_recipe(), GROUPS, num_epochs=1000, base_lr=0.01)
    assert s.trainable(0) == GROUPS
    from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    stock = PolyLRScheduler(opt, 0.01, 1000)
    for e in (0, 1, 250, 999):
        stock.step(e)
        assert s.lr("heads", e) == opt.param_groups[0]["lr"]


@pytest.mark.parametrize(
    ("kw", "fragment"),
    [
        ({"phases": [{"start_epoch": 0, "unfreeze": ["decoder.*"]}, {"start_epoch": 3, "unfreeze": ["decoder.stage1"]}]},
         "group 'decoder.stage1' is unfrozen twice"),
        ({"phases": [{"start_epoch": 0, "unfreeze": ["decoderr.*"]}]}, "'decoderr.*' matches no parameter group"),
        ({"phases": [{"start_epoch": 2, "unfreeze": ["heads"]}]}, "first phase must start at epoch 0"),
        ({"lr_multipliers": {"enc.*": 0.1}}, "lr_multipliers: 'enc.*' matches no parameter group"),
        ({"phases": [{"start_epoch": 0, "unfreeze": ["heads", "decoder.*"]}],
          "progressive": {"groups": ["heads"], "start_epoch": 2, "every": 1}}, "group 'heads' is unfrozen twice"),
    ],
)
def test_schedule_errors_name_the_field(kw, fragment):
    with pytest.raises(RecipeError) as e:
        resolve_schedule(_recipe(**kw), GROUPS, 10, 0.01)
    assert fragment in str(e.value)


def _train_steps(net, opt, n=3):
    for i in range(n):
        opt.zero_grad(set_to_none=True)
        out = net(torch.randn(2, 1, 8, 16, 16, generator=torch.Generator().manual_seed(i)))
        sum(o.square().mean() for o in out).backward()
        opt.step()


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_frozen_parameters_are_bit_identical_after_steps(unet_factory, optimizer):
    net = unet_factory()
    groups = derive_groups(net)
    recipe = _recipe(phases=[{"start_epoch": 0, "unfreeze": ["decoder.*", "heads"]}], weight_decay=0.1)
    s = resolve_schedule(recipe, [g.name for g in groups], 10, 0.01)
    opt = build_optimizer(groups, s, optimizer)
    assert sum(len(pg["params"]) for pg in opt.param_groups) == len(list(net.parameters()))  # all from the start
    apply_freeze(groups, s.trainable(0))
    _train_steps(net, opt)  # warm momentum / Adam state of the trainable groups
    # now freeze everything that has optimizer state too: momentum and weight decay must not move it
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    assert apply_freeze(groups, ["heads"])
    _train_steps(net, opt)
    for n, p in net.named_parameters():
        if n.startswith("decoder.seg_layers."):
            assert not torch.equal(p, before[n]), n
        else:
            assert torch.equal(p, before[n]), n
            assert p.grad is None


def test_per_group_scheduler_writes_each_groups_rate(unet_factory):
    net = unet_factory()
    groups = derive_groups(net)
    recipe = _recipe(lr_multipliers={"encoder.*": 0.1, "heads": 2.0}, group_weight_decay={"heads": 0.0})
    s = resolve_schedule(recipe, [g.name for g in groups], 100, 0.01)
    opt = build_optimizer(groups, s)
    sched = PerGroupLRScheduler(opt, s)
    sched.step(50)
    lrs = {pg["name"]: pg["lr"] for pg in opt.param_groups}
    poly = (1 - 50 / 100) ** 0.9
    assert lrs["encoder.stage0"] == pytest.approx(0.001 * poly) and lrs["heads"] == pytest.approx(0.02 * poly)
    assert lrs["decoder.stage0"] == pytest.approx(0.01 * poly)
    assert {pg["name"]: pg["weight_decay"] for pg in opt.param_groups}["heads"] == 0.0


def test_batchnorm_statistics_of_frozen_groups_stay_unchanged(unet_factory):
    net = unet_factory(norm=nn.BatchNorm3d)
    groups = derive_groups(net)
    trainable = ["decoder.stage0", "decoder.stage1", "heads"]
    apply_freeze(groups, trainable)
    bn = dict(net.named_buffers())
    before = {k: v.clone() for k, v in bn.items()}
    net.train()  # nnU-Net calls this every epoch: it would put the frozen BN layers back in train mode
    n = freeze_norms(net, groups, trainable)
    assert n == 6  # two convs in each of the three encoder stages
    with torch.no_grad():
        net(torch.randn(2, 1, 8, 16, 16))
    for k, v in net.named_buffers():
        if k.startswith("encoder.") and "running" in k:
            assert torch.equal(v, before[k]), k
        if k.startswith("decoder.stages.") and "running_mean" in k:
            assert not torch.equal(v, before[k]), k


def _ddp_unfreeze_worker(rank: int, world: int, port: str, out: str) -> None:
    import os

    import torch.distributed as dist
    from helpers import make_unet

    from nnunet_transfer.core.schedules.schedule import rewrap_ddp

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        net = make_unet(seed=0)  # same start on both ranks, as after loading the same checkpoint
        groups = derive_groups(net)
        recipe = _recipe(phases=[{"start_epoch": 0, "unfreeze": ["decoder.*", "heads"]},
                                 {"start_epoch": 1, "unfreeze": ["encoder.*"]}])
        s = resolve_schedule(recipe, [g.name for g in groups], 4, 0.01)
        opt = build_optimizer(groups, s)
        sched = PerGroupLRScheduler(opt, s)
        apply_freeze(groups, s.trainable(0))
        ddp = nn.parallel.DistributedDataParallel(torch.compile(net, backend="eager"))
        gen = torch.Generator().manual_seed(100 + rank)  # different data on each rank
        for epoch in range(3):
            if apply_freeze(groups, s.trainable(epoch)):
                ddp = rewrap_ddp(ddp)
            sched.step(epoch)
            for _ in range(2):
                opt.zero_grad(set_to_none=True)
                sum(o.square().mean() for o in ddp(torch.randn(2, 1, 8, 16, 16, generator=gen))).backward()
                opt.step()
        torch.save(net.state_dict(), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_parameters_unfrozen_under_ddp_stay_synchronised(tmp_path):
    import socket

    import torch.multiprocessing as mp
    from helpers import make_unet

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    mp.spawn(_ddp_unfreeze_worker, args=(2, port, str(tmp_path / "out")), nprocs=2, join=True)
    r0, r1 = (torch.load(f"{tmp_path / 'out'}.{r}", weights_only=True) for r in (0, 1))
    start = make_unet(seed=0).state_dict()
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    enc = "encoder.stages.0.0.convs.0.conv.weight"
    assert not torch.equal(r0[enc], start[enc])  # the unfrozen encoder did train, identically on both ranks


@pytest.mark.parametrize("backend", [
    "aot_eager",
    pytest.param("inductor", marks=pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                                                      reason="inductor on CPU needs a C++ compiler")),
])
def test_compiled_network_follows_freeze_changes(unet_factory, backend):
    """torch.compile keeps working across an unfreeze: the compiled network trains exactly the groups the eager one
    trains, to the same values. ``aot_eager`` is dynamo + AOTAutograd (where requires_grad matters); ``inductor`` is
    what nnU-Net uses (on GPU; here its CPU code generation)."""
    torch._dynamo.reset()
    recipe = _recipe(phases=[{"start_epoch": 0, "unfreeze": ["decoder.*", "heads"]},
                             {"start_epoch": 1, "unfreeze": ["encoder.*"]}])
    runs = {}
    for mode in ("eager", "compiled"):
        net = unet_factory(seed=0)
        start = {n: p.detach().clone() for n, p in net.named_parameters()}
        groups = derive_groups(net)
        s = resolve_schedule(recipe, [g.name for g in groups], 4, 0.01)
        opt = build_optimizer(groups, s)
        sched = PerGroupLRScheduler(opt, s)
        model = torch.compile(net, backend=backend) if mode == "compiled" else net
        snapshots = []
        for epoch in range(3):
            apply_freeze(groups, s.trainable(epoch))
            sched.step(epoch)
            _train_steps(model, opt, n=2)
            snapshots.append({n: p.detach().clone() for n, p in net.named_parameters()})
        runs[mode] = snapshots
    enc = "encoder.stages.0.0.convs.0.conv.weight"
    for epoch, (eager, compiled) in enumerate(zip(runs["eager"], runs["compiled"], strict=True)):
        assert torch.equal(compiled[enc], start[enc]) == (epoch == 0)  # frozen in epoch 0, trains from epoch 1
        for n in eager:
            torch.testing.assert_close(compiled[n], eager[n], rtol=1e-4, atol=1e-6, msg=f"epoch {epoch}: {n}")


def test_schedule_panel_is_added_under_nnunets_plot(tmp_path):
    from PIL import Image

    from nnunet_transfer.core.schedules.plot import add_schedule_panel

    png = tmp_path / "progress.png"
    Image.new("RGBA", (600, 1080), (10, 20, 30, 255)).save(png)
    rows = [{"epoch": e, "lr": {"heads": 0.01 * (1 - e / 4), "encoder.stage0": 0.001 * (e >= 2)},
             "trainable": ["heads"] + (["encoder.stage0"] if e >= 2 else []), "trainable_fraction": 0.3 + 0.7 * (e >= 2)}
            for e in range(4)]
    add_schedule_panel(png, rows)
    with Image.open(png) as out:
        assert out.width == 600 and out.height == 1080 + 210  # panel 0.35 x the width, below the original
        pixels = out.convert("RGBA")
        assert pixels.getpixel((5, 5)) == (10, 20, 30, 255) and pixels.getpixel((599, 1079)) == (10, 20, 30, 255)
        panel = pixels.crop((0, 1080, 600, 1290))
        assert len(panel.getcolors(maxcolors=1 << 20)) > 10  # something was drawn there
    assert sorted(p.name for p in tmp_path.iterdir()) == ["progress.png"]  # no temporary file left
