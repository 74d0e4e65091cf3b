"""Frozen skips (core/schedules/skips.py): decoder convolutions over cat(upsampled, skip) compute no input gradient
for a skip whose encoder side is frozen; outputs, gradients, parameters and checkpoints stay those of the stock
network. Real dynamic_network_architectures networks, 2d and 3d."""

from __future__ import annotations

import io
import shutil

import pytest
import torch
import torch.distributed as dist
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from helpers import build_trainer
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from nnunet_transfer.core.architectures import (
    ArchitectureSpec,
    SkipFusion,
    architecture_for,
    register_architecture,
    unregister_architecture,
)
from nnunet_transfer.core.modules import unwrap_network
from nnunet_transfer.core.schedules.recipes import RECIPE_ENV_VAR, load_recipe
from nnunet_transfer.core.schedules.skips import (
    SplitSkipConv2d,
    SplitSkipConv3d,
    disable_skip_split,
    split_skip_convs,
    update_skip_split,
)
from nnunet_transfer.errors import ArchitectureError, RecipeError

N_STAGES = 4
# float32: the split sums each output over two halves of the input channels, in another order than one convolution;
# the gradients of a bias before InstanceNorm are pure rounding noise (their true value is 0), so the tolerance is
# relative to the largest magnitude among all the tensors compared, not to each tensor's own
REL_TOL = 1e-5


def assert_all_close(got: dict[str, torch.Tensor | None], want: dict[str, torch.Tensor | None]) -> None:
    """Same keys, None in the same places, and max |got - want| <= REL_TOL * max |want| over all tensors."""
    assert list(got) == list(want)
    assert [k for k, v in got.items() if v is None] == [k for k, v in want.items() if v is None]
    scale = max(v.abs().max().item() for v in want.values() if v is not None)
    for k, v in got.items():
        if v is not None:
            diff = (v - want[k]).abs().max().item()
            assert diff <= REL_TOL * scale, f"{k}: max difference {diff:.3g}, scale {scale:.3g}"


def build(residual: bool, dim: int = 3, seed: int = 0) -> nn.Module:
    """A 4-stage PlainConvUNet / ResidualEncoderUNet with nnU-Net's default blocks, deep supervision, 2d or 3d."""
    torch.manual_seed(seed)
    conv, norm = (nn.Conv2d, nn.InstanceNorm2d) if dim == 2 else (nn.Conv3d, nn.InstanceNorm3d)
    cls = ResidualEncoderUNet if residual else PlainConvUNet
    blocks = {"n_blocks_per_stage": [1, 2, 2, 2]} if residual else {"n_conv_per_stage": [2] * N_STAGES}
    return cls(input_channels=2, n_stages=N_STAGES, features_per_stage=[4, 8, 12, 16], conv_op=conv,
               kernel_sizes=[[3] * dim] * N_STAGES, strides=[[1] * dim] + [[2] * dim] * (N_STAGES - 1), num_classes=3,
               n_conv_per_stage_decoder=[2] * (N_STAGES - 1), conv_bias=True, norm_op=norm,
               norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True},
               deep_supervision=True, **blocks)


