"""Recipes are validated on load; errors name the file and the field."""

from __future__ import annotations

import pytest

from nnunet_transfer import RecipeError, load_recipe
from nnunet_transfer.recipes import available_recipes


@pytest.mark.parametrize("name", ["default", "quick"])
def test_shipped_recipes_load(name):
    assert name in available_recipes()
    recipe = load_recipe(name)
    assert recipe.name == name and recipe.pretrained.min_coverage == 0.5


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
    assert recipe.pretrained.loader_options()["rename"] == (("a\\.(.*)", "b.\\1"),)


def test_unknown_recipe_name_lists_the_shipped_ones():
    with pytest.raises(RecipeError, match=r"recipe 'nope' not found.*default"):
        load_recipe("nope")
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe("missing.yaml")
