"""A recipe's schedule on any model with parameter groups: freezing, progressive unfreezing, per-group rates.

The AdaptiveFT trainers' engine (:class:`~nnunet_transfer.core.schedules.engine.FineTuneEngine`) in a plain loop:
groups by anchored name patterns, the recipe resolved into a per-epoch schedule, one optimizer param group per
parameter group (AdamW with the recipe's betas), the recipe's gradient clipping inside ``optimizer.step()``, rates set
per epoch, frozen groups without gradients and with their norm layers in eval mode. For your own training loop:

>>> ft = FineTuning(classifier, "classifier")  # doctest: +SKIP
>>> for epoch in range(ft.num_epochs):  # doctest: +SKIP
...     ft.start_epoch(epoch)  # freeze / unfreeze, this epoch's rates, model.train() with frozen norms in eval
...     for x, y in batches:
...         loss = nn.functional.cross_entropy(classifier(x), y)
...         ft.optimizer.zero_grad()
...         loss.backward()
...         ft.optimizer.step()
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from nnunet_transfer.core.schedules.engine import FineTuneEngine
from nnunet_transfer.core.schedules.groups import ParameterGroup
from nnunet_transfer.core.schedules.recipes import Recipe, load_recipe, scaled_to_run
from nnunet_transfer.core.schedules.schedule import PerGroupLRScheduler, Schedule
from nnunet_transfer.errors import RecipeError

__all__ = ["DEFAULT_BASE_LR", "FineTuning"]

DEFAULT_BASE_LR = 1e-2  # nnU-Net's initial_lr, used when neither the recipe nor the caller sets one


class FineTuning:
    """``model`` trained by ``recipe`` (a :class:`~nnunet_transfer.core.schedules.recipes.Recipe`, a shipped
    recipe's name such as ``"classifier"``, or a YAML path), through the same engine as the AdaptiveFT trainers
    (:class:`~nnunet_transfer.core.schedules.engine.FineTuneEngine`: AdamW's betas, gradient clipping, frozen skips
    and norms as the recipe says).

    ``num_epochs``: the budget; when it differs from the recipe's (its ``num_epochs``, else nnU-Net's 1000), the
    recipe is scaled to it (:meth:`Recipe.scaled`: phase starts, unfreezing steps and warmup in proportion).
    ``base_lr`` / ``weight_decay``: default the recipe's ``initial_lr`` (else 0.01) and ``weight_decay`` (else 3e-5).
    The optimizer holds every parameter from the start, one param group per parameter group; a frozen parameter gets
    no gradient, so the optimizer never moves it. :meth:`state_dict` / :meth:`load_state_dict` resume the schedule.
    """

    def __init__(self, model: nn.Module, recipe: Recipe | str | os.PathLike = "classifier", *,
                 num_epochs: int | None = None, base_lr: float | None = None, weight_decay: float | None = None):
        recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
        if num_epochs is None:
            num_epochs = recipe.num_epochs
            if num_epochs is None:
                raise RecipeError(f"recipe {recipe.name}: sets no num_epochs; pass num_epochs=")
        recipe = scaled_to_run(recipe, num_epochs)
        self.model = model
        lr = base_lr if base_lr is not None else recipe.initial_lr if recipe.initial_lr is not None else DEFAULT_BASE_LR
        self.engine = FineTuneEngine(model, recipe, num_epochs, lr, weight_decay)
        self.epoch = 0

    @property
    def recipe(self) -> Recipe:
        """The recipe in force (scaled to :attr:`num_epochs`)."""
        return self.engine.recipe

    @property
    def num_epochs(self) -> int:
        return self.engine.num_epochs

    @property
    def groups(self) -> list[ParameterGroup]:
        return self.engine.groups

    @property
    def schedule(self) -> Schedule:
        return self.engine.schedule

    @property
    def optimizer(self):
        """The optimizer (one param group per parameter group); stepping it clips as the recipe says."""
        return self.engine.optimizer

    @property
    def scheduler(self) -> PerGroupLRScheduler:
        return self.engine.scheduler

    @property
    def trainable(self) -> list[str]:
        """The groups that train now."""
        return self.engine.trainable

    def start_epoch(self, epoch: int) -> list[str]:
        """Freeze and unfreeze for ``epoch``, set every group's rate, put the model in training mode (norm layers of
        frozen groups in eval mode, if the recipe says so). Returns the trainable groups."""
        self.engine.set_trainable(epoch)
        self.epoch = epoch
        self.engine.step(epoch)
        self.train()
        self.engine.record(epoch)
        return self.trainable

    def train(self) -> None:
        """``model.train()``, then norm layers of frozen groups back to eval (``frozen_norm: eval``). Call this, not
        ``model.train()``, after an evaluation within an epoch."""
        self.model.train()
        self.engine.norms_to_eval()

    def rates(self) -> dict[str, float]:
        """The current rate of every group (as set in the optimizer)."""
        return self.engine.rates()

    def table(self) -> list[dict[str, Any]]:
        """The whole schedule: per epoch, every group's rate and the trainable groups."""
        return self.engine.table()

    @property
    def records(self) -> list[dict[str, Any]]:
        """One row per epoch started: rates, trainable groups, trainable fraction (the rows of a trainer's
        ``lr_table.json``)."""
        return self.engine.records

    def state_dict(self) -> dict[str, Any]:
        """The schedule's and the optimizer's state (:meth:`FineTuneEngine.state_dict`) and the epoch under way."""
        return {"epoch": self.epoch, "engine": self.engine.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (the model's weights are the caller's to restore); the next
        :meth:`start_epoch` is ``state["epoch"] + 1``."""
        self.engine.load_state_dict(state["engine"])
        self.epoch = int(state["epoch"])