def batch(dim: int, seed: int = 1) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """An input and one random weighting per deep-supervision output (a loss that reaches every output element)."""
    gen = torch.Generator().manual_seed(seed)
    shape = (2, 2) + (16,) * dim
    weights = [torch.randn((2, 3) + (16 // 2**i,) * dim, generator=gen) for i in range(N_STAGES - 1)]
    return torch.randn(shape, generator=gen), weights


def step(net: nn.Module, x: torch.Tensor, weights: list[torch.Tensor]):
    """Forward and backward: the outputs and the gradient of every parameter (None where none was computed)."""
    net.zero_grad(set_to_none=True)
    out = net(x)
    sum((o * w).sum() for o, w in zip(out, weights, strict=True)).backward()
    return [o.detach() for o in out], {n: p.grad for n, p in unwrap_network(net).named_parameters()}


def freeze(net: nn.Module, frozen: set[str]) -> None:
    """Freeze the encoder modules named (``stem`` if the network has one, ``0``..``3``); everything else trains."""
    enc = net.encoder
    modules = {"stem": enc.stem} if getattr(enc, "stem", None) is not None else {}
    modules.update({str(i): s for i, s in enumerate(enc.stages)})
    for p in net.parameters():
        p.requires_grad_(True)
    for name in frozen & set(modules):
        for p in modules[name].parameters():
            p.requires_grad_(False)


def expected_split(net: nn.Module, frozen: set[str]) -> list[str]:
    """Decoder stage s fuses the skip of encoder stage n-2-s: split iff the stem and stages 0..n-2-s are all frozen."""
    upstream = ["stem"] if getattr(net.encoder, "stem", None) is not None else []
    return [f"decoder.stages.{s}.convs.0.conv" for s in range(N_STAGES - 1)
            if set(upstream + [str(k) for k in range(N_STAGES - 1 - s)]) <= frozen]


FREEZE_STATES = {
    "nothing": set(),
    "encoder": {"stem", "0", "1", "2", "3"},
    # progressive, deepest first, half way: the bottleneck and stage 2 train, the shallow stages are still frozen
    "progressive": {"stem", "0", "1"},
    "progressive_one_left": {"stem", "0"},
    "shallow_trains": {"1", "2", "3"},  # stage 0 (and the stem) train: no skip is free of gradient
    "stem_trains": {"0", "1", "2", "3"},  # ResEnc: the stem trains, every skip needs its gradient
}
ARCHS = [pytest.param(r, d, id=f"{'resenc' if r else 'plain'}-{d}d") for r in (False, True) for d in (2, 3)]


@pytest.mark.parametrize(("residual", "dim"), ARCHS)
@pytest.mark.parametrize("state", list(FREEZE_STATES))
def test_split_outputs_and_gradients_equal_the_stock_network(residual, dim, state):
    frozen = FREEZE_STATES[state]
    net = build(residual, dim)
    x, w = batch(dim)
    freeze(net, frozen)
    ref_out, ref_grads = step(net, x, w)
    assert update_skip_split(net) == len(expected_split(net, frozen))
    assert split_skip_convs(net) == expected_split(net, frozen)
    out, grads = step(net, x, w)
    assert all(torch.equal(a, b) for a, b in zip(out, ref_out, strict=True))  # the forward is the stock one
    assert_all_close(grads, ref_grads)
    assert disable_skip_split(net) == len(expected_split(net, frozen))
    assert split_skip_convs(net) == []


def test_encoder_frozen_splits_every_decoder_stage_2d_and_3d():
    """The registry knows both layouts: ResEnc's stem is upstream of every skip, PlainConvUNet has none."""
    for residual, dim in ((False, 2), (True, 3)):
        net = build(residual, dim)
        fusions = architecture_for(net).skip_fusions(net)
        stem = ("encoder.stem",) if residual else ()
        assert fusions == [SkipFusion("decoder.stages.0.convs.0.conv", 12, (*stem, *(f"encoder.stages.{k}"
                                                                                      for k in range(3)))),
                           SkipFusion("decoder.stages.1.convs.0.conv", 8, (*stem, "encoder.stages.0",
                                                                           "encoder.stages.1")),
                           SkipFusion("decoder.stages.2.convs.0.conv", 4, (*stem, "encoder.stages.0"))]
        freeze(net, FREEZE_STATES["encoder"])
        assert update_skip_split(net) == 3
        assert type(net.decoder.stages[2].convs[0].conv) is (SplitSkipConv3d if dim == 3 else SplitSkipConv2d)


class _ConvCalls(TorchDispatchMode):
    """Records, for every (non-transposed) convolution backward, the weight's output and input channels and whether
    it computed the input gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, int, bool]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution_backward.default and not args[7]:
            self.calls.append((args[2].shape[0], args[2].shape[1], bool(args[10][0])))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("split", [False, True])
def test_the_skip_halfs_input_gradient_is_not_computed(split):
    """With the split, no decoder convolution computes an input gradient over its whole (upsampled + skip) input:
    its backward computes the weight gradient over the whole input and the input gradient over the upsampled half
    only. Without it, autograd computes the input gradient of the whole concatenation."""
    net = build(residual=False, dim=3)
    x, w = batch(3)
    freeze(net, FREEZE_STATES["encoder"])
    if split:
        update_skip_split(net)
    with _ConvCalls() as calls:
        step(net, x, w)
    fused = [c for c in calls.calls if c[1] == 2 * c[0]]  # over cat(upsampled, skip): decoder stages 0, 1, 2
    if split:  # weight (and bias) gradient over the whole input; input gradient with the upsampled half W[:, :c]
        assert sorted(fused) == [(4, 8, False), (8, 16, False), (12, 24, False)]
        assert {(4, 4, True), (8, 8, True), (12, 12, True)} <= set(calls.calls)
    else:
        assert sorted(fused) == [(4, 8, True), (8, 16, True), (12, 24, True)]
        assert all(need for *_, need in calls.calls)  # every decoder convolution computes its input gradient


def test_under_autocast_the_split_runs_in_the_autocast_dtype_as_the_stock_convolution():
    """nnU-Net trains under autocast on CUDA; on CPU, bfloat16 autocast takes the same path: same outputs (bit for
    bit), gradients within bfloat16 rounding, in the parameters' own dtype."""
    net = build(residual=False, dim=3)
    x, w = batch(3)
    freeze(net, FREEZE_STATES["encoder"])
    runs = []
    for split in (False, True):
        if split:
            assert update_skip_split(net) == 3
        with torch.autocast("cpu", dtype=torch.bfloat16):
            runs.append(step(net, x, w))
    (ref_out, ref_grads), (out, grads) = runs
    assert all(o.dtype == torch.bfloat16 and torch.equal(o, r) for o, r in zip(out, ref_out, strict=True))
    assert all(g.dtype == torch.float32 for g in grads.values() if g is not None)
    scale = max(g.abs().max().item() for g in ref_grads.values() if g is not None)
    for k, g in grads.items():
        assert (g is None) == (ref_grads[k] is None), k
        if g is not None:
            assert (g - ref_grads[k]).abs().max().item() <= 2e-2 * scale, k  # bfloat16: 8 bits of mantissa


def test_parameters_names_and_state_dict_do_not_change():
    net = build(residual=True, dim=3)
    freeze(net, FREEZE_STATES["encoder"])
    params = list(net.named_parameters())
    aliases = [n for n, _ in net.named_modules(remove_duplicate=False)]
    state = {k: v.clone() for k, v in net.state_dict().items()}
    conv = net.decoder.stages[0].convs[0].conv
    assert update_skip_split(net) == 3
    assert net.decoder.stages[0].convs[0].all_modules[0] is conv  # the same object, both aliases
    assert [(n, id(p)) for n, p in net.named_parameters()] == [(n, id(p)) for n, p in params]
    assert [n for n, _ in net.named_modules(remove_duplicate=False)] == aliases
    after = net.state_dict()
    assert list(after) == list(state)
    for k, v in after.items():
        assert torch.equal(v, state[k]), k
    assert update_skip_split(net) == 3  # idempotent
    freeze(net, FREEZE_STATES["nothing"])
    assert update_skip_split(net) == 0  # the encoder trains again: its own class back
    assert type(conv) is nn.Conv3d and not hasattr(conv, "_skip_up_channels")


def test_eval_and_no_grad_run_the_stock_forward_bit_for_bit():
    net = build(residual=False, dim=3)
    x, _ = batch(3)
    freeze(net, FREEZE_STATES["encoder"])
    with torch.no_grad():
        ref = net(x)
    update_skip_split(net)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(net(x), ref, strict=True))
    net.eval()
    with torch.inference_mode():
        assert all(torch.equal(a, b) for a, b in zip(net(x), ref, strict=True))


def test_checkpoint_written_with_the_split_loads_into_a_stock_network_and_predicts_the_same():
    net = build(residual=True, dim=3)
    x, w = batch(3)
    freeze(net, FREEZE_STATES["progressive"])
    assert update_skip_split(net) == 2  # the skips of stages 0 and 1
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    step(net, x, w)
    opt.step()
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    fresh = build(residual=True, dim=3, seed=5)
    fresh.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    assert not split_skip_convs(fresh)
    net.eval()
    fresh.eval()
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(net(x), fresh(x), strict=True))


class _OwnForwardUNet(PlainConvUNet):
    """A user's subclass that changes what the decoder sees: the registry cannot know where its skips are."""

    def forward(self, x):
        return self.decoder([s * 2 for s in self.encoder(x)])


def test_off_for_architectures_it_does_not_know():
    torch.manual_seed(0)
    net = _OwnForwardUNet(1, 3, [4, 8, 16], nn.Conv3d, 3, [1, 2, 2], 2, 3, 1, True, nn.InstanceNorm3d,
                          {"affine": True}, nonlin=nn.LeakyReLU, deep_supervision=True)
    assert architecture_for(net).name == "PlainConvUNet"
    assert architecture_for(net).skip_fusions(net) == []
    for p in net.encoder.parameters():
        p.requires_grad_(False)
    assert update_skip_split(net) == 0 and split_skip_convs(net) == []
    other = nn.Sequential(nn.Conv3d(1, 4, 3), nn.Conv3d(4, 2, 1))
    assert architecture_for(other).name == "generic" and update_skip_split(other) == 0


def test_a_registered_spec_naming_a_missing_or_unfit_conv_is_an_error():
    net = build(residual=False, dim=3)
    for fusion, match in ((SkipFusion("decoder.nope", 4, ("encoder.stages.0",)), "no submodule"),
                          (SkipFusion("decoder.stages.2.convs.0.conv", 8, ("encoder.stages.0",)), "up_channels=8"),
                          (SkipFusion("decoder.stages.2.convs.0.conv", 4, ("encoder.nope",)), "names 'encoder.nope'")):
        spec = ArchitectureSpec("Custom", lambda n: True, skip_fusions=lambda n, f=fusion: [f])
        with pytest.raises(ArchitectureError, match=match):
            update_skip_split(net, spec)
    register_architecture(ArchitectureSpec("Custom", lambda n: isinstance(n, PlainConvUNet), skip_fusions=lambda n: [
        SkipFusion("decoder.stages.2.convs.0.conv", 4, ("encoder.stages.0",))]))
    try:
        freeze(net, {"0"})
        assert update_skip_split(net) == 1  # the registered spec decides
    finally:
        unregister_architecture("Custom")
        disable_skip_split(net)


def _counting_backend(backend: str, ran: list[int]):
    """A dynamo backend that runs ``backend`` and records, at every call, the custom autograd functions (the split
    convolutions) in the graph it runs."""
    from torch._dynamo.backends.registry import lookup_backend

    def compiler(gm: torch.fx.GraphModule, example_inputs):
        convs = sum(1 for n in gm.graph.nodes if n.op == "call_function" and "autograd_function" in str(n.target))
        compiled = lookup_backend(backend)(gm, example_inputs)

        def run(*args):
            ran.append(convs)
            return compiled(*args)

        return run

    return compiler


@pytest.mark.parametrize("backend", [
    "aot_eager",
    pytest.param("inductor", marks=pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                                                      reason="inductor on CPU needs a C++ compiler")),
])
def test_compiled_network_follows_split_changes(backend):
    """Under torch.compile, splitting and unsplitting retrigger compilation (and a state seen before reuses its
    graph): each call runs the graph of the current state, with the eager network's outputs and gradients."""
    torch._dynamo.reset()
    net = build(residual=False, dim=3)
    x, w = batch(3)
    ran: list[int] = []
    compiled = torch.compile(net, backend=_counting_backend(backend, ran))
    for frozen in ("nothing", "encoder", "progressive_one_left", "nothing", "encoder"):
        freeze(net, FREEZE_STATES[frozen])
        n_split = update_skip_split(net)
        ref_out, ref_grads = step(net, x, w)
        ran.clear()
        out, grads = step(compiled, x, w)
        assert ran and sum(ran) == n_split, frozen  # the graph of the current state runs
        assert_all_close(dict(enumerate(out)), dict(enumerate(ref_out)))
        assert_all_close(grads, ref_grads)
    torch._dynamo.reset()


