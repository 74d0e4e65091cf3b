"""Fine-tuning recipes: YAML files validated on load (unknown keys, wrong types and bad values name the field).

A recipe is picked by the trainer class (``recipe`` attribute) or, for any trainer of this package, by the
environment variable ``NNUNET_TRANSFER_RECIPE`` (a shipped recipe's name or a path to a YAML file). Shipped recipes
live in ``nnunet_transfer/configs``.
"""

from __future__ import annotations

import math
import os
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nnunet_transfer.core.io import parse_yaml_mapping
from nnunet_transfer.core.loading.options import LoadOptions
from nnunet_transfer.errors import RecipeError

__all__ = ["RECIPE_ENV_VAR", "Phase", "PretrainedSpec", "Progressive", "Recipe", "available_recipes", "load_recipe"]

RECIPE_ENV_VAR = "NNUNET_TRANSFER_RECIPE"
NNUNET_DEFAULT_EPOCHS = 1000  # nnUNetTrainer.num_epochs


class PretrainedSpec(LoadOptions):
    """A recipe's ``pretrained:`` section: every :class:`LoadOptions` field, plus where the weights come from."""

    checkpoint: str | None = Field(None, description="checkpoint path; relative paths are relative to the recipe file")
    required: bool = Field(
        True, description="a new training without pretrained weights (neither -pretrained_weights nor checkpoint) "
                          "is an error unless false")

    def load_options(self) -> LoadOptions:
        """The loader's options of this section (``checkpoint`` and ``required`` left out)."""
        return LoadOptions.model_validate({name: getattr(self, name) for name in LoadOptions.model_fields})


class Phase(BaseModel):
    """From ``start_epoch`` on, the selected groups train too (selectors: group names or globs like ``encoder.*``)."""

    model_config = ConfigDict(extra="forbid")

    start_epoch: int = Field(ge=0)
    unfreeze: list[str] = Field(min_length=1)


class Progressive(BaseModel):
    """Unfreeze the selected groups one at a time: the first at ``start_epoch``, then one every ``every`` epochs."""

    model_config = ConfigDict(extra="forbid")

    groups: list[str] = Field(min_length=1)
    start_epoch: int = Field(ge=1)
    every: int = Field(ge=1)
    order: Literal["deepest_first", "as_listed"] = "deepest_first"


