"""Fine-tuning recipes: YAML files validated on load (unknown keys, wrong types and bad values name the field).

A recipe is picked by the trainer class (``recipe`` attribute) or, for any trainer of this package, by the
environment variable ``NNUNET_TRANSFER_RECIPE`` (a shipped recipe's name or a path to a YAML file). Shipped recipes
live in ``nnunet_transfer/configs``; ``NAME_<N>epochs`` names a shipped recipe ``NAME`` scaled to N epochs
(:meth:`Recipe.scaled`), derived when loaded: ``default_250epochs`` is ``load_recipe("default").scaled(250)``.
"""

from __future__ import annotations

import math
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nnunet_transfer.core.io import parse_yaml_mapping, read_text
from nnunet_transfer.core.loading.options import LoadOptions
from nnunet_transfer.errors import RecipeError

__all__ = [
    "RECIPE_ENV_VAR",
    "RECIPE_PLANS_KEY",
    "Adapters",
    "SCALED_SHIPPED",
    "Phase",
    "PretrainedSpec",
    "Progressive",
    "Recipe",
    "adapters_in_plans",
    "available_recipes",
    "load_recipe",
    "recipe_from_plans",
    "recipe_in_plans",
    "scaled_to_run",
]

RECIPE_ENV_VAR = "NNUNET_TRANSFER_RECIPE"
#: the key of an nnU-Net plans dict that holds a recipe: the trainer writes the recipe in force there (the results'
#: plans.json, every checkpoint's init_args); a study arm's plans file carries its recipe there
RECIPE_PLANS_KEY = "nnunet_transfer_recipe"
NNUNET_DEFAULT_EPOCHS = 1000  # nnUNetTrainer.num_epochs
#: scaled shipped recipes that are listed (and named by trainer variants); any NAME_<N>epochs of a shipped NAME loads
SCALED_SHIPPED = ("default_100epochs", "default_250epochs")
_SCALED_NAME = re.compile(r"(?P<base>[A-Za-z0-9_.-]+?)_(?P<epochs>[0-9]+)epochs")


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


