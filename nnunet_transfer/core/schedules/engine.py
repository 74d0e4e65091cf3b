"""The one fine-tuning engine: a recipe put to work on a network, for ``nnUNetTrainerAdaptiveFT`` and ``FineTuning``.

Built from a network, a recipe, the number of epochs, the base rate and the default weight decay,
:class:`FineTuneEngine` owns everything the recipe decides:

* the parameter groups (:func:`~nnunet_transfer.core.schedules.groups.derive_groups`, by anchored name patterns);
* the optimizer (:func:`~nnunet_transfer.core.schedules.schedule.build_optimizer`: one param group per parameter
  group, SGD or AdamW with the recipe's ``adamw_betas``), its per-group scheduler
  (:class:`~nnunet_transfer.core.schedules.schedule.PerGroupLRScheduler`) and the recipe's gradient clipping
  (``grad_clip_norm``: a step pre-hook, so whoever steps the optimizer clips);
* freezing and unfreezing per epoch (:meth:`FineTuneEngine.set_trainable` says whether the trainable set changed, so
  that a caller under DDP can rebuild its wrapper), the frozen-skip split (``split_frozen_skips``) and the norm mode
  of frozen groups (``frozen_norm``, :meth:`FineTuneEngine.norms_to_eval`);
* the per-epoch records (every group's rate, the trainable groups, the trainable fraction: the rows of
  ``lr_table.json``, the log and the schedule panel);
* its own :meth:`~FineTuneEngine.state_dict` / :meth:`~FineTuneEngine.load_state_dict` (plain data and the
  optimizer's state), with which a resumed run continues with the same rates and trainable sets.

The caller keeps the loop and its hooks (nnU-Net's ``on_train_epoch_start`` for the trainer, ``FineTuning.start_epoch``
for a plain loop), the logging and any DDP wrapper; the engine only ever touches the unwrapped module.

A recipe with ``adapters`` (LoRA on a network that :func:`~nnunet_transfer.core.adapters.inject_adapters` prepared)
keeps the adapter tensors in the groups of the layers they adapt and takes the pretrained weights of those groups out
of training for good (:func:`~nnunet_transfer.core.adapters.split_fixed`): they count in the trainable fraction's
total, never in the optimizer.

A new kind of trainable thing (adapters such as LoRA) plugs in here, once: put its parameters into the network (so
that ``named_parameters()`` lists them) and give them a group, by a pattern of the architecture spec or the recipe's
``groups``, or by passing ready-made ``groups=``. From then on they are one more parameter group like any other:
their own optimizer param group, rate multiplier and weight decay, a phase that unfreezes them (and keeps the base
frozen), their norm mode, their rows in the records, their share of the trainable fraction, and both the trainer and
``FineTuning`` train them without a line of their own.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from nnunet_transfer.core.adapters import split_fixed
from nnunet_transfer.core.modules import unwrap_network
from nnunet_transfer.core.schedules.groups import ParameterGroup, derive_groups
from nnunet_transfer.core.schedules.recipes import Recipe
from nnunet_transfer.core.schedules.schedule import (
    GradClip,
    PerGroupLRScheduler,
    Schedule,
    apply_freeze,
    build_optimizer,
    freeze_norms,
    resolve_schedule,
)
from nnunet_transfer.core.schedules.skips import disable_skip_split, update_skip_split
from nnunet_transfer.errors import RecipeError

__all__ = ["FineTuneEngine"]


class FineTuneEngine:
    """``recipe`` on ``network`` for a run of ``num_epochs`` epochs (see the module docstring).

    ``base_lr``: the rate of a group at multiplier 1 before decay. ``weight_decay``: every group's default (the
    recipe's ``group_weight_decay`` overrides it per group); None: the recipe's ``weight_decay``, else 3e-5.
    ``groups``: ready-made parameter groups instead of the recipe's / the architecture's patterns.
    ``lead_group_first``: put first in the optimizer a group that trains from epoch 0 at the highest multiplier
    (nnU-Net logs and plots the rate of param group 0 only); otherwise the optimizer follows the group order.

    On construction the network is set up for epoch 0 (frozen groups without gradients, skips split). Raises
    :class:`~nnunet_transfer.errors.RecipeError` when the recipe does not fit the network's groups or the run.
    """

    def __init__(self, network: nn.Module, recipe: Recipe, num_epochs: int, base_lr: float,
                 weight_decay: float | None = None, *, groups: Sequence[ParameterGroup] | None = None,
                 lead_group_first: bool = False):
        # groups by the plain module's names (a torch.compile / DDP wrapper adds prefixes); parameters are the same
        self.module = unwrap_network(network)
        self.recipe = recipe
        self.num_epochs = int(num_epochs)
        self.groups: list[ParameterGroup] = list(groups) if groups is not None else derive_groups(self.module,
                                                                                                     recipe.groups)
        if recipe.adapters is not None:  # the pretrained weights of the adapted groups leave the groups' params
            split_fixed(self.module, self.groups, recipe.adapters)
        self.schedule: Schedule = resolve_schedule(recipe, [g.name for g in self.groups], self.num_epochs, base_lr,
                                                   weight_decay)
        self.optimizer: torch.optim.Optimizer = build_optimizer(
            self._lead_first() if lead_group_first else self.groups, self.schedule, recipe.optimizer,
            recipe.adamw_betas)
        # nnU-Net's train_step clips at 12 before the step; this clips further, inside it (after a scaler's unscale)
        self.grad_clip: GradClip | None = (GradClip(self.optimizer, recipe.grad_clip_norm)
                                           if recipe.grad_clip_norm is not None else None)
        self.scheduler = PerGroupLRScheduler(self.optimizer, self.schedule)
        self.trainable: list[str] = []
        self.split_skips = 0  # decoder convolutions computing no gradient for a frozen skip now
        self.records: list[dict[str, Any]] = []
        self._total = sum(g.numel + g.fixed_numel for g in self.groups)
        self._fractions: dict[tuple[str, ...], float] = {}
        self._apply(self.schedule.trainable(0), first=True)

    def _lead_first(self) -> list[ParameterGroup]:
        s = self.schedule
        lead = max((g for g in self.groups if s.unfreeze_epoch[g.name] == 0), key=lambda g: s.multiplier[g.name],
                   default=self.groups[0])
        return [lead] + [g for g in self.groups if g is not lead]

    # --- per epoch ----------------------------------------------------------------------------------------------
    def _apply(self, trainable: list[str], first: bool = False) -> bool:
        changed = apply_freeze(self.groups, trainable)
        self.trainable = trainable
        if changed or first:
            # no input gradient for the skips whose encoder side is frozen now (recipe split_frozen_skips)
            if self.recipe.split_frozen_skips:
                self.split_skips = update_skip_split(self.module)
            else:
                disable_skip_split(self.module)
                self.split_skips = 0
        return changed

    def set_trainable(self, epoch: int) -> bool:
        """Freeze and unfreeze for ``epoch`` (``requires_grad`` by group; skips split or not). Returns whether any
        parameter's ``requires_grad`` changed: a DDP wrapper must then be rebuilt (``rewrap_ddp``)."""
        if not 0 <= epoch < self.num_epochs:
            raise ValueError(f"epoch {epoch}: the schedule has epochs 0 to {self.num_epochs - 1}")
        return self._apply(self.schedule.trainable(epoch))

    def step(self, epoch: int) -> None:
        """Every group's rate for ``epoch`` (the scheduler's ``step(epoch)``, as nnU-Net calls it)."""
        self.scheduler.step(epoch)

    def norms_to_eval(self) -> int:
        """Norm layers of frozen groups to eval mode (``frozen_norm: eval``); call after every ``train()`` of the
        network. Returns the number of layers set to eval."""
        if self.recipe.frozen_norm != "eval":
            return 0
        return freeze_norms(self.module, self.groups, self.trainable)

    def rates(self) -> dict[str, float]:
        """Every group's current rate, as set in the optimizer (in param group order)."""
        return {pg["name"]: pg["lr"] for pg in self.optimizer.param_groups}

    def trainable_fraction(self) -> float:
        """The share of the network's parameters that trains now."""
        key = tuple(self.trainable)
        if key not in self._fractions:
            self._fractions[key] = sum(g.numel for g in self.groups if g.name in self.trainable) / self._total
        return self._fractions[key]

    def record(self, epoch: int) -> dict[str, Any]:
        """The row of ``epoch`` (after its rates and trainable set are in force): ``epoch``, ``lr`` (every group's
        rate), ``trainable`` and ``trainable_fraction``; kept in :attr:`records` (rows of this epoch and later ones,
        from before a resume, are dropped first)."""
        row = {"epoch": epoch, "lr": self.rates(), "trainable": list(self.trainable),
               "trainable_fraction": self.trainable_fraction()}
        self.records = [r for r in self.records if r["epoch"] < epoch]
        self.records.append(row)
        return row

    def table(self) -> list[dict[str, Any]]:
        """The whole schedule: per epoch, every group's rate and the trainable groups."""
        return self.schedule.table()

    def group_lines(self) -> list[str]:
        """One line per group for a log: name, tensors, parameters, share, rate multiplier, the epoch it trains from
        (header: ``name: tensors, parameters, share, rate multiplier, trains from epoch``)."""
        s = self.schedule
        return [f"{g.name}: {len(g.params)}, {g.numel}, {g.numel / self._total:.1%}, {s.multiplier[g.name]:g}, "
                f"{s.unfreeze_epoch[g.name]}" for g in self.groups]

    # --- resuming ------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to continue with the same rates and trainable sets: the group names, the
        number of epochs, the trainable groups, the scheduler's counters, the optimizer's state and the records.
        Plain data and tensors (loads with ``torch.load(weights_only=True)``)."""
        return {"groups": [g.name for g in self.groups], "num_epochs": self.num_epochs,
                "trainable": list(self.trainable), "scheduler": self.scheduler.state_dict(),
                "optimizer": self.optimizer.state_dict(), "records": copy.deepcopy(self.records)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (:meth:`state_dict` of an engine of the same recipe on the same network).
        Raises :class:`~nnunet_transfer.errors.RecipeError` when the groups or the number of epochs differ."""
        names = [g.name for g in self.groups]
        if state.get("groups") != names or state.get("num_epochs") != self.num_epochs:
            raise RecipeError(f"engine state of groups {state.get('groups')} over {state.get('num_epochs')} epochs "
                              f"does not fit this run (groups {names} over {self.num_epochs} epochs): resume under "
                              "the recipe and budget the state was saved with")
        unknown = [g for g in state["trainable"] if g not in names]
        if unknown:
            raise RecipeError(f"engine state: trainable groups {unknown} are no groups of this network ({names})")
        self.optimizer.load_state_dict(state["optimizer"])  # every param group's rate with it
        self.scheduler.load_state_dict(state["scheduler"])
        self._apply(list(state["trainable"]), first=True)
        self.records = copy.deepcopy(list(state.get("records", [])))
