"""LoRA adapters (issue 21): exact at the start, exact when merged, pretrained weights fixed, adapters on the
schedule, resumable; the loader counts pretrained weights only. Real networks, real peft, no mocks."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import build_trainer, make_unet, trainer_folders
from nnssl_data import primus_network

from nnunet_transfer.core.adapters import (
    adapter_layers,
    adapter_targets,
    from_peft_key,
    has_adapters,
    inject_adapters,
    is_adapter_key,
    merge_adapters,
    merge_lora_weights,
    plain_key,
    to_peft_key,
)
from nnunet_transfer.core.loading.loader import load_pretrained
from nnunet_transfer.core.schedules.engine import FineTuneEngine
from nnunet_transfer.core.schedules.recipes import Adapters, Recipe, load_recipe
from nnunet_transfer.errors import RecipeError
from nnunet_transfer.trainers.variants import nnUNetTrainerAdaptiveFT_LoRA

#: merged against unmerged outputs, float32: max |difference| <= MERGE_BOUND * max |output| (docs/adapters.md)
MERGE_BOUND = 1e-5

NETWORKS = {
    "PlainConvUNet": lambda: make_unet(features=(4, 8, 16)),
    "ResidualEncoderUNet": lambda: make_unet(features=(4, 8, 16), residual=True),
    "Primus": lambda: primus_network(),
}


def outputs(net: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        y = net(x)
    return list(y) if isinstance(y, list | tuple) else [y]


def moved(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """The adapters of ``net`` set to random values, as after training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in adapter_layers(net).values():
            for w in (layer.lora_A["default"].weight, layer.lora_B["default"].weight):
                w.copy_(torch.randn(w.shape, generator=g) * 0.2)
    return net


