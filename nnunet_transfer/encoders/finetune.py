"""A recipe's schedule on any model with parameter groups: freezing, progressive unfreezing, per-group rates.

The same machinery as the AdaptiveFT trainers (:mod:`nnunet_transfer.core.schedules`): groups by anchored name
patterns (:func:`~nnunet_transfer.core.schedules.groups.derive_groups`), the recipe resolved into a per-epoch schedule
(:func:`~nnunet_transfer.core.schedules.schedule.resolve_schedule`), one optimizer param group per parameter group
(:func:`~nnunet_transfer.core.schedules.schedule.build_optimizer`), rates set per epoch
(:class:`~nnunet_transfer.core.schedules.schedule.PerGroupLRScheduler`), frozen groups without gradients
(:func:`~nnunet_transfer.core.schedules.schedule.apply_freeze`) and with their norm layers in eval mode. For your
own training loop:

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

from nnunet_transfer.core.modules import unwrap_network
from nnunet_transfer.core.schedules.groups import ParameterGroup, derive_groups
from nnunet_transfer.core.schedules.recipes import Recipe, load_recipe
from nnunet_transfer.core.schedules.schedule import (
    PerGroupLRScheduler,
    Schedule,
    apply_freeze,
    build_optimizer,
    freeze_norms,
    resolve_schedule,
)
from nnunet_transfer.errors import RecipeError

__all__ = ["DEFAULT_BASE_LR", "FineTuning"]

DEFAULT_BASE_LR = 1e-2  # nnU-Net's initial_lr, used when neither the recipe nor the caller sets one


class FineTuning:
    """``model`` trained by ``recipe`` (a :class:`~nnunet_transfer.core.schedules.recipes.Recipe`, a shipped
    recipe's name such as ``"classifier"``, or a YAML path).

    ``num_epochs``: the budget; when the recipe sets another, the recipe is scaled to it (:meth:`Recipe.scaled`:
    phase starts, unfreezing steps and warmup in proportion). ``base_lr`` / ``weight_decay``: default the recipe's
    ``initial_lr`` (else 0.01) and ``weight_decay`` (else 3e-5). The optimizer holds every parameter from the start,
    one param group per parameter group; a frozen parameter gets no gradient, so the optimizer never moves it.
    """

    def __init__(self, model: nn.Module, recipe: Recipe | str | os.PathLike = "classifier", *,
                 num_epochs: int | None = None, base_lr: float | None = None, weight_decay: float | None = None):
        recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
        if num_epochs is None:
            num_epochs = recipe.num_epochs
            if num_epochs is None:
                raise RecipeError(f"recipe {recipe.name}: sets no num_epochs; pass num_epochs=")
        elif recipe.num_epochs is not None and recipe.num_epochs != num_epochs:
            recipe = recipe.scaled(num_epochs)
        self.model = model
        self.recipe = recipe
        self.num_epochs = int(num_epochs)
        # groups by the plain module's names (a torch.compile / DDP wrapper adds prefixes); parameters are the same
        self.groups: list[ParameterGroup] = derive_groups(unwrap_network(model), recipe.groups)
        lr = base_lr if base_lr is not None else recipe.initial_lr if recipe.initial_lr is not None else DEFAULT_BASE_LR
        self.schedule: Schedule = resolve_schedule(recipe, [g.name for g in self.groups], self.num_epochs, lr,
                                                   weight_decay)
        self.optimizer = build_optimizer(self.groups, self.schedule, recipe.optimizer)
        self.scheduler = PerGroupLRScheduler(self.optimizer, self.schedule)
        self.epoch = 0
        self.trainable: list[str] = self.schedule.trainable(0)
        apply_freeze(self.groups, self.trainable)

    def start_epoch(self, epoch: int) -> list[str]:
        """Freeze and unfreeze for ``epoch``, set every group's rate, put the model in training mode (norm layers of
        frozen groups in eval mode, if the recipe says so). Returns the trainable groups."""
        if not 0 <= epoch < self.num_epochs:
            raise ValueError(f"epoch {epoch}: the schedule has epochs 0 to {self.num_epochs - 1}")
        self.epoch = epoch
        self.trainable = self.schedule.trainable(epoch)
        apply_freeze(self.groups, self.trainable)
        self.scheduler.step(epoch)
        self.train()
        return self.trainable

    def train(self) -> None:
        """``model.train()``, then norm layers of frozen groups back to eval (``frozen_norm: eval``). Call this, not
        ``model.train()``, after an evaluation within an epoch."""
        self.model.train()
        if self.recipe.frozen_norm == "eval":
            freeze_norms(unwrap_network(self.model), self.groups, self.trainable)

    def rates(self) -> dict[str, float]:
        """The current rate of every group (as set in the optimizer)."""
        return {pg["name"]: pg["lr"] for pg in self.optimizer.param_groups}

    def table(self) -> list[dict[str, Any]]:
        """The whole schedule: per epoch, every group's rate and the trainable groups."""
        return self.schedule.table()