class Adapters(BaseModel):
    """A recipe's ``adapters:`` section: low-rank adapters (LoRA, through Hugging Face ``peft``) on the convolutions
    and linear layers of the ``targets`` groups, whose pretrained weights then never train; the adapters (and, with
    ``train_norms``, the groups' norm scales and shifts and biases) train under their group's schedule."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["lora"] = "lora"
    rank: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)  # the update is scaled by alpha / rank
    dropout: float = Field(0.0, ge=0, lt=1)
    targets: list[str] = Field(default_factory=lambda: ["encoder.*"], min_length=1)  # group names or globs
    train_norms: bool = True


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
    # AdamW's (beta1, beta2); null: torch's (0.9, 0.999). Only with optimizer: adamw
    adamw_betas: tuple[float, float] | None = None
    # clip the gradient norm of all parameters to this before each step; null: nnU-Net's 12 (which its train_step
    # applies anyway, so values above 12 cannot take effect and are refused)
    grad_clip_norm: float | None = Field(None, gt=0, le=12)
    # linear warmup of every group's rate over the first N epochs ((e + 1) / N), then the polynomial decay over the
    # remaining epochs (nnU-Net's Primus trainers); 0: none
    warmup_all_epochs: int = Field(0, ge=0)
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
    adapters: Adapters | None = None  # LoRA adapters on the targeted groups (needs the peft extra); null: none
    source: str | None = Field(None, exclude=True, description="file the recipe was read from")

    @field_validator("adamw_betas")
    @classmethod
    def _betas(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not all(0.0 <= b < 1.0 for b in value):
            raise ValueError(f"each beta must be in [0, 1), got {list(value)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        if self.adamw_betas is not None and self.optimizer != "adamw":
            raise ValueError(f"adamw_betas {list(self.adamw_betas)} need optimizer: adamw (optimizer is "
                             f"{self.optimizer!r})")
        if self.num_epochs is not None and self.warmup_all_epochs >= self.num_epochs:
            raise ValueError(f"warmup_all_epochs {self.warmup_all_epochs} must be below num_epochs {self.num_epochs}")
        return self

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
            "progressive": progressive, "warmup_epochs": scale(self.warmup_epochs),
            "warmup_all_epochs": min(scale(self.warmup_all_epochs), num_epochs - 1)})


def scaled_to_run(recipe: Recipe, num_epochs: int) -> Recipe:
    """``recipe`` for a run of ``num_epochs``: itself when that is its budget (its ``num_epochs``, else nnU-Net's
    1000), else :meth:`Recipe.scaled` to it. The trainer and ``FineTuning`` both fit a recipe to a run by this."""
    if num_epochs == (recipe.num_epochs or NNUNET_DEFAULT_EPOCHS):
        return recipe
    return recipe.scaled(num_epochs)


def _shipped_files() -> list[str]:
    folder = resources.files("nnunet_transfer") / "configs"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml") and p.is_file())


def available_recipes() -> list[str]:
    """Names of the shipped recipes: the YAML files in ``nnunet_transfer/configs`` (subfolders hold other files)
    and the scaled ones of :data:`SCALED_SHIPPED`."""
    return sorted([*_shipped_files(), *SCALED_SHIPPED])


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
        text = read_text(path, "recipe", RecipeError)
        where = str(path)
    else:
        # a shipped recipe is a bare name: configs/ also holds other files in subfolders (campaigns/example.yaml)
        shipped = resources.files("nnunet_transfer") / "configs" / f"{text_name}.yaml"
        if "/" in text_name or os.sep in text_name or not shipped.is_file():
            scaled = _SCALED_NAME.fullmatch(text_name)
            if scaled and scaled["base"] in _shipped_files():
                recipe = load_recipe(scaled["base"]).scaled(int(scaled["epochs"]))
                recipe.source = f"<shipped recipe {scaled['base']} scaled to {int(scaled['epochs'])} epochs>"
                return recipe
            raise RecipeError(f"recipe {text_name!r} not found: not a file, and not a shipped recipe "
                              f"(shipped: {', '.join(available_recipes())}; NAME_<N>epochs scales a shipped NAME "
                              "to N epochs)")
        text = shipped.read_text()
        where = f"<shipped recipe {text_name}>"
        path = None
    data = parse_yaml_mapping(text, where, "a recipe", RecipeError)
    data.setdefault("name", Path(text_name).stem)
    recipe = _validated(data, where)
    ckpt = recipe.pretrained.checkpoint
    if ckpt and path is not None:
        ckpt = os.path.expandvars(os.path.expanduser(ckpt))
        if not os.path.isabs(ckpt):
            ckpt = str((path.parent / ckpt).resolve())
        recipe.pretrained = recipe.pretrained.model_copy(update={"checkpoint": ckpt})
    recipe.source = where
    return recipe


def recipe_in_plans(plans: Any, where: str = "plans") -> Recipe | None:
    """The recipe a model was trained with (``plans[RECIPE_PLANS_KEY]``, read by :func:`recipe_from_plans`), or
    None when the plans hold none. RecipeError naming ``where`` when it is invalid."""
    value = plans.get(RECIPE_PLANS_KEY) if isinstance(plans, dict) else None
    return None if value is None else recipe_from_plans(value, f"{where}, {RECIPE_PLANS_KEY}")


def adapters_in_plans(plans: Any, where: str = "plans") -> Adapters | None:
    """The ``adapters`` section of the recipe a model was trained with (:func:`recipe_in_plans`), or None."""
    recipe = recipe_in_plans(plans, where)
    return None if recipe is None else recipe.adapters


def recipe_from_plans(value: Any, where: str) -> Recipe:
    """The recipe a plans dict holds under :data:`RECIPE_PLANS_KEY`: a whole recipe (a mapping, as the trainer writes
    it) or a shipped name or YAML path. RecipeError naming ``where`` when it is neither or does not validate."""
    if isinstance(value, str):
        return load_recipe(value)
    if not isinstance(value, dict):
        raise RecipeError(f"{where}: expected a recipe (a mapping, or a shipped name or YAML path), got "
                          f"{type(value).__name__}")
    recipe = _validated(value, where)
    recipe.source = where
    return recipe


def _validated(data: dict[str, Any], where: str) -> Recipe:
    """``data`` as a Recipe; RecipeError naming ``where`` and the field when it is not one."""
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise RecipeError(_format_error(where, e)) from None
    except ValueError as e:
        raise RecipeError(f"{where}: invalid recipe: {e}") from None
