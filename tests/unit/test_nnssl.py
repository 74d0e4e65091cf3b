"""nnssl (OpenMind) checkpoints: recognised in training and released form, the adaptation plan validated, stem and
encoder loaded exactly into targets of other depth, channels and family, positional embeddings resampled, decoder
and head fresh, bad plans refused."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_clean_error, cli
from nnssl_data import (
    CITATION,
    primus_checkpoint,
    primus_kwargs,
    primus_network,
    resenc_checkpoint,
    resenc_network,
    unet_kwargs,
)

from nnunet_transfer import LoadOptions, load_pretrained, plan_load, read_checkpoint
from nnunet_transfer.cli import main
from nnunet_transfer.core.loading.adapt import adapt_input_channels
from nnunet_transfer.core.nnssl import PRESETS, NnsslError, nnunet_architecture
from nnunet_transfer.errors import LoadGuardError
from nnunet_transfer.nnunet.plans.nnssl import nnunet_plans

STEM = "encoder.stem.convs.0.conv.weight"


def _snapshot(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _records(report):
    return {r.key: r for r in report.tensors}


# --- the format -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["training", "released"])
def test_both_forms_are_recognised_with_their_plan_and_citations(tmp_path, form):
    path, _ = resenc_checkpoint(tmp_path / "checkpoint_final.pth", form=form, citations=[CITATION],
                                recommended=(32, 32, 32), patch=(16, 16, 16), spacing=(1.0, 1.0, 1.0))
    ckpt = read_checkpoint(path)
    info = ckpt.nnssl.describe()
    assert info["form"] == form and info["adaptation_plan"].startswith("embedded")
    assert info["recommended_downstream_patchsize"] == [32, 32, 32] and info["pretrain_patch_size"] == [16, 16, 16]
    assert info["pretrain_spacing"] == [1.0, 1.0, 1.0] and info["pretrain_configuration"] == "onemmiso"
    assert info["keys_to_in_proj"] == ["encoder.stem.convs.0.conv", "encoder.stem.convs.0.all_modules.0"]
    assert info["citations"] == [CITATION]
    assert info["network_class_name"] == "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
    assert ckpt.container == "network_weights" and "optimizer_state" not in ckpt.metadata


def test_plan_beside_the_file_and_the_singular_key_spelling(tmp_path):
    path, _ = primus_checkpoint(tmp_path / "ck" / "checkpoint_final.pth", embed=False, beside=True, singular=True)
    ckpt = read_checkpoint(path)
    assert ckpt.nnssl.plan_source == str(tmp_path / "ck" / "adaptation_plan.json")
    assert ckpt.nnssl.plan.keys_to_in_proj == ("down_projection.proj",)
    assert ckpt.nnssl.plan.key_to_lpe == "eva.pos_embed"
    # without a plan anywhere it is an ordinary checkpoint
    (tmp_path / "ck" / "adaptation_plan.json").unlink()
    assert read_checkpoint(path).nnssl is None


def test_inspect_shows_the_nnssl_facts(tmp_path, capsys):
    path, _ = primus_checkpoint(tmp_path / "checkpoint_final.pth", patch=(32, 32, 32), recommended=(24, 24, 24),
                                citations=[CITATION])
    assert main(["inspect", str(path), "--json", str(tmp_path / "i.json")]) == 0
    out = capsys.readouterr().out
    assert "nnssl:       released form" in out and "recommended patch [24, 24, 24]" in out
    assert "patch [32, 32, 32]" in out and "64 tokens of width 48 (grid 4x4x4)" in out
    assert "citation 1:    An OpenMind for 3D medical vision self-supervised learning, 2025" in out
    info = json.loads((tmp_path / "i.json").read_text())["nnssl"]
    assert info["key_to_lpe"] == "eva.pos_embed" and info["citations"] == [CITATION]


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda p: p["architecture_plans"].update(arch_class_name="NoSuchNet", arch_kwargs=None),
         "architecture_plans.arch_class_name: unknown architecture 'NoSuchNet'"),
        (lambda p: p["architecture_plans"].update(arch_class_name="NoSuchNet"),
         "unknown architecture 'NoSuchNet'"),
        (lambda p: p.update(key_to_encoder="backbone.stages"), "key_to_encoder 'backbone.stages': no tensor"),
        (lambda p: p.update(keys_to_in_proj=["encoder.stem.nothing"]), "keys_to_in_proj 'encoder.stem.nothing'"),
        (lambda p: p.update(recommended_downstream_patchsize=[16, 16]), "recommended_downstream_patchsize"),
        (lambda p: p.pop("key_to_stem"), "nnssl_adaptation_plan.key_to_stem: Field required"),
        (lambda p: p.update(pretrain_plan={"configurations": {}}), "pretrain_plan: needs 'configurations'"),
        (lambda p: p["architecture_plans"]["arch_kwargs"].update(norm_op="torch.nn.NoNorm"),
         "arch_kwargs.norm_op: 'torch.nn.NoNorm' names no importable class"),
    ],
)
def test_bad_adaptation_plans_are_one_clear_error(tmp_path, change, fragment):
    path, _ = resenc_checkpoint(tmp_path / "checkpoint_final.pth")
    ckpt = torch.load(path, weights_only=True)
    change(ckpt["nnssl_adaptation_plan"])
    torch.save(ckpt, path)
    with pytest.raises(NnsslError) as info:
        read_checkpoint(path)
    assert str(path) in str(info.value) and fragment in str(info.value)


def test_bad_plan_exits_2_and_plans_writes_nothing(tmp_path):
    path, _ = resenc_checkpoint(tmp_path / "checkpoint_final.pth")
    ckpt = torch.load(path, weights_only=True)
    ckpt["nnssl_adaptation_plan"]["architecture_plans"] = {"arch_class_name": "PrimusXXL", "arch_kwargs": None}
    torch.save(ckpt, path)
    assert_clean_error(cli("inspect", path), 2, "unknown architecture 'PrimusXXL'")
    roots = {name: tmp_path / name for name in ("raw", "pre", "res")}
    env = {**__import__("os").environ, "nnUNet_raw": str(roots["raw"]), "nnUNet_preprocessed": str(roots["pre"]),
           "nnUNet_results": str(roots["res"])}
    proc = cli("plans", "--from", path, "-t", "950", "-tp", "nnsslX", env=env)
    assert_clean_error(proc, 2, "unknown architecture 'PrimusXXL'", str(path))
    assert not any(r.exists() for r in roots.values())


# --- architecture and plans -------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_build_from_the_plans_entry_alone(preset):
    import pydoc

    plan_dict = {"architecture_plans": {"arch_class_name": preset}, "pretrain_plan": {"configurations": {
        "onemmiso": {"spacing": [1, 1, 1], "patch_size": [160, 160, 160]}}}, "pretrain_num_input_channels": 1,
        "recommended_downstream_patchsize": [160, 160, 160], "key_to_encoder": "e", "key_to_stem": "s",
        "keys_to_in_proj": ["s.p"]}
    from nnunet_transfer.core.nnssl import AdaptationPlan

    arch = nnunet_architecture(AdaptationPlan.model_validate(plan_dict), [96, 96, 96])
    kwargs = dict(arch["arch_kwargs"])
    for k in arch["_kw_requires_import"]:
        kwargs[k] = pydoc.locate(kwargs[k]) if kwargs[k] else None
    with torch.device("meta"):
        net = pydoc.locate(arch["network_class_name"])(input_channels=1, num_classes=2, **kwargs)
    n = sum(p.numel() for p in net.parameters())
    if preset == "ResEncL":
        assert [len(s.blocks) for s in net.encoder.stages] == [1, 3, 4, 6, 6, 6]
        assert net.encoder.output_channels == [32, 64, 128, 256, 320, 320] and 90e6 < n < 110e6
    else:
        dims = {"PrimusS": (396, 12), "PrimusB": (792, 12), "PrimusM": (864, 16), "PrimusL": (1056, 24)}[preset]
        assert net.embed_dim == dims[0] and len(net.eva.blocks) == dims[1]
        assert kwargs["input_shape"] == [96, 96, 96] and net.eva.pos_embed.shape == (1, 12 ** 3, dims[0])


def test_nnunet_plans_of_a_checkpoint(tmp_path):
    path, _ = primus_checkpoint(tmp_path / "c.pth", recommended=(24, 24, 24), spacing=(1.0, 1.0, 1.0))
    plans = nnunet_plans(read_checkpoint(path).nnssl.plan, batch_size=3)
    conf = plans["configurations"]["3d_fullres"]
    assert conf["patch_size"] == [24, 24, 24] and conf["batch_size"] == 3 and conf["spacing"] == [1.0, 1.0, 1.0]
    assert conf["architecture"]["arch_kwargs"]["input_shape"] == [24, 24, 24]
    assert conf["normalization_schemes"] == ["ZScoreNormalization"]


# --- loading ----------------------------------------------------------------------------------------------------


def test_resenc_into_a_deeper_two_channel_target_with_other_blocks(tmp_path):
    path, src = resenc_checkpoint(tmp_path / "c.pth")  # stages 4-8-16, blocks 1-2-2
    target = resenc_network(unet_kwargs(n_stages=4, features=(4, 8, 16, 32), blocks=(1, 1, 3, 1)),
                            input_channels=2, num_classes=3, seed=9)
    before = _snapshot(target)
    report = load_pretrained(target, path, min_coverage=0.0)
    source, after, rec = src.state_dict(), target.state_dict(), _records(report)
    assert torch.equal(after[STEM], adapt_input_channels(source[STEM], 2))
    assert rec[STEM].code == "input_channels"
    for key, value in after.items():
        if key.startswith(("encoder.stem.", "encoder.stages.0.", "encoder.stages.1.blocks.0.",
                           "encoder.stages.2.blocks.0.", "encoder.stages.2.blocks.1.")) and key != STEM \
                and not key.endswith("all_modules.0.weight"):
            assert torch.equal(value, source[key]), key
        elif key.startswith("decoder.") and not key.startswith("decoder.encoder."):
            assert torch.equal(value, before[key]), key  # decoder and heads fresh
    assert torch.equal(after["encoder.stages.2.blocks.2.conv1.conv.weight"],
                       before["encoder.stages.2.blocks.2.conv1.conv.weight"])
    assert rec["encoder.stages.2.blocks.2.conv1.conv.weight"].code == "new_block"
    assert rec["encoder.stages.3.blocks.0.conv1.conv.weight"].code == "new_stage"
    assert rec["decoder.stages.0.convs.0.conv.weight"].code == "pretraining_decoder"
    assert not rec["decoder.stages.0.convs.0.conv.weight"].in_coverage
    assert "encoder.stages.1.blocks.1.conv1.conv.weight" in report.unused_source_keys
    counted = [r for r in report.tensors if r.in_coverage and r.is_parameter]
    assert all(r.key.startswith("encoder.") for r in counted)
    done = sum(r.numel for r in counted if r.status in ("loaded", "adapted"))
    assert report.coverage == pytest.approx(done / sum(r.numel for r in counted))


def test_a_shallower_target_drops_the_deepest_stage_and_passes_the_guard(tmp_path):
    path, src = resenc_checkpoint(tmp_path / "c.pth")
    target = resenc_network(unet_kwargs(n_stages=2), num_classes=2, seed=3)
    report = load_pretrained(target, path)
    assert report.coverage == 1.0
    assert any("stages [2] not loaded" in n for n in report.notes)
    assert torch.equal(target.state_dict()["encoder.stages.1.blocks.1.conv2.conv.weight"],
                       src.state_dict()["encoder.stages.1.blocks.1.conv2.conv.weight"])


def test_kernels_adapted_by_the_exact_rule(tmp_path):
    from nnunet_transfer.core.loading.adapt import adapt_conv_kernel

    path, src = resenc_checkpoint(tmp_path / "c.pth")
    target = resenc_network(unet_kwargs(kernels=[[1, 3, 3], [3, 3, 3], [3, 3, 3]]), num_classes=2, seed=3)
    load_pretrained(target, path)
    key = "encoder.stages.0.blocks.0.conv1.conv.weight"
    assert torch.equal(target.state_dict()[key], adapt_conv_kernel(src.state_dict()[key], (1, 3, 3)))


def test_plainconv_two_channels_every_alias_of_the_stem_updated(tmp_path):
    kwargs = unet_kwargs(blocks=(2, 2, 2), plain=True)
    path, src = resenc_checkpoint(tmp_path / "c.pth", plain=True, kwargs=kwargs)
    target = resenc_network(kwargs, input_channels=2, num_classes=3, seed=4, plain=True)
    report = load_pretrained(target, path)
    first = "encoder.stages.0.0.convs.0.conv.weight"
    expected = adapt_input_channels(src.state_dict()[first], 2)
    sd = target.state_dict()
    for alias in (first, "encoder.stages.0.0.convs.0.all_modules.0.weight",
                  "decoder.encoder.stages.0.0.convs.0.conv.weight"):
        assert torch.equal(sd[alias], expected)
    assert report.coverage == 1.0 and _records(report)[first].code == "input_channels"


def test_contrastive_prefixes_and_load_decoder(tmp_path):
    path, src = resenc_checkpoint(tmp_path / "c.pth", prefix="encoder.")  # encoder.encoder.stages ..., projector
    target = resenc_network(num_classes=2, seed=7)
    report = load_pretrained(target, path)
    key = "encoder.stages.2.blocks.1.conv2.conv.weight"
    assert torch.equal(target.state_dict()[key], src.state_dict()[key]) and report.coverage == 1.0
    # the MAE form with the decoder asked for: decoder loaded where shapes allow, the head never
    path2, src2 = resenc_checkpoint(tmp_path / "d.pth", seed=1)
    target2 = resenc_network(num_classes=2, seed=8)
    before = _snapshot(target2)
    rep2 = load_pretrained(target2, path2, load_decoder=True)
    sd = target2.state_dict()
    assert torch.equal(sd["decoder.stages.0.convs.0.conv.weight"], src2.state_dict()["decoder.stages.0.convs.0.conv.weight"])
    assert torch.equal(sd["decoder.seg_layers.1.weight"], before["decoder.seg_layers.1.weight"])
    assert _records(rep2)["decoder.seg_layers.1.weight"].code == "pretraining_decoder"


def test_wrong_checkpoint_still_fails_the_guard(tmp_path):
    path, _ = primus_checkpoint(tmp_path / "p.pth")
    target = resenc_network(num_classes=2, seed=3)
    before = _snapshot(target)
    with pytest.raises(LoadGuardError, match=r"only 0\.0%"):
        load_pretrained(target, path)
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())


@pytest.mark.parametrize("registers", [0, 1])
def test_primus_pos_embed_resampled_trilinear_from_the_tensor_grid(tmp_path, registers):
    kw = {**primus_kwargs(), "num_register_tokens": registers}
    # the plan says patch 32 (an 8^3 grid) but the embedding holds 4^3 tokens: the tensor decides
    path, src = primus_checkpoint(tmp_path / "p.pth", kwargs=kw, input_shape=(16, 16, 16), patch=(32, 32, 32),
                                  recommended=(24, 24, 24))
    target = primus_network((24, 24, 24), kw, input_channels=2, num_classes=3, seed=5)
    before = _snapshot(target)
    report = load_pretrained(target, path)
    pos = src.state_dict()["eva.pos_embed"]
    grid = pos[:, registers:].reshape(1, 4, 4, 4, 48).permute(0, 4, 1, 2, 3)
    want = F.interpolate(grid, size=(6, 6, 6), mode="trilinear", align_corners=False)
    want = want.permute(0, 2, 3, 4, 1).reshape(1, 216, 48)
    got = target.state_dict()["eva.pos_embed"]
    assert torch.equal(got[:, registers:], want)
    assert torch.equal(got[:, :registers], pos[:, :registers])  # the register tokens' rows, apart
    rec = _records(report)
    assert rec["eva.pos_embed"].code == "pos_embed" and "4x4x4 to a 6x6x6" in rec["eva.pos_embed"].reason
    assert torch.equal(target.state_dict()["down_projection.proj.weight"],
                       adapt_input_channels(src.state_dict()["down_projection.proj.weight"], 2))
    for key in ("eva.blocks.1.attn.q_proj.weight", "eva.norm.weight"):
        assert torch.equal(target.state_dict()[key], src.state_dict()[key])
    for key in ("up_projection.decode.0.0.weight", "up_projection.decode.1.weight"):
        assert torch.equal(target.state_dict()[key], before[key])
    assert report.coverage > 0.99  # register tokens are the target's own (Primus keeps them outside the encoder)


def test_plan_load_is_a_dry_run(tmp_path):
    path, _ = primus_checkpoint(tmp_path / "p.pth")
    target = primus_network((16, 16, 16), num_classes=2, seed=2)
    before = _snapshot(target)
    report, plan = plan_load(target, read_checkpoint(path), None, LoadOptions())
    assert report.passed and plan and all(torch.equal(v, before[k]) for k, v in target.state_dict().items())


# --- recipes, schedule and the network from the plans ------------------------------------------------------------


def test_shipped_nnssl_recipes():
    from nnunet_transfer import load_recipe

    primus, resenc = load_recipe("nnssl_primus"), load_recipe("nnssl_resenc")
    assert (primus.optimizer, primus.adamw_betas, primus.grad_clip_norm) == ("adamw", (0.9, 0.98), 1.0)
    assert primus.warmup_all_epochs == 50 and primus.progressive is not None and primus.pretrained.min_coverage == 0.8
    assert resenc.optimizer == "sgd" and resenc.warmup_all_epochs == 50 and resenc.progressive.every == 25
    assert primus.scaled(100).warmup_all_epochs == 5 and primus.scaled(1).warmup_all_epochs == 0


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"adamw_betas": [0.9, 0.98]}, "adamw_betas [0.9, 0.98] need optimizer: adamw"),
        ({"optimizer": "adamw", "adamw_betas": [0.9, 1.0]}, "adamw_betas: Value error, each beta must be in [0, 1)"),
        ({"optimizer": "adamw", "adamw_betas": [0.9]}, "adamw_betas"),
        ({"grad_clip_norm": 13}, "grad_clip_norm: Input should be less than or equal to 12"),
        ({"grad_clip_norm": 0}, "grad_clip_norm: Input should be greater than 0"),
        ({"num_epochs": 10, "warmup_all_epochs": 10}, "warmup_all_epochs 10 must be below num_epochs 10"),
        ({"warmup_all_epochs": -1}, "warmup_all_epochs: Input should be greater than or equal to 0"),
    ],
)
def test_new_recipe_fields_are_validated(tmp_path, fields, fragment):
    import yaml

    from nnunet_transfer import load_recipe
    from nnunet_transfer.errors import RecipeError

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "r", **fields}))
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert str(path) in str(info.value) and fragment in str(info.value)


def test_whole_network_warmup_then_poly_and_adamw_betas():
    from nnunet_transfer.core.schedules.groups import ParameterGroup
    from nnunet_transfer.core.schedules.recipes import Recipe
    from nnunet_transfer.core.schedules.schedule import build_optimizer, resolve_schedule

    recipe = Recipe(name="w", optimizer="adamw", adamw_betas=(0.9, 0.98), warmup_all_epochs=4,
                    lr_multipliers={"b": 0.5})
    sched = resolve_schedule(recipe, ["a", "b"], num_epochs=10, base_lr=1e-3)
    assert [sched.lr("a", e) for e in range(4)] == [1e-3 * (e + 1) / 4 for e in range(4)]
    assert sched.lr("a", 4) == 1e-3 and sched.lr("b", 4) == 0.5e-3
    assert sched.lr("a", 7) == 1e-3 * (1 - 3 / 6) ** 0.9
    groups = [ParameterGroup(n, [n], [torch.nn.Parameter(torch.zeros(2))]) for n in ("a", "b")]
    opt = build_optimizer(groups, sched, "adamw", recipe.adamw_betas)
    assert isinstance(opt, torch.optim.AdamW) and all(g["betas"] == (0.9, 0.98) for g in opt.param_groups)


def test_grad_clip_before_each_step_equals_clipping_to_that_norm():
    from nnunet_transfer.core.schedules.schedule import GradClip

    torch.manual_seed(0)
    a, b = torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(3, 3))
    frozen = torch.nn.Parameter(torch.randn(2))
    opt = torch.optim.SGD([{"params": [a, frozen]}, {"params": [b]}], lr=1.0)
    a.grad, b.grad = torch.randn(5) * 10, torch.randn(3, 3) * 10
    want = [g.clone() for g in (a.grad, b.grad)]
    torch.nn.utils.clip_grad_norm_([a, b], 12)  # what nnU-Net's train_step does first
    norm = torch.sqrt(sum((g ** 2).sum() for g in want))
    want = [g * (1.0 / (norm + 1e-6)) for g in want]
    start = [a.detach().clone(), b.detach().clone()]
    clip = GradClip(opt, 1.0)
    opt.step()
    assert torch.allclose(a.detach(), start[0] - want[0], atol=1e-6)
    assert torch.allclose(b.detach(), start[1] - want[1], atol=1e-6)
    clip.remove()


def test_primus_plans_build_without_deep_supervision_through_our_trainer(tmp_path):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_transfer.nnunet.networks import accepts_deep_supervision, build_from_plans

    path, _ = primus_checkpoint(tmp_path / "p.pth", recommended=(24, 24, 24))
    plans = nnunet_plans(read_checkpoint(path).nnssl.plan)
    cm = PlansManager(plans).get_configuration("3d_fullres")
    assert not accepts_deep_supervision(cm.network_arch_class_name)
    net = build_from_plans(cm, 2, 3, True)
    assert type(net).__name__ == "Primus" and net(torch.zeros(1, 2, 24, 24, 24)).shape == (1, 3, 24, 24, 24)
    res = nnunet_plans(read_checkpoint(resenc_checkpoint(tmp_path / "r.pth")[0]).nnssl.plan)
    unet = build_from_plans(PlansManager(res).get_configuration("3d_fullres"), 1, 2, True)
    assert unet.decoder.deep_supervision is True


def test_plans_spacing_words_or_millimetres(tmp_path, capsys):
    path, _ = resenc_checkpoint(tmp_path / "c.pth")
    assert main(["plans", "--from", str(path), "-t", "1", "-tp", "X", "--spacing", "coarse"]) == 2
    assert "--spacing coarse: give 'pretrain', 'target' or values in mm" in capsys.readouterr().err
    assert not any(tmp_path.glob("*.json"))


def test_check_builds_primus_plans_without_a_trainer(tmp_path):
    from nnunet_transfer.nnunet.networks import build_network

    path, _ = primus_checkpoint(tmp_path / "p.pth", recommended=(24, 24, 24))
    plans = nnunet_plans(read_checkpoint(path).nnssl.plan)
    net = build_network(plans, "3d_fullres", {"labels": {"background": 0, "a": 1}, "channel_names": {"0": "MR"}})
    assert type(net).__name__ == "Primus" and net.eva.pos_embed.shape == (1, 216, 48)


# --- reports true to the letter (issue 23) -------------------------------------------------------------------------


def _nnssl_target(root, ckpt_path, dataset="Dataset952_Letter", identifier="nnsslX"):
    """A preprocessed target (plans from the checkpoint's adaptation plan + dataset.json) and the nnU-Net roots."""
    folder = root / "preprocessed" / dataset
    folder.mkdir(parents=True)
    for name in ("raw", "results"):
        (root / name).mkdir(exist_ok=True)
    plans = nnunet_plans(read_checkpoint(ckpt_path).nnssl.plan, plans_name=identifier, dataset_name=dataset)
    (folder / f"{identifier}.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MR"}, "labels": {"background": 0,
                                                    "lesion": 1}, "numTraining": 1, "file_ending": ".nii.gz"}))
    return {"nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "preprocessed"),
            "nnUNet_results": str(root / "results")}