@pytest.mark.parametrize("family", list(NETWORKS))
def test_adapted_network_starts_exactly_as_the_pretrained_one(family):
    base = NETWORKS[family]().eval()
    adapted = copy.deepcopy(base)
    names = inject_adapters(adapted, Adapters(rank=4, dropout=0.1))
    assert names and has_adapters(adapted) and not has_adapters(base)
    x = torch.randn(2, 1, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    for a, b in zip(outputs(base, x), outputs(adapted.eval(), x), strict=True):
        assert torch.equal(a, b)
    # and the adapters are in the forward pass: moving them moves the output
    assert not torch.equal(outputs(moved(adapted), x)[0], outputs(base, x)[0])


def test_every_alias_of_an_adapted_layer_reaches_its_wrapper():
    net = make_unet()
    inject_adapters(net, Adapters())
    block = net.encoder.stages[0][0].convs[0]
    assert block.all_modules[0] is block.conv and hasattr(block.conv, "lora_A")
    assert net.decoder.encoder is net.encoder


def test_targets_are_encoder_convolutions_only_no_transposed_and_primus_linears():
    unet = make_unet(residual=True)
    names = adapter_targets(unet, Adapters())
    assert names and all(n.startswith("encoder.") for n in names)
    assert not any("transpconvs" in n for n in adapter_targets(unet, Adapters(targets=["encoder.*", "decoder.*"])))
    primus = adapter_targets(primus_network(), Adapters())
    assert {n.rsplit(".", 1)[-1] for n in primus} >= {"proj", "q_proj", "v_proj", "fc2"}  # fused qkv: none
    with pytest.raises(RecipeError, match=r"adapters.targets: 'nope\*' matches no parameter group"):
        adapter_targets(unet, Adapters(targets=["nope*"]))


@pytest.mark.parametrize("family", list(NETWORKS))
def test_merged_equals_unmerged_within_the_bound_and_is_a_plain_network(family):
    base = NETWORKS[family]().eval()
    adapted = moved(copy.deepcopy(base))
    inject_adapters(adapted, Adapters(rank=4, alpha=8))
    moved(adapted)
    x = torch.randn(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(2))
    before = outputs(adapted.eval(), x)
    weights = merge_lora_weights(adapted.state_dict(), Adapters(rank=4, alpha=8))
    assert merge_adapters(adapted) > 0 and not has_adapters(adapted)
    assert list(adapted.state_dict()) == list(base.state_dict())  # the plain network's names
    after = outputs(adapted, x)
    for a, b in zip(before, after, strict=True):
        assert (a - b).abs().max() <= MERGE_BOUND * a.abs().max(), (a - b).abs().max()
    # the state-dict merge (share, export: no peft needed) is the same computation, bit for bit
    for k, v in adapted.state_dict().items():
        assert torch.equal(weights[k], v), k


def test_peft_key_names():
    key = "encoder.stages.0.0.convs.0.conv.lora_A.default.weight"
    assert is_adapter_key(key) and not is_adapter_key("encoder.stages.0.0.convs.0.conv.base_layer.weight")
    assert to_peft_key(key) == "encoder.stages.0.0.convs.0.conv.lora_A.weight"
    assert from_peft_key(to_peft_key(key)) == key
    assert plain_key("a.conv.base_layer.weight") == "a.conv.weight"


def test_pretrained_weights_load_into_the_base_layers_and_adapters_are_new(tmp_path):
    pretrained = make_unet(seed=3)
    torch.save({"network_weights": pretrained.state_dict()}, tmp_path / "ckpt.pth")
    net = make_unet(seed=4)
    inject_adapters(net, Adapters())
    report = load_pretrained(net, tmp_path / "ckpt.pth")  # no label names: heads of the same shape load
    assert report.coverage == 1.0 and report.counts()["missing"] == 0
    new = [r for r in report.tensors if r.status == "new"]
    assert new and all(r.code == "adapter" and is_adapter_key(r.key) for r in new)
    assert len(new) == 2 * len(adapter_layers(net))
    assert "new adapter tensors" in report.summary()
    x = torch.randn(1, 1, 16, 16, 16)
    for a, b in zip(outputs(pretrained.eval(), x), outputs(net.eval(), x), strict=True):
        assert torch.equal(a, b)


def _step(net: torch.nn.Module, engine: FineTuneEngine, x: torch.Tensor) -> None:
    engine.optimizer.zero_grad()
    sum(o.square().mean() for o in net(x)).backward()
    engine.optimizer.step()


def test_pretrained_weights_stay_fixed_while_adapters_norms_and_decoder_train():
    net = make_unet()
    inject_adapters(net, Adapters())
    engine = FineTuneEngine(net, load_recipe("lora"), 10, 0.01)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(2, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    net.train()
    for _ in range(3):
        _step(net, engine, x)
    after = net.state_dict()
    fixed = [k for k in after if k.startswith("encoder.") and k.endswith("base_layer.weight")]
    assert fixed and all(torch.equal(before[k], after[k]) for k in fixed)
    for part in ("lora_B.default.weight", "decoder.stages.0", "encoder.stages.0.0.convs.0.norm.weight",
                 "base_layer.bias"):
        keys = [k for k in after if part in k and after[k].is_floating_point()]
        assert keys and any(not torch.equal(before[k], after[k]) for k in keys), part
    optimized = {id(p) for pg in engine.optimizer.param_groups for p in pg["params"]}
    assert not any(id(p) in optimized for g in engine.groups for p in g.fixed)
    total = sum(p.numel() for p in net.parameters())
    assert engine.trainable_fraction() == pytest.approx(sum(g.numel for g in engine.groups) / total)


def test_without_train_norms_only_the_adapters_of_a_targeted_group_train():
    net = make_unet()
    inject_adapters(net, Adapters(train_norms=False))
    recipe = Recipe(name="t", adapters=Adapters(train_norms=False))
    engine = FineTuneEngine(net, recipe, 10, 0.01)
    for g in engine.groups:
        if g.name.startswith("encoder."):
            assert g.names and all(is_adapter_key(n) for n in g.names)
            assert all(not p.requires_grad for p in g.fixed)


def test_progressive_schedule_unfreezes_adapter_groups_on_its_epochs():
    recipe = Recipe.model_validate({**load_recipe("default").scaled(8).model_dump(), "adapters": {"rank": 2}})
    net = make_unet()
    inject_adapters(net, recipe.adapters)
    engine = FineTuneEngine(net, recipe, 8, 0.01)
    starts = engine.schedule.unfreeze_epoch
    assert sorted({starts[f"encoder.stage{i}"] for i in range(3)}) == [1, 2, 3]  # deepest first, one per epoch
    for epoch in range(8):
        engine.set_trainable(epoch)
        for g in engine.groups:
            on = starts[g.name] <= epoch
            assert all(p.requires_grad == on for p in g.params), (epoch, g.name)
            assert not any(p.requires_grad for p in g.fixed)
        lora = [p for n, p in net.named_parameters() if is_adapter_key(n) and n.startswith("encoder.stages.2.")]
        assert all(p.requires_grad == (starts["encoder.stage2"] <= epoch) for p in lora)


def test_recipe_with_adapters_on_a_network_without_them_is_refused():
    with pytest.raises(RecipeError, match="holds no adapter layers there"):
        FineTuneEngine(make_unet(), load_recipe("lora"), 10, 0.01)


def _train_epoch(engine: FineTuneEngine, net: torch.nn.Module, epoch: int, x: torch.Tensor) -> None:
    engine.set_trainable(epoch)
    engine.step(epoch)
    net.train()
    engine.norms_to_eval()
    engine.record(epoch)
    _step(net, engine, x)


def test_resumed_lora_run_has_the_same_table_and_weights(tmp_path):
    recipe = Recipe.model_validate({**load_recipe("default").scaled(6).model_dump(), "adapters": {"rank": 2}})
    x = torch.randn(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))

    def network(seed: int) -> torch.nn.Module:
        net = make_unet(seed=seed)
        inject_adapters(net, recipe.adapters)
        return net

    nets = [network(0), network(0)]
    whole, first = (FineTuneEngine(n, recipe, 6, 0.01) for n in nets)
    for epoch in range(3):
        _train_epoch(whole, nets[0], epoch, x)
        _train_epoch(first, nets[1], epoch, x)
    torch.save({"engine": first.state_dict(), "model": nets[1].state_dict()}, tmp_path / "state.pth")
    saved = torch.load(tmp_path / "state.pth", weights_only=True)
    net = network(9)
    net.load_state_dict(saved["model"])  # strictly: the adapters are in the checkpoint
    resumed = FineTuneEngine(net, recipe, 6, 0.01)
    resumed.load_state_dict(saved["engine"])
    for epoch in range(3, 6):
        _train_epoch(whole, nets[0], epoch, x)
        _train_epoch(resumed, net, epoch, x)
    assert resumed.records == whole.records and len({tuple(r["trainable"]) for r in whole.records}) > 1
    for (name, a), b in zip(nets[0].state_dict().items(), net.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_lora_trainer_builds_adapters_and_its_checkpoint_resumes_them(tmp_path, monkeypatch):
    trainer = build_trainer(tmp_path, monkeypatch, nnUNetTrainerAdaptiveFT_LoRA)
    assert has_adapters(trainer.network)
    assert trainer.plans_manager.plans["nnunet_transfer_recipe"]["adapters"]["rank"] == 8
    x = torch.randn(2, 1, 32, 32, 32)
    trainer.network.train()
    _step(trainer.network, trainer.engine, x)
    trainer.save_checkpoint(str(tmp_path / "ckpt.pth"))
    resumed = build_trainer(tmp_path, monkeypatch, nnUNetTrainerAdaptiveFT_LoRA, continue_training=True)
    resumed.load_checkpoint(str(tmp_path / "ckpt.pth"))
    for (name, a), b in zip(trainer.network.state_dict().items(), resumed.network.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
    assert any(is_adapter_key(k) for k in resumed.network.state_dict())
    # the predictor's path: the static build from the plans alone gives the same (unmerged) layout
    net = nnUNetTrainerAdaptiveFT_LoRA.build_network_architecture(
        trainer.plans_manager, trainer.configuration_manager, 1, 3, False)
    net.load_state_dict(trainer.network.state_dict(), strict=True)


_NO_PEFT = "import sys; sys.modules['peft'] = None; "


def test_load_encoder_of_a_lora_fold_is_the_plain_merged_encoder_even_without_peft(tmp_path, monkeypatch):
    """``load_encoder`` on a LoRA trainer's checkpoint: the adapters merged (the plans' recipe gives their scale),
    the encoder a plain one computing what the adapted encoder computes; peft not needed for that."""
    from nnunet_transfer.encoders import load_encoder

    trainer = build_trainer(tmp_path, monkeypatch, nnUNetTrainerAdaptiveFT_LoRA)
    moved(trainer.network)
    ckpt = tmp_path / "lora_fold.pth"
    trainer.save_checkpoint(str(ckpt))
    x = torch.randn(1, 1, 32, 32, 32)
    trainer.network.eval()
    with torch.no_grad():
        want = trainer.network.encoder(x)[-1]
    bundle = load_encoder(ckpt)
    assert not has_adapters(bundle.encoder) and bundle.report.passed
    assert any("LoRA adapters merged" in n for n in bundle.notes)
    with torch.no_grad():
        got = bundle.encoder(x)
    assert (got - want).abs().max() <= MERGE_BOUND * want.abs().max()
    with torch.no_grad():  # the adapters matter: without them the encoder computes something else
        for layer in adapter_layers(trainer.network).values():
            layer.lora_B["default"].weight.zero_()
        base = trainer.network.encoder(x)[-1]
    assert (base - want).abs().max() > 1000 * MERGE_BOUND * want.abs().max()

    torch.save(x, tmp_path / "x.pt")
    code = _NO_PEFT + ("import torch; from nnunet_transfer.encoders import load_encoder; "
                       "b = load_encoder(sys.argv[1]); torch.save(b.encoder(torch.load(sys.argv[2])), sys.argv[3])")
    proc = subprocess.run([sys.executable, "-c", code, str(ckpt), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
                          capture_output=True, text=True, timeout=300, env={**os.environ})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert torch.equal(torch.load(tmp_path / "y.pt"), got)



def test_without_peft_the_lora_trainer_is_refused_with_exit_2_and_nothing_created(tmp_path):
    from helpers import make_plans

    env = {**os.environ, **trainer_folders(tmp_path, make_plans())}
    code = (_NO_PEFT + "from nnunetv2.run.run_training import run_training_entry; sys.argv = ['nnUNetv2_train', "
            "'990', '3d_fullres', '0', '-tr', 'nnUNetTrainerAdaptiveFT_LoRA', '-device', 'cpu']; "
            "run_training_entry()")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if "PeftMissingError" in ln]
    assert len(lines) == 1 and "pip install nnunet-transfer[peft]" in lines[0] and "Traceback" not in proc.stderr
    assert list((tmp_path / "results").iterdir()) == []


def test_without_peft_everything_else_works(tmp_path):
    net = make_unet()
    ckpt = tmp_path / "c.pth"
    torch.save({"network_weights": net.state_dict()}, ckpt)
    code = _NO_PEFT + (
        "import torch, nnunet_transfer, nnunet_transfer.trainers, nnunet_transfer.cli; "
        "from nnunet_transfer.core.adapters import merge_lora_weights, inject_adapters; "
        "from nnunet_transfer.core.schedules.recipes import load_recipe, Adapters; "
        "assert load_recipe('lora').adapters.rank == 8; "
        "from nnunet_transfer.cli import main; assert main(['inspect', sys.argv[1]]) == 0; "
        "import torch.nn as nn\n"
        "try:\n    inject_adapters(nn.Conv3d(1, 1, 1), Adapters())\n"
        "except Exception as e:\n    print(type(e).__name__, e)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(ckpt)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "PeftMissingError LoRA adapters need Hugging Face peft" in proc.stdout
    assert "pip install nnunet-transfer[peft]" in proc.stdout


def test_plans_json_recipe_names_the_adapters(tmp_path, monkeypatch):
    trainer = build_trainer(tmp_path, monkeypatch, nnUNetTrainerAdaptiveFT_LoRA, initialize=False)
    data = json.loads(json.dumps(trainer.plans_manager.plans["nnunet_transfer_recipe"]))
    assert data["adapters"] == {"method": "lora", "rank": 8, "alpha": 16.0, "dropout": 0.0,
                                "targets": ["encoder.*"], "train_norms": True}


def test_adapters_saved_in_peft_format_apply_to_their_base_only(tmp_path):
    from helpers import make_dataset_json, make_plans
    from safetensors.torch import load_file

    from nnunet_transfer.core.adapters import fold_metadata, from_base, save_adapters
    from nnunet_transfer.core.io import sha256_file
    from nnunet_transfer.errors import AdapterError
    from nnunet_transfer.export.adapters import apply_adapters
    from nnunet_transfer.nnunet.networks import build_network

    adapters = Adapters(rank=2, alpha=4)
    plans, dataset_json = make_plans(), make_dataset_json()
    plans["nnunet_transfer_recipe"] = Recipe(name="t", adapters=adapters).model_dump(mode="json", exclude={"source"})
    torch.manual_seed(0)
    base = tmp_path / "base.pth"
    torch.save({"network_weights": build_network(plans, "3d_fullres", dataset_json).state_dict()}, base)
    fold = build_network(plans, "3d_fullres", dataset_json)
    inject_adapters(fold, adapters)
    report = load_pretrained(fold, base, dataset_json["labels"])
    moved(fold)
    with torch.no_grad():  # "trained": the decoder too
        fold.decoder.stages[0].convs[0].conv.weight.add_(1.0)
    keys = from_base(fold.state_dict(), report.to_dict())
    assert keys and all(".base_layer.weight" in k for k in keys)
    meta = fold_metadata(plans, "3d_fullres", "0", dataset_json, "nnUNetTrainerAdaptiveFT_LoRA", 3, [0, 1, 2],
                         {"checkpoint": str(base), "sha256": sha256_file(base)}, keys)
    folder = save_adapters(tmp_path / "adapters", fold.state_dict(), adapters, keys, meta)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", 2, 4)
    stored = load_file(str(folder / "adapter_model.safetensors"))
    assert not keys & set(stored) and any(k.endswith("lora_B.weight") for k in stored)

    out = apply_adapters(base, folder, tmp_path / "full.pth")
    ckpt = torch.load(out, weights_only=False)
    expected = merge_lora_weights(fold.state_dict(), adapters)
    assert ckpt["trainer_name"] == "nnUNetTrainer" and ckpt["network_weights"].keys() == expected.keys()
    assert all(torch.equal(ckpt["network_weights"][k], v) for k, v in expected.items())
    assert "nnunet_transfer_recipe" not in ckpt["init_args"]["plans"]

    other = tmp_path / "other.pth"
    torch.save({"network_weights": build_network(plans, "3d_fullres", dataset_json).state_dict()}, other)
    with pytest.raises(AdapterError, match=r"other.pth: SHA-256 .* is not that of the base checkpoint"):
        apply_adapters(other, folder, tmp_path / "no.pth")
    assert not (tmp_path / "no.pth").exists()


@pytest.mark.parametrize("compiled", [False, True])
def test_lora_under_ddp_and_torch_compile_trains_as_the_plain_module(gloo, compiled):
    """DDP (find_unused_parameters=False, nnU-Net's) over the (compiled) adapted network: the same steps as the plain
    module, the pretrained weights unchanged."""
    torch._dynamo.reset()
    recipe = Recipe.model_validate({**load_recipe("lora").model_dump(), "adapters": {"rank": 2}})
    x = torch.randn(2, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    results = []
    for wrap in (False, True):
        net = make_unet()
        inject_adapters(net, recipe.adapters)
        moved(net)
        start = {k: v.clone() for k, v in net.state_dict().items()}
        engine = FineTuneEngine(net, recipe, 10, 0.01)
        model = net
        if wrap:
            inner = torch.compile(net, backend="aot_eager") if compiled else net
            model = torch.nn.parallel.DistributedDataParallel(inner, find_unused_parameters=False)
        net.train()
        for _ in range(2):
            engine.optimizer.zero_grad()
            sum(o.square().mean() for o in model(x)).backward()
            engine.optimizer.step()
        results.append(net.state_dict())
    for k, v in results[1].items():
        assert torch.allclose(v, results[0][k], rtol=1e-5, atol=1e-6), k
        if k.endswith("base_layer.weight"):
            assert torch.equal(v, start[k]), k
    torch._dynamo.reset()


def test_nnssl_primus_lora_trainer_adapts_the_transformer(tmp_path, monkeypatch):
    import helpers
    from nnssl_data import primus_kwargs

    from nnunet_transfer.trainers.variants import nnUNetTrainerAdaptiveFT_nnsslPrimusLoRA

    make = helpers.make_plans

    def primus_plans(**kw):
        plans = make(**kw)
        conf = plans["configurations"]["3d_fullres"]
        conf["architecture"] = {"network_class_name": "dynamic_network_architectures.architectures.primus.Primus",
                                "_kw_requires_import": [],
                                "arch_kwargs": {**primus_kwargs(), "input_shape": conf["patch_size"]}}
        return plans

    monkeypatch.setattr(helpers, "make_plans", primus_plans)
    trainer = build_trainer(tmp_path, monkeypatch, nnUNetTrainerAdaptiveFT_nnsslPrimusLoRA)
    layers = adapter_layers(trainer.network)
    assert any(n.endswith("attn.q_proj") for n in layers) and any(n.endswith("mlp.fc2") for n in layers)
    assert type(trainer.optimizer).__name__ == "AdamW"
    blocks = [g for g in trainer.engine.groups if g.name.startswith("encoder.stage")]
    assert blocks and all(g.fixed and any(is_adapter_key(n) for n in g.names) for g in blocks)
    heads = next(g for g in trainer.engine.groups if g.name == "heads")
    assert not heads.fixed and not any(is_adapter_key(n) for n in heads.names)