class Recipe(BaseModel):
    """A fine-tuning recipe. ``None`` means: keep nnU-Net's default for that setting."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    num_epochs: int | None = Field(None, ge=1)
    iterations_per_epoch: int | None = Field(None, ge=1)
    val_iterations_per_epoch: int | None = Field(None, ge=1)
    initial_lr: float | None = Field(None, gt=0)
    weight_decay: float | None = Field(None, ge=0)
    save_every: int | None = Field(None, ge=1)  # epochs between checkpoint_latest.pth writes (nnU-Net: 50)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    # parameter groups: None derives nnU-Net's (encoder.stem, encoder.stageN, decoder.stageN, heads); otherwise
    # {name: [regex, ...]} with each regex matched against whole parameter names
    groups: dict[str, list[str]] | None = None
    lr_multipliers: dict[str, float] = Field(default_factory=dict)  # selector -> multiplier (later keys win)
    group_weight_decay: dict[str, float] = Field(default_factory=dict)  # selector -> weight decay
    phases: list[Phase] = Field(default_factory=list)  # empty (and no progressive): every group trains from epoch 0
    progressive: Progressive | None = None
    warmup_epochs: int = Field(0, ge=0)  # linear warmup of groups unfrozen after the first phase
    frozen_norm: Literal["eval", "train"] = "eval"  # norm layers of frozen groups
    # decoder convolutions over cat(upsampled, skip) compute no gradient for a skip whose encoder side is frozen
    # (core/schedules/skips.py; architectures that declare their skips); false: autograd's own (wasted) work
    split_frozen_skips: bool = True
    pretrained: PretrainedSpec = Field(default_factory=PretrainedSpec)
    source: str | None = Field(None, exclude=True, description="file the recipe was read from")

    def scaled(self, num_epochs: int) -> Recipe:
        """This recipe on a budget of ``num_epochs``: phase starts, unfreezing steps and warmup scaled in proportion.

        The reference budget is the recipe's ``num_epochs`` (nnU-Net's 1000 when unset). Nonzero epoch numbers stay
        at least 1, so a short budget keeps every step of the schedule; phases that would start on the same epoch are
        an error (RecipeError) rather than silently merged.
        """
        if num_epochs < 1:
            raise RecipeError(f"recipe {self.name}: cannot scale to {num_epochs} epochs (must be >= 1)")
        factor = num_epochs / (self.num_epochs or NNUNET_DEFAULT_EPOCHS)

        def scale(epoch: int) -> int:  # halves round up: 12.5 -> 13, whatever Python's round() would do
            return 0 if epoch == 0 else max(1, math.floor(epoch * factor + 0.5))

        phases = [p.model_copy(update={"start_epoch": scale(p.start_epoch)}) for p in self.phases]
        starts = [p.start_epoch for p in phases]
        if len(set(starts)) != len(starts):
            raise RecipeError(f"recipe {self.name}: at {num_epochs} epochs two phases would start on the same epoch "
                              f"(scaled starts {starts}); write a recipe for this budget instead")
        progressive = self.progressive and self.progressive.model_copy(
            update={"start_epoch": scale(self.progressive.start_epoch), "every": scale(self.progressive.every)})
        return self.model_copy(update={
            "name": f"{self.name}_{num_epochs}epochs", "num_epochs": num_epochs, "phases": phases,
            "progressive": progressive, "warmup_epochs": scale(self.warmup_epochs)})


def available_recipes() -> list[str]:
    """Names of the recipes shipped in ``nnunet_transfer/configs`` (its YAML files; subfolders hold other files)."""
    folder = resources.files("nnunet_transfer") / "configs"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml") and p.is_file())


def _format_error(where: str, e: ValidationError) -> str:
    problems = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<top level>"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        problems.append(f"{loc}: {msg}")
    return f"{where}: invalid recipe: " + "; ".join(problems)


def load_recipe(name_or_path: str | os.PathLike) -> Recipe:
    """Load and validate a recipe by shipped name (``"default"``) or YAML path. Raises RecipeError."""
    text_name = str(name_or_path)
    path = Path(text_name).expanduser()
    if text_name.endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise RecipeError(f"{path}: recipe file not found")
        text = path.read_text()
        where = str(path)
    else:
        # a shipped recipe is a bare name: configs/ also holds other files in subfolders (campaigns/example.yaml)
        shipped = resources.files("nnunet_transfer") / "configs" / f"{text_name}.yaml"
        if "/" in text_name or os.sep in text_name or not shipped.is_file():
            raise RecipeError(f"recipe {text_name!r} not found: not a file, and not a shipped recipe "
                              f"(shipped: {', '.join(available_recipes())})")
        text = shipped.read_text()
        where = f"<shipped recipe {text_name}>"
        path = None
    data = parse_yaml_mapping(text, where, "a recipe", RecipeError)
    data.setdefault("name", Path(text_name).stem)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        raise RecipeError(_format_error(where, e)) from None
    except ValueError as e:
        raise RecipeError(f"{where}: invalid recipe: {e}") from None
    ckpt = recipe.pretrained.checkpoint
    if ckpt and path is not None:
        ckpt = os.path.expandvars(os.path.expanduser(ckpt))
        if not os.path.isabs(ckpt):
            ckpt = str((path.parent / ckpt).resolve())
        recipe.pretrained = recipe.pretrained.model_copy(update={"checkpoint": ckpt})
    recipe.source = where
    return recipe
