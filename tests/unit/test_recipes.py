"""Recipes are validated on load; errors name the file and the field."""

from __future__ import annotations

import pytest

from nnunet_transfer import RecipeError, load_recipe
from nnunet_transfer.core.schedules.recipes import available_recipes


@pytest.mark.parametrize("name", available_recipes())
@pytest.mark.parametrize("residual", [False, True])
def test_shipped_recipes_load_and_resolve_on_real_networks(name, residual, unet_factory):
    from nnunet_transfer.core.schedules.groups import derive_groups
    from nnunet_transfer.core.schedules.schedule import resolve_schedule

    recipe = load_recipe(name)
    assert recipe.name == name
    if name == "nnssl_primus":  # a Primus recipe (its groups: encoder.stem, encoder.stageN, heads)
        from dynamic_network_architectures.architectures.primus import Primus

        net = Primus(1, 48, (4, 4, 4), 2, 2 + 4 * residual, 2, (16, 16, 16))
    else:
        net = unet_factory(residual=residual, features=(4, 8, 16, 16, 16, 16, 16), kernels=((3, 3, 3),) * 7,
                           strides=((1, 1, 1),) + ((2, 2, 2),) * 6)
    groups = [g.name for g in derive_groups(net, recipe.groups)]
    epochs = recipe.num_epochs or 1000
    schedule = resolve_schedule(recipe, groups, epochs, 0.01)
    assert set(schedule.trainable(epochs - 1)) >= {"heads"}
    if name != "decoder_only":  # every group trains by the end of the schedule
        assert schedule.trainable(epochs - 1) == groups


def test_default_recipe_freezes_the_encoder_first_then_unfreezes_deepest_first():
    from nnunet_transfer.core.schedules.schedule import resolve_schedule

    groups = [f"encoder.stage{i}" for i in range(6)] + [f"decoder.stage{j}" for j in range(5)] + ["heads"]
    s = resolve_schedule(load_recipe("default"), groups, 1000, 0.01)
    assert s.trainable(0) == groups[6:]
    assert [s.unfreeze_epoch[f"encoder.stage{i}"] for i in range(6)] == [175, 150, 125, 100, 75, 50]
    assert s.lr("encoder.stage5", 50) == pytest.approx(0.01 * 0.1 * (1 - 50 / 1000) ** 0.9 / 10)


@pytest.mark.parametrize("name", ["nnUNetTrainerAdaptiveFT", "nnUNetTrainerAdaptiveFT_DecoderOnly",
                                  "nnUNetTrainerAdaptiveFT_Full", "nnUNetTrainerAdaptiveFT_250epochs",
                                  "nnUNetTrainerAdaptiveFT_100epochs"])
def test_nnunet_finds_every_variant(name, capsys):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    cls = recursive_find_trainer_class_by_name(name)
    assert cls.__module__.startswith("nnunet_transfer.trainers.")
    assert load_recipe(cls.recipe)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("name: x\nnum_epoch: 3\n", "num_epoch: unknown key"),
        ("name: x\npretrained:\n  min_coverge: 0.3\n", "pretrained.min_coverge: unknown key"),
        ("name: x\nnum_epochs: many\n", "num_epochs: Input should be a valid integer"),
        ("name: x\npretrained:\n  min_coverage: 1.5\n", "pretrained.min_coverage: Input should be less than or equal to 1"),
        ("name: x\ninitial_lr: 0\n", "initial_lr: Input should be greater than 0"),
        ("name: x\npretrained:\n  rename: ['nope']\n", "must look like PATTERN=REPLACEMENT"),
        ("- a\n- b\n", "must be a YAML mapping"),
        ("name: [unclosed\n", "not valid YAML"),
    ],
)
def test_invalid_recipes_name_the_field(tmp_path, text, fragment):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError, match=r"r\.yaml") as e:
        load_recipe(path)
    assert fragment in str(e.value)


def test_relative_checkpoint_is_relative_to_the_recipe(tmp_path):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "r.yaml"
    path.write_text("name: r\npretrained:\n  checkpoint: ../ckpt/checkpoint_final.pth\n  rename: ['a\\.(.*)=b.\\1']\n")
    recipe = load_recipe(path)
    assert recipe.pretrained.checkpoint == str(tmp_path / "ckpt" / "checkpoint_final.pth")
    assert recipe.pretrained.load_options().rename == (("a\\.(.*)", "b.\\1"),)


def test_unknown_recipe_name_lists_the_shipped_ones():
    with pytest.raises(RecipeError, match=r"recipe 'nope' not found.*default"):
        load_recipe("nope")
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe("missing.yaml")


def test_scaled_recipe_keeps_the_schedules_proportions():
    default = load_recipe("default")  # nnU-Net's 1000 epochs: frozen until 50, a stage every 25, warmup 10
    r = default.scaled(250)
    assert (r.num_epochs, r.progressive.start_epoch, r.progressive.every, r.warmup_epochs) == (250, 13, 6, 3)
    assert r.name == "default_250epochs" and r.phases[0].start_epoch == 0 and r.lr_multipliers == {"encoder.*": 0.1}
    tiny = default.scaled(10)  # every nonzero step stays at least one epoch
    assert (tiny.progressive.start_epoch, tiny.progressive.every, tiny.warmup_epochs) == (1, 1, 1)
    assert default.progressive.start_epoch == 50  # the original is untouched
    assert load_recipe("default_100epochs").scaled(200).progressive.start_epoch == 10  # from its own 100 epochs
    for n in (100, 250):  # the shipped short variants are exactly the default recipe scaled
        shipped = load_recipe(f"default_{n}epochs").model_dump(exclude={"name", "description", "source"})
        assert shipped == default.scaled(n).model_dump(exclude={"name", "description", "source"}), n
    two = type(default).model_validate({**default.model_dump(), "progressive": None, "phases": [
        {"start_epoch": 0, "unfreeze": ["decoder.*"]}, {"start_epoch": 100, "unfreeze": ["encoder.stage1"]},
        {"start_epoch": 110, "unfreeze": ["encoder.stage0"]}]})
    with pytest.raises(RecipeError, match=r"two phases would start on the same epoch \(scaled starts \[0, 1, 1\]\)"):
        two.scaled(10)
