"""The one fine-tuning engine (issue 19): the trainer and ``FineTuning`` assemble a recipe the same way (optimizer,
betas, weight decay per group, gradient clipping, per-epoch rates and trainable groups), and the engine's state
resumes a schedule exactly. Real nnU-Net trainers built in-process (no data), real networks."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import bin_path, build_trainer, make_plans, nnunet_env, run, trainer_folders
from nnssl_data import primus_kwargs

from nnunet_transfer.core.schedules.engine import FineTuneEngine
from nnunet_transfer.core.schedules.recipes import Recipe, available_recipes, load_recipe
from nnunet_transfer.encoders.finetune import FineTuning
from nnunet_transfer.errors import RecipeError
from nnunet_transfer.nnunet.trainer_lookup import OUR_TRAINERS
from nnunet_transfer.trainers.adaptive_ft import nnUNetTrainerAdaptiveFT
from nnunet_transfer.trainers.variants import (
    nnUNetTrainerAdaptiveFT_100epochs,
    nnUNetTrainerAdaptiveFT_250epochs,
    nnUNetTrainerAdaptiveFT_nnsslResEnc,
)

PRIMUS = "dynamic_network_architectures.architectures.primus.Primus"


def primus_plans(plans: dict) -> dict:
    """``plans`` (helpers.make_plans) with a tiny Primus network instead of the U-Net (patch 32^3, 8^3 tokens)."""
    conf = plans["configurations"]["3d_fullres"]
    conf["architecture"] = {"network_class_name": PRIMUS, "_kw_requires_import": [],
                            "arch_kwargs": {**primus_kwargs(), "input_shape": conf["patch_size"]}}
    return plans


def build(tmp_path, monkeypatch, recipe: str, cls: type = nnUNetTrainerAdaptiveFT, primus: bool = False,
          initialize: bool = True):
    """A trainer under ``recipe`` (NNUNET_TRANSFER_RECIPE), on a Primus network if ``primus``."""
    import helpers

    monkeypatch.setenv("NNUNET_TRANSFER_RECIPE", recipe)
    if primus:
        make = helpers.make_plans
        monkeypatch.setattr(helpers, "make_plans", lambda **kw: primus_plans(make(**kw)))
    trainer = build_trainer(tmp_path, monkeypatch, cls, initialize=initialize)
    trainer.disable_checkpointing = True
    return trainer


def optimizer_settings(optimizer: torch.optim.Optimizer) -> dict:
    """Class, defaults, and every named param group's settings but its rate and parameters."""
    return {"class": type(optimizer).__name__,
            "defaults": {k: v for k, v in optimizer.defaults.items() if k != "lr"},
            "groups": {pg["name"]: {k: v for k, v in pg.items() if k not in ("params", "lr", "initial_lr")}
                       for pg in optimizer.param_groups}}


def clipped_norm(network: torch.nn.Module, optimizer: torch.optim.Optimizer) -> float:
    """The total gradient norm left after one optimizer step on gradients of norm 1000 (clipping happens in the
    step: a pre-hook, as in the trainer after nnU-Net's own clip at 12)."""
    params = [p for p in network.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.full_like(p, 1000.0 / sum(q.numel() for q in params) ** 0.5)
    optimizer.step()
    return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])))