def test_check_with_tr_is_the_load_that_trainer_will_do(tmp_path, monkeypatch, capsys):
    """-tr of our trainer: its recipe's pretrained section (nnssl_resenc: guard 0.8), not the default guard 0.5; an
    explicit flag overrides that one option; nnU-Net's own trainer reads no recipe."""
    plans_ckpt, _ = resenc_checkpoint(tmp_path / "a" / "checkpoint_final.pth")
    # a checkpoint whose deepest stage has one block fewer: coverage 0.56, between the two guards
    path, _ = resenc_checkpoint(tmp_path / "b" / "checkpoint_final.pth", form="training",
                                kwargs=unet_kwargs(blocks=(1, 2, 1)))
    for key, value in _nnssl_target(tmp_path, plans_ckpt).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("NNUNET_TRANSFER_RECIPE", raising=False)
    args = ["check", str(path), "-d", "952", "-c", "3d_fullres", "-p", "nnsslX", "--json", str(tmp_path / "r.json")]

    assert main([*args, "-tr", "nnUNetTrainerAdaptiveFT_nnsslResEnc"]) == 1
    out, err = capsys.readouterr()
    assert "loader options from recipe nnssl_resenc of trainer nnUNetTrainerAdaptiveFT_nnsslResEnc" in out
    assert "FAIL: coverage 0.561 below the minimum 0.8" in err
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["min_coverage"] == 0.8 and not data["passed"] and round(data["coverage"], 4) == 0.5615
    assert data["counts"] == {"loaded": 42, "adapted": 0, "skipped": 16, "missing": 8}

    assert main([*args, "-tr", "nnUNetTrainerAdaptiveFT_nnsslResEnc", "--min-coverage", "0.5"]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["min_coverage"] == 0.5
    capsys.readouterr()
    assert main(args) == 0  # no -tr: nnU-Net's trainer builds the network, default options
    assert "loader options" not in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["min_coverage"] == 0.5

    # NNUNET_TRANSFER_RECIPE names the recipe the trainer will use: the check follows it
    recipe = tmp_path / "strict.yaml"
    recipe.write_text("name: strict\npretrained:\n  min_coverage: 0.9\n")
    monkeypatch.setenv("NNUNET_TRANSFER_RECIPE", str(recipe))
    assert main([*args, "-tr", "nnUNetTrainerAdaptiveFT_nnsslResEnc"]) == 1
    assert json.loads((tmp_path / "r.json").read_text())["min_coverage"] == 0.9


@pytest.mark.parametrize("form", ["training", "released"])
def test_nnssl_resenc_counts_each_tensor_once_and_skips_what_it_holds(tmp_path, form):
    """nnssl's layout: the pretraining network's decoder.encoder.* aliases every encoder tensor (224 keys, 66
    tensors). The note counts the 16 decoder and head tensors left out, not 124 keys; those the checkpoint holds are
    skipped (pretraining_decoder) with both shapes, not missing."""
    path, _ = resenc_checkpoint(tmp_path / form / "checkpoint_final.pth", form=form, beside=form == "released")
    raw = torch.load(path, weights_only=True)
    expected = ({"network_weights", "optimizer_state", "grad_scaler_state", "logging", "_best_ema", "current_epoch",
                 "init_args", "trainer_name", "nnssl_adaptation_plan"} if form == "training" else
                {"network_weights", "init_args", "trainer_name", "nnssl_adaptation_plan"})
    assert set(raw) == expected and isinstance(raw["init_args"]["device"], torch.device)
    assert len(raw["network_weights"]) == 224
    assert sum(k.startswith("decoder.encoder.") for k in raw["network_weights"]) == 100

    report = load_pretrained(resenc_network(num_classes=2, seed=3), path)
    assert report.counts() == {"loaded": 50, "adapted": 0, "skipped": 16, "missing": 0}
    assert report.unused_source_keys == [] and report.coverage == 1.0
    assert report.notes == [
        "nnssl checkpoint (ResidualEncoderUNet): encoder 'encoder.stages' -> 'encoder.stages', stem 'encoder.stem' -> "
        "'encoder.stem'; 16 tensors of the pretraining decoder and head not loaded (recipe pretrained.load_decoder: "
        "true loads the decoder where shapes allow)"]
    assert report.summary().endswith("coverage 1.000 (ok); 50 loaded, 0 adapted, 16 skipped, 0 missing, "
                                     "0 unused source keys")
    rec = _records(report)
    conv = rec["decoder.stages.0.convs.0.conv.weight"]
    assert (conv.status, conv.code, conv.source_key, conv.source_shape, conv.target_shape) == (
        "skipped", "pretraining_decoder", "decoder.stages.0.convs.0.conv.weight", [8, 16, 3, 3, 3], [8, 16, 3, 3, 3])
    assert conv.reason == ("in the checkpoint, not loaded: not part of the pretrained stem and encoder (nnssl: the "
                           "pretraining decoder reconstructed images); load_decoder: true loads it where shapes allow")
    head = rec["decoder.seg_layers.1.weight"]
    assert (head.status, head.code, head.source_shape, head.target_shape, head.is_head) == (
        "skipped", "pretraining_decoder", [1, 4, 1, 1, 1], [2, 4, 1, 1, 1], True)
    assert head.reason == ("in the checkpoint, not loaded: the pretraining network's head reconstructs images (nnssl); "
                           "never loaded")
    table = report.table()
    line = next(ln for ln in table.splitlines() if " decoder.stages.0.convs.0.conv.weight " in ln)
    assert line.startswith("skipped ") and line.split()[2:4] == ["8x16x3x3x3", "8x16x3x3x3"]  # both shapes, no "-"
    data = report.to_dict()
    assert data["counts"] == report.counts() and len(data["tensors"]) == 66
    assert {t["status"] for t in data["tensors"] if not t["in_coverage"]} == {"skipped"}

    # the decoder asked for: it loads; only the 4 head tensors are left out, and said so
    rep = load_pretrained(resenc_network(num_classes=2, seed=3), path, load_decoder=True)
    assert rep.counts() == {"loaded": 62, "adapted": 0, "skipped": 4, "missing": 0}
    assert "; 4 tensors of the pretraining decoder and head not loaded (load_decoder:" in rep.notes[0]
    assert {r.key for r in rep.tensors if r.status == "skipped"} == {
        f"decoder.seg_layers.{i}.{w}" for i in (0, 1) for w in ("weight", "bias")}


def test_a_contrastive_checkpoint_has_no_decoder_to_skip(tmp_path):
    """Target tensors the checkpoint does not hold stay missing (pretraining_decoder), source shape None."""
    path, _ = resenc_checkpoint(tmp_path / "c.pth", prefix="encoder.")
    report = load_pretrained(resenc_network(num_classes=2, seed=7), path)
    rec = _records(report)["decoder.stages.0.convs.0.conv.weight"]
    assert (rec.status, rec.code, rec.source_shape) == ("missing", "pretraining_decoder", None)
    assert report.counts() == {"loaded": 50, "adapted": 0, "skipped": 0, "missing": 16}
    assert "; 1 tensors of the pretraining decoder and head not loaded" in report.notes[0]  # the projector


def test_primus_output_layer_is_a_head_mapped_by_label_name(tmp_path):
    """Primus's last transposed convolution holds its output channels on dim 1: copied by label name as ResEnc's
    seg_layers are, reported as a head."""
    kw = primus_kwargs()
    src = primus_network((16, 16, 16), kw, num_classes=3, seed=1)
    path = tmp_path / "p.pth"
    torch.save({"network_weights": src.state_dict(),
                "init_args": {"dataset_json": {"labels": {"background": 0, "liver": 1, "spleen": 2}}}}, path)
    target = primus_network((16, 16, 16), kw, num_classes=3, seed=2)
    fresh = _snapshot(target)
    report = load_pretrained(target, path, {"background": 0, "spleen": 1, "kidney": 2})
    rec = _records(report)
    heads = sorted(r.key for r in report.tensors if r.is_head)
    assert heads == ["up_projection.decode.1.bias", "up_projection.decode.1.weight"]
    assert {rec[k].code for k in heads} == {"head_mapped"}
    assert rec["up_projection.decode.1.weight"].reason == ("head: copied 2 of 3 channels by label name "
                                                           "(background<-background, spleen<-spleen)")
    got, want = target.state_dict(), src.state_dict()
    w, b = "up_projection.decode.1.weight", "up_projection.decode.1.bias"
    assert torch.equal(got[w][:, 0], want[w][:, 0]) and torch.equal(got[w][:, 1], want[w][:, 2])
    assert torch.equal(got[w][:, 2], fresh[w][:, 2])  # kidney: fresh
    assert got[b].tolist() == [want[b][0].item(), want[b][2].item(), fresh[b][2].item()]
    assert [(m.target_name, m.source_name) for m in report.label_mapping] == [
        ("background", "background"), ("spleen", "spleen"), ("kidney", None)]
    assert torch.equal(got["up_projection.decode.0.0.weight"], want["up_projection.decode.0.0.weight"])


def test_a_primus_checkpoint_against_resenc_says_what_both_are_first(tmp_path, capsys, monkeypatch):
    path, _ = primus_checkpoint(tmp_path / "p" / "checkpoint_final.pth")
    ckpt = torch.load(path, weights_only=True)
    ckpt["nnssl_adaptation_plan"]["architecture_plans"] = {"arch_class_name": "PrimusM", "arch_kwargs": None,
                                                           "arch_kwargs_requiring_import": None}
    torch.save(ckpt, path)
    target = resenc_network(num_classes=2, seed=3)
    with pytest.raises(LoadGuardError) as info:
        load_pretrained(target, path)
    assert str(info.value).startswith(
        f"{path}: the checkpoint is a PrimusM (nnssl) and the target network a ResidualEncoderUNet: make plans that "
        f"build the pretrained network with `nnunet-transfer plans --from {path} -t DATASET -tp PLANS` and fine-tune "
        "with those plans. only 0.0% of the network's parameters")
    assert info.value.report.to_dict()["mismatch"].startswith("the checkpoint is a PrimusM (nnssl)")
    # check says it first too
    resenc, _ = resenc_checkpoint(tmp_path / "r" / "checkpoint_final.pth")
    for key, value in _nnssl_target(tmp_path, resenc).items():
        monkeypatch.setenv(key, value)
    assert main(["check", str(path), "-d", "952", "-c", "3d_fullres", "-p", "nnsslX"]) == 1
    assert capsys.readouterr().err.startswith("FAIL: the checkpoint is a PrimusM (nnssl) and the target network a "
                                              "ResidualEncoderUNet: make plans")
    # the same family: no mismatch
    assert load_pretrained(resenc_network(num_classes=2, seed=3), resenc).mismatch is None


@pytest.mark.parametrize(("form", "line"), [("training", "trainer:     BaseMAETrainer (epoch 2)"),
                                            ("released", "trainer:     BaseMAETrainer\n")])
def test_inspect_prints_the_epoch_only_where_the_file_has_one(tmp_path, capsys, form, line):
    path, _ = resenc_checkpoint(tmp_path / "checkpoint_final.pth", form=form, beside=True, embed=form == "training")
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert line in out and "epoch None" not in out


def test_nnssl_source_plans_keep_the_pretrainings_own_values(tmp_path):
    path, _ = resenc_checkpoint(tmp_path / "c.pth")
    plans = nnunet_plans(read_checkpoint(path).nnssl.plan)
    assert plans["dataset_name"] == "Dataset745_OpenMind" and plans["plans_name"] == "nnsslPlans"
    conf = plans["configurations"]["3d_fullres"]
    assert conf["data_identifier"] == "nnsslPlans_onemmiso"
    assert "original_median_shape_after_transp" not in plans and "median_image_size_in_voxels" not in conf
    assert plans["original_median_spacing_after_transp"] == [1.0, 1.0, 1.0]  # what nnssl's plan says


def test_plans_dry_run_diff_notes_and_the_trainers_guard(tmp_path):
    """plans --from an nnssl checkpoint: the diff's source side is the pretraining plan's own (dataset, data
    identifier), patch and batch size are said when left as they are, and the check is the suggested trainer's load
    (nnssl_resenc: guard 0.8)."""
    import os

    from nnunet_transfer.demo.synthetic import make_dataset

    path, _ = resenc_checkpoint(tmp_path / "ck" / "checkpoint_final.pth", recommended=(16, 16, 16))
    make_dataset(tmp_path / "raw", 953, "Dry", num_cases=2, shape=(16, 16, 16), seed=0)
    env = {**os.environ, "nnUNet_raw": str(tmp_path / "raw"), "nnUNet_preprocessed": str(tmp_path / "pre"),
           "nnUNet_results": str(tmp_path / "res")}
    env.pop("NNUNET_TRANSFER_RECIPE", None)
    proc = cli("plans", "--from", path, "-t", "953", "-tp", "nnsslX", "--dry-run", "--json", tmp_path / "p.json",
               env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert (f"plans transfer: {path} (nnssl, ResidualEncoderUNet, pretrained on Dataset745_OpenMind, configuration "
            "onemmiso) -> Dataset953_Dry") in out
    assert "note: 3d_fullres: patch size [16, 16, 16] (the checkpoint's recommended downstream patch size), batch " \
           "size 2 (the default for nnssl checkpoints)" in out
    assert "check: loader options from recipe nnssl_resenc of trainer nnUNetTrainerAdaptiveFT_nnsslResEnc" in out
    data = json.loads((tmp_path / "p.json").read_text())
    diff = {d["path"]: [d["source"], d["new"]] for d in data["diff"]}
    assert diff["dataset_name"] == ["Dataset745_OpenMind", "Dataset953_Dry"]
    assert diff["configurations.3d_fullres.data_identifier"] == ["nnsslPlans_onemmiso", "nnsslX_3d_fullres"]
    assert diff["original_median_shape_after_transp"][0] == "<absent>"
    assert "nnssl_pretraining" not in out and "160" not in out
    assert data["reports"]["3d_fullres"]["min_coverage"] == 0.8 and data["reports"]["3d_fullres"]["passed"]
    assert not (tmp_path / "pre" / "Dataset953_Dry" / "nnsslX.json").exists()


def test_unused_source_keys_count_each_checkpoint_tensor_once(tmp_path):
    """A plain nnU-Net ResEnc state dict (conv / all_modules.0 and decoder.encoder.* aliases) into a shallower target:
    its deepest stage is unused, listed once per tensor (27) under its first name, not once per key (76)."""
    from nnunet_transfer.core.loading.keys import storage_id

    src = resenc_network(num_classes=2, seed=1)
    path = tmp_path / "c.pth"
    torch.save({"network_weights": src.state_dict()}, path)
    stage2 = [k for k in src.state_dict() if k.startswith(("encoder.stages.2.", "decoder.encoder.stages.2."))]
    assert len(stage2) == 76
    report = load_pretrained(resenc_network(unet_kwargs(n_stages=2), num_classes=2, seed=2), path, min_coverage=0)
    weights = torch.load(path, weights_only=True)["network_weights"]
    assert len(report.unused_source_keys) == 27
    assert len({storage_id(weights[k]) for k in report.unused_source_keys}) == 27
    assert report.unused_source_keys[0] == "encoder.stages.2.blocks.0.conv1.conv.weight"
    assert report.summary().endswith(", 27 unused source keys")