@pytest.fixture
def gloo(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg_store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("compiled", [False, True])
def test_ddp_trains_with_the_split_and_no_unused_parameters(gloo, compiled):
    """DDP (find_unused_parameters=False) over the split network trains exactly as the stock network without DDP."""
    torch._dynamo.reset()
    x, w = batch(3)
    results = []
    for split in (False, True):
        net = build(residual=True, dim=3)
        freeze(net, FREEZE_STATES["progressive"])
        model = net
        if split:
            assert update_skip_split(net) == 2
            inner = torch.compile(net, backend="aot_eager") if compiled else net
            model = nn.parallel.DistributedDataParallel(inner, find_unused_parameters=False)
        opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
        for _ in range(2):
            step(model, x, w)
            opt.step()
        results.append(net.state_dict())
    assert_all_close(results[1], results[0])
    start = build(residual=True, dim=3).state_dict()
    for prefix in ("encoder.stages.3.", "encoder.stages.2.", "decoder.stages.0.", "decoder.stages.2."):  # trained
        assert any(not torch.equal(v, start[k]) for k, v in results[1].items() if k.startswith(prefix)), prefix
    assert all(torch.equal(v, start[k]) for k, v in results[1].items() if k.startswith("encoder.stages.1."))
    torch._dynamo.reset()


# --- the trainer ---------------------------------------------------------------------------------------------------
PROGRESSIVE = """name: skips
pretrained: {required: false}
split_frozen_skips: SWITCH
phases:
  - {start_epoch: 0, unfreeze: ['decoder.*', 'heads']}
  - {start_epoch: 1, unfreeze: ['encoder.stage2']}
  - {start_epoch: 2, unfreeze: ['encoder.stage1']}
  - {start_epoch: 3, unfreeze: ['encoder.stage0']}
"""


@pytest.mark.parametrize("switch", [True, False])
def test_trainer_follows_progressive_unfreezing_and_the_recipe_switch(tmp_path, monkeypatch, switch):
    recipe = tmp_path / "skips.yaml"
    recipe.write_text(PROGRESSIVE.replace("SWITCH", str(switch).lower()))
    monkeypatch.setenv(RECIPE_ENV_VAR, str(recipe))
    trainer = build_trainer(tmp_path, monkeypatch)
    keys = list(trainer.network.state_dict())
    counts = []
    for epoch in range(4):
        trainer._set_trainable(epoch)
        counts.append(len(split_skip_convs(trainer.network)))
    # 3 stages: decoder stage 0 fuses encoder stage 1's skip, decoder stage 1 encoder stage 0's
    assert counts == ([2, 2, 1, 0] if switch else [0, 0, 0, 0])
    trainer._set_trainable(0)
    assert list(trainer.network.state_dict()) == keys
    fresh = trainer.build_network_architecture(trainer.plans_manager, trainer.configuration_manager,
                                               trainer.num_input_channels,
                                               trainer.label_manager.num_segmentation_heads, True)
    fresh.load_state_dict(trainer.network.state_dict())  # strict: the checkpoint's keys are the stock network's
    assert not split_skip_convs(fresh)


def test_recipe_switch_defaults_on_and_validates(tmp_path):
    assert load_recipe("default").split_frozen_skips is True
    path = tmp_path / "r.yaml"
    path.write_text("name: r\nsplit_frozen_skips: false\n")
    assert load_recipe(path).split_frozen_skips is False
    path.write_text("name: r\nsplit_frozen_skips: sometimes\n")
    with pytest.raises(RecipeError, match="split_frozen_skips"):
        load_recipe(path)