def sample_epochs(recipe_epochs: int, unfreeze: dict) -> list[int]:
    starts = {s for s in unfreeze.values() if s is not None}
    picks = {0, 1, 2, recipe_epochs // 4, recipe_epochs // 2, recipe_epochs - 1}
    picks |= {e + d for e in starts for d in (-1, 0, 1, 2)}
    return sorted(e for e in picks if 0 <= e < recipe_epochs)


SHIPPED = available_recipes()


def test_every_shipped_recipe_is_checked():
    assert {"default", "nnssl_primus", "nnssl_resenc", "classifier", "default_250epochs"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_trainer_and_finetuning_assemble_a_recipe_the_same_way(tmp_path, monkeypatch, name):
    trainer = build(tmp_path, monkeypatch, name, primus=name == "nnssl_primus")
    recipe = trainer.ft_recipe
    net = copy.deepcopy(trainer.network)
    ft = FineTuning(net, recipe, num_epochs=trainer.num_epochs, base_lr=trainer.initial_lr,
                    weight_decay=trainer.weight_decay)
    assert optimizer_settings(ft.optimizer) == optimizer_settings(trainer.optimizer)
    if recipe.adamw_betas is not None:
        assert ft.optimizer.defaults["betas"] == tuple(recipe.adamw_betas)

    # the same per-epoch rates and trainable groups (the trainer's through nnU-Net's own epoch-start hook)
    for epoch in sample_epochs(trainer.num_epochs, ft.schedule.unfreeze_epoch):
        trainer.current_epoch = epoch
        trainer.on_train_epoch_start()
        row = trainer._lr_table.rows[-1]
        assert (ft.start_epoch(epoch), ft.rates()) == (row["trainable"], row["lr"]), epoch
        assert {pg["name"]: pg["lr"] for pg in trainer.optimizer.param_groups} == ft.rates()
        assert [p.requires_grad for p in trainer.network.parameters()] == [p.requires_grad for p in net.parameters()]

    # the same clipping: the recipe's norm, or none of ours (nnU-Net's train_step clips at 12 on its own)
    limit = recipe.grad_clip_norm
    for network, optimizer in ((trainer.network, trainer.optimizer), (net, ft.optimizer)):
        got = clipped_norm(network, optimizer)
        assert got == pytest.approx(limit if limit is not None else 1000.0, rel=1e-4), (name, got)


# --- the engine's own state: a resumed schedule continues as an uninterrupted one -------------------------------
def _train_epoch(engine: FineTuneEngine, net: torch.nn.Module, epoch: int, batches: list[torch.Tensor]) -> None:
    engine.set_trainable(epoch)
    engine.step(epoch)
    net.train()
    engine.norms_to_eval()
    engine.record(epoch)
    for x in batches:
        engine.optimizer.zero_grad()
        sum(o.square().mean() for o in net(x)).backward()
        engine.optimizer.step()


def test_engine_state_dict_resumes_the_same_rates_trainable_sets_and_weights(unet_factory, tmp_path):
    # the default schedule on 6 epochs (an encoder stage unfrozen each epoch from 1), with AdamW, betas, clipping
    recipe = Recipe.model_validate({**load_recipe("default").scaled(6).model_dump(), "optimizer": "adamw",
                                    "adamw_betas": (0.9, 0.98), "grad_clip_norm": 1.0, "warmup_all_epochs": 1})
    batches = [torch.randn(1, 1, 8, 8, 8, generator=torch.Generator().manual_seed(0))]
    nets = [unet_factory(features=(2, 4, 4)) for _ in range(2)]
    whole = FineTuneEngine(nets[0], recipe, 6, 1e-3, 0.05)
    first = FineTuneEngine(nets[1], recipe, 6, 1e-3, 0.05)
    for epoch in range(3):
        _train_epoch(whole, nets[0], epoch, batches)
        _train_epoch(first, nets[1], epoch, batches)
    torch.save({"engine": first.state_dict(), "model": nets[1].state_dict()}, tmp_path / "state.pth")
    del first

    saved = torch.load(tmp_path / "state.pth", weights_only=True)  # plain data and tensors
    net = unet_factory(features=(2, 4, 4), seed=7)
    net.load_state_dict(saved["model"])
    resumed = FineTuneEngine(net, recipe, 6, 1e-3, 0.05)
    assert resumed.trainable != whole.trainable  # a fresh engine is at epoch 0: the state must carry the epoch's set
    resumed.load_state_dict(saved["engine"])
    assert resumed.trainable == whole.trainable and resumed.rates() == whole.rates()
    assert [p.requires_grad for p in net.parameters()] == [p.requires_grad for p in nets[0].parameters()]
    for epoch in range(3, 6):
        _train_epoch(whole, nets[0], epoch, batches)
        _train_epoch(resumed, net, epoch, batches)
    assert resumed.records == whole.records and len(whole.records) == 6
    assert len({tuple(r["trainable"]) for r in whole.records}) == 4  # the trainable set changed on the way
    for (name, a), b in zip(nets[0].state_dict().items(), net.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_engine_state_of_another_run_is_refused(unet_factory):
    net = unet_factory()
    engine = FineTuneEngine(net, load_recipe("default"), 20, 0.01)
    state = engine.state_dict()
    with pytest.raises(RecipeError, match=r"over 20 epochs does not fit this run \(groups .* over 30 epochs\)"):
        FineTuneEngine(net, load_recipe("default"), 30, 0.01).load_state_dict(state)


# --- a recipe that does not fit the network or the run ------------------------------------------------------------
def test_default_recipe_on_a_primus_network_is_one_line_naming_the_trainer_that_fits(tmp_path, monkeypatch):
    trainer = build(tmp_path, monkeypatch, "default", primus=True, initialize=False)
    with pytest.raises(RecipeError) as e:
        trainer.initialize()
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith("nnUNetTrainerAdaptiveFT: recipe default (<shipped recipe default>) does not fit this "
                              "Primus network: phases[0].unfreeze: 'decoder.*' matches no parameter group")
    assert message.endswith("trainers whose recipe fits it: nnUNetTrainerAdaptiveFT_nnsslPrimus (recipe nnssl_primus), "
                            "nnUNetTrainerAdaptiveFT_Full (recipe full_ft), nnUNetTrainerAdaptiveFT_LoRA (recipe lora), "
                            "nnUNetTrainerAdaptiveFT_nnsslPrimusLoRA (recipe nnssl_primus_lora) (-tr NAME, or "
                            "NNUNET_TRANSFER_RECIPE=RECIPE)")
    assert not trainer.was_initialized and trainer.current_epoch == 0


def test_nnunetv2_train_prints_the_misfit_in_one_line_before_training(tmp_path):
    """The stock command, as a user runs it: one line on stderr, no traceback, nothing trained."""
    plans = primus_plans(make_plans())
    env = nnunet_env(tmp_path, **trainer_folders(tmp_path, plans))
    proc = run([bin_path("nnUNetv2_train"), "990", "3d_fullres", "0", "-tr", "nnUNetTrainerAdaptiveFT", "-device",
                "cpu"], env, check=False, timeout=300)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "RecipeError" in line]
    assert len(errors) == 1 and errors[0] == proc.stderr.strip().splitlines()[-1], proc.stderr[-3000:]
    assert errors[0].startswith("RecipeError: nnUNetTrainerAdaptiveFT: recipe default")
    assert "nnUNetTrainerAdaptiveFT_nnsslPrimus (recipe nnssl_primus)" in errors[0]
    fold = tmp_path / "results" / plans["dataset_name"] / "nnUNetTrainerAdaptiveFT__nnUNetPlans__3d_fullres" / "fold_0"
    assert not list(fold.glob("checkpoint_*")) and "Epoch 0" not in proc.stdout


class _FiveEpochs(nnUNetTrainerAdaptiveFT_nnsslResEnc):
    """nnU-Net's way to shorten a run (nnUNetTrainer_5epochs): set num_epochs after super().__init__."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 5


def test_a_subclass_that_shortens_the_run_trains_with_the_recipe_scaled(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("NNUNET_TRANSFER_RECIPE", raising=False)
    trainer = build_trainer(tmp_path, monkeypatch, _FiveEpochs)  # nnssl_resenc warms up over 50 of 1000 epochs
    trainer.disable_checkpointing = True
    expected = load_recipe("nnssl_resenc").scaled(5)
    assert trainer.ft_recipe.model_dump() == expected.model_dump()
    assert (trainer.num_epochs, trainer.schedule.num_epochs, trainer.schedule.warmup_all_epochs) == (5, 5, 1)
    assert trainer.plans_manager.plans["nnunet_transfer_recipe"]["name"] == "nnssl_resenc_5epochs"
    scaled = [line for line in capsys.readouterr().out.splitlines() if "scaled to this run's" in line]
    assert len(scaled) == 1 and scaled[0].endswith(
        "nnunet-transfer recipe nnssl_resenc scaled to this run's 5 epochs (_FiveEpochs sets num_epochs; the recipe is "
        "for 1000): nnssl_resenc_5epochs, its phase starts, unfreezing steps and warmups in proportion")
    for epoch in range(5):
        trainer.current_epoch = epoch
        trainer.on_train_epoch_start()
    rows = trainer._lr_table.rows
    assert [r["trainable"] for r in rows] == [
        [g for g in trainer.schedule.groups if trainer.schedule.unfreeze_epoch[g] <= e] for e in range(5)]
    # the three encoder stages unfrozen one per epoch from epoch 1 (at 1000 epochs: from 50, one every 25)
    assert [sum(g.startswith("encoder.") for g in r["trainable"]) for r in rows] == [0, 1, 2, 3, 3]


def test_a_run_the_recipe_cannot_be_scaled_to_is_one_line(tmp_path, monkeypatch):
    recipe = tmp_path / "two.yaml"
    recipe.write_text("name: two\nphases:\n  - {start_epoch: 0, unfreeze: ['decoder.*', heads]}\n"
                      "  - {start_epoch: 100, unfreeze: [encoder.stage2]}\n"
                      "  - {start_epoch: 110, unfreeze: ['encoder.stage[01]']}\n")
    monkeypatch.setenv("NNUNET_TRANSFER_RECIPE", str(recipe))
    trainer = build_trainer(tmp_path, monkeypatch, _FiveEpochs, initialize=False)
    with pytest.raises(RecipeError, match=r"^_FiveEpochs: num_epochs 5 and recipe two \(.*two\.yaml\) do not fit: "
                                          r"recipe two: at 5 epochs two phases would start on the same epoch"):
        trainer.initialize()


# --- the scaled default recipes, derived when loaded ----------------------------------------------------------------
@pytest.mark.parametrize("n", [100, 250])
def test_scaled_default_recipes_are_the_default_scaled(n, monkeypatch):
    loaded = load_recipe(f"default_{n}epochs")
    assert loaded.model_dump() == load_recipe("default").scaled(n).model_dump()
    assert loaded.name == f"default_{n}epochs" and f"default_{n}epochs" in available_recipes()
    cls = {100: nnUNetTrainerAdaptiveFT_100epochs, 250: nnUNetTrainerAdaptiveFT_250epochs}[n]
    assert OUR_TRAINERS[cls.__name__] == cls.recipe == loaded.name
    assert load_recipe("nnssl_primus_40epochs").model_dump() == load_recipe("nnssl_primus").scaled(40).model_dump()
    with pytest.raises(RecipeError, match="recipe 'nope_40epochs' not found"):
        load_recipe("nope_40epochs")
