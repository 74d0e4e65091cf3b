"""Fine-tuning schedules: which parameter groups train from which epoch, and each group's learning rate.

The learning rate of group ``g`` at epoch ``e`` is::

    base_lr * multiplier[g] * (1 - e / num_epochs) ** 0.9 * warmup[g](e)      (0 while g is frozen)

nnU-Net's polynomial decay, times the group's multiplier, times a linear warmup over ``warmup_epochs`` epochs for
groups that become trainable after the first phase (``(e - start + 1) / warmup_epochs`` until it reaches 1). With a
whole-network warmup (``warmup_all_epochs`` W > 0) the decay factor is ``(e + 1) / W`` for ``e < W`` and
``(1 - (e - W) / (num_epochs - W)) ** 0.9`` afterwards, as nnU-Net's Primus trainers schedule it.
Everything is a pure function of the epoch, so a resumed run (``--c``) follows exactly the same table.
"""

from __future__ import annotations

import inspect
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nnunet_transfer.core.schedules.groups import ParameterGroup, select_groups
from nnunet_transfer.errors import RecipeError, TrainingStateError

__all__ = [
    "GradClip",
    "PerGroupLRScheduler",
    "Schedule",
    "apply_freeze",
    "build_optimizer",
    "freeze_norms",
    "resolve_schedule",
    "rewrap_ddp",
]

POLY_EXPONENT = 0.9


@dataclass(frozen=True)
class Schedule:
    """A resolved schedule for one network's groups (see module docstring)."""

    groups: tuple[str, ...]
    unfreeze_epoch: dict[str, int | None]  # None: never trains
    multiplier: dict[str, float]
    weight_decay: dict[str, float]
    base_lr: float
    num_epochs: int
    warmup_epochs: int = 0
    warmup_all_epochs: int = 0

    def trainable(self, epoch: int) -> list[str]:
        """Groups that train at ``epoch``."""
        return [g for g in self.groups if (s := self.unfreeze_epoch[g]) is not None and s <= epoch]

    def warmup(self, group: str, epoch: int) -> float:
        start = self.unfreeze_epoch[group]
        if start is None or epoch < start:
            return 0.0
        first = min(s for s in self.unfreeze_epoch.values() if s is not None)
        if start == first or self.warmup_epochs <= 0:
            return 1.0
        return min(1.0, (epoch - start + 1) / self.warmup_epochs)

    def decay(self, epoch: int) -> float:
        """The factor every group shares at ``epoch``: whole-network warmup, then the polynomial decay."""
        w = self.warmup_all_epochs
        if w > 0 and epoch < w:
            return (epoch + 1) / w
        return (1 - (epoch - w) / (self.num_epochs - w)) ** POLY_EXPONENT

    def lr(self, group: str, epoch: int) -> float:
        poly = self.decay(epoch)
        return self.base_lr * self.multiplier[group] * poly * self.warmup(group, epoch)

    def table(self, epochs: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """One row per epoch: the epoch, every group's learning rate, the trainable groups."""
        rows = []
        for e in epochs if epochs is not None else range(self.num_epochs):
            rows.append({"epoch": e, "lr": {g: self.lr(g, e) for g in self.groups}, "trainable": self.trainable(e)})
        return rows


def _deepest_first(names: list[str]) -> list[str]:
    def depth(name: str) -> tuple[int, int]:
        m = re.search(r"(\d+)$", name)
        return (0 if "stem" in name else 1, int(m.group(1)) if m else -1)

    return sorted(names, key=depth, reverse=True)


def resolve_schedule(recipe: Any, group_names: Sequence[str], num_epochs: int, base_lr: float,
                     weight_decay: float | None = None) -> Schedule:
    """Resolve a recipe's phases, progressive unfreezing, multipliers and weight decays for these groups.

    ``weight_decay`` is every group's default (the trainer passes its ``self.weight_decay``); without it the recipe's
    ``weight_decay``, else nnU-Net's 3e-5. The recipe's ``group_weight_decay`` overrides it per group."""
    groups = list(group_names)
    unfreeze: dict[str, int | None] = dict.fromkeys(groups)
    phases = [(p.start_epoch, p.unfreeze, f"phases[{i}].unfreeze") for i, p in enumerate(recipe.phases)]
    prog = recipe.progressive
    if prog is not None:
        ordered = select_groups(prog.groups, groups, "progressive.groups")
        if prog.order == "deepest_first":
            ordered = _deepest_first(ordered)
        for k, g in enumerate(ordered):
            phases.append((prog.start_epoch + k * prog.every, [g], f"progressive ({g})"))
    if not phases:
        unfreeze = dict.fromkeys(groups, 0)
    else:
        if min(s for s, _, _ in phases) != 0:
            raise RecipeError("phases: the first phase must start at epoch 0 (otherwise nothing trains at first)")
        for start, selectors, where in sorted(phases, key=lambda p: p[0]):
            for g in select_groups(selectors, groups, where):
                if unfreeze[g] is not None:
                    raise RecipeError(f"{where}: group {g!r} is unfrozen twice (already at epoch {unfreeze[g]})")
                unfreeze[g] = start
    multiplier = dict.fromkeys(groups, 1.0)
    for sel, m in recipe.lr_multipliers.items():
        for g in select_groups([sel], groups, "lr_multipliers"):
            multiplier[g] = float(m)
    if weight_decay is not None:
        default_wd = weight_decay
    else:
        default_wd = recipe.weight_decay if recipe.weight_decay is not None else 3e-5
    weight_decay = dict.fromkeys(groups, float(default_wd))
    for sel, wd in recipe.group_weight_decay.items():
        for g in select_groups([sel], groups, "group_weight_decay"):
            weight_decay[g] = float(wd)
    warmup_all = getattr(recipe, "warmup_all_epochs", 0)
    if warmup_all >= num_epochs:
        raise RecipeError(f"warmup_all_epochs {warmup_all} must be below the number of epochs ({num_epochs})")
    return Schedule(tuple(groups), unfreeze, multiplier, weight_decay, base_lr, num_epochs, recipe.warmup_epochs,
                    warmup_all)


def build_optimizer(
    groups: Sequence[ParameterGroup], schedule: Schedule, optimizer: str = "sgd",
    betas: tuple[float, float] | None = None,
) -> torch.optim.Optimizer:
    """One optimizer param group per parameter group (named), holding every parameter from the start, so that the
    optimizer state layout never changes when groups are frozen or unfrozen. SGD is nnU-Net's (momentum 0.99,
    Nesterov); AdamW takes ``betas`` (default torch's)."""
    param_groups = [
        {"params": g.params, "name": g.name, "weight_decay": schedule.weight_decay[g.name],
         "lr": schedule.lr(g.name, 0)}
        for g in groups
    ]
    if optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=schedule.base_lr, momentum=0.99, nesterov=True)
    if optimizer == "adamw":
        return torch.optim.AdamW(param_groups, lr=schedule.base_lr, **({"betas": tuple(betas)} if betas else {}))
    raise RecipeError(f"optimizer {optimizer!r}: expected 'sgd' or 'adamw'")


class PerGroupLRScheduler(torch.optim.lr_scheduler.LRScheduler):
    """Sets every named param group's rate from the schedule; ``step(epoch)`` as nnU-Net's PolyLRScheduler.

    ``step()`` without an epoch counts up from 0 (``ctr``), ``step(epoch)`` jumps to that epoch (nnU-Net calls
    ``step(self.current_epoch)`` at every epoch start). ``state_dict()`` holds plain numbers only (the schedule is
    rebuilt from the recipe, never pickled), so it loads with ``torch.load(weights_only=True)``.
    """

    _STATE_KEYS = ("ctr", "last_epoch", "_step_count", "base_lrs", "_last_lr")

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: Schedule, current_step: int | None = None):
        unnamed = [i for i, pg in enumerate(optimizer.param_groups) if pg.get("name") not in schedule.multiplier]
        if unnamed:
            raise RecipeError(f"optimizer param groups {unnamed}: no 'name' of the schedule's groups "
                              f"{list(schedule.groups)}; build the optimizer with build_optimizer")
        self.schedule = schedule
        self.ctr = 0
        super().__init__(optimizer, current_step if current_step is not None else -1)

    def get_lr(self) -> list[float]:  # type: ignore[override]
        """Each param group's rate at the current epoch (``last_epoch``), in param group order."""
        epoch = max(self.last_epoch, 0)
        return [self.schedule.lr(pg["name"], epoch) for pg in self.optimizer.param_groups]

    def step(self, current_step: int | None = None) -> None:  # type: ignore[override]
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        self.last_epoch = current_step
        for pg, lr in zip(self.optimizer.param_groups, self.get_lr(), strict=True):
            pg["lr"] = lr
        self._last_lr = [pg["lr"] for pg in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        """The counters and rates (plain numbers); not the optimizer, not the schedule."""
        return {k: getattr(self, k) for k in self._STATE_KEYS if hasattr(self, k)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the counters; other keys (a ``schedule`` pickled by older versions) are ignored."""
        for k in self._STATE_KEYS:
            if k in state_dict:
                setattr(self, k, state_dict[k])


def apply_freeze(groups: Sequence[ParameterGroup], trainable: Sequence[str]) -> bool:
    """Set ``requires_grad`` by group (frozen parameters get no gradient at all). Returns True if anything changed."""
    changed = False
    train = set(trainable)
    for g in groups:
        flag = g.name in train
        for p in g.params:
            if p.requires_grad != flag:
                p.requires_grad_(flag)
                changed = True
    return changed


_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def freeze_norms(network: nn.Module, groups: Sequence[ParameterGroup], trainable: Sequence[str]) -> int:
    """Put norm layers whose parameters all belong to frozen groups into eval mode (BatchNorm statistics then stay
    as loaded). Call after every ``network.train()``. Returns the number of layers set to eval."""
    group_of = {id(p): g.name for g in groups for p in g.params}
    train = set(trainable)
    count = 0
    for module in network.modules():
        if isinstance(module, _NORMS):
            owners = {group_of.get(id(p)) for p in module.parameters(recurse=False)}
            if owners and not owners & train:
                module.eval()
                count += 1
    return count


def _ddp_settings(ddp: nn.parallel.DistributedDataParallel) -> dict[str, Any]:
    """The constructor arguments a DDP instance was built with, as far as it keeps them (see :func:`rewrap_ddp`)."""
    if getattr(ddp, "mixed_precision", None) is not None:
        raise TrainingStateError("DistributedDataParallel(mixed_precision=...) cannot be rebuilt for a new trainable "
                                 "set (its hooks would be registered on the module twice): freeze by phases without "
                                 "DDP mixed precision, or use autocast instead")
    if getattr(ddp, "_delay_all_reduce_params", None):
        raise TrainingStateError("DistributedDataParallel(delay_all_reduce_named_params=...) cannot be rebuilt for a "
                                 "new trainable set (DDP does not keep the names): do not combine it with freezing")
    kw: dict[str, Any] = {
        "device_ids": ddp.device_ids,
        "output_device": ddp.output_device,
        "dim": ddp.dim,
        "find_unused_parameters": ddp.find_unused_parameters,
        "gradient_as_bucket_view": ddp.gradient_as_bucket_view,
        "static_graph": ddp.static_graph,
    }
    if getattr(ddp, "device_mesh", None) is not None:
        kw["device_mesh"] = ddp.device_mesh
    else:
        kw["process_group"] = ddp.process_group
    for name in ("skip_all_reduce_unused_params", "batched_grad_copy"):
        if hasattr(ddp, name):
            kw[name] = getattr(ddp, name)
    # buffers: torch < 2.14 keeps ``broadcast_buffers``; later versions ``forward_sync_buffers`` (and map
    # broadcast_buffers=False to it). False is passed as broadcast_buffers=False, which also keeps them rank-local at
    # construction, as the user's broadcast_buffers=False did.
    sync = getattr(ddp, "forward_sync_buffers", getattr(ddp, "broadcast_buffers", True))
    kw["broadcast_buffers"] = bool(sync)
    caps = list(getattr(ddp, "bucket_bytes_cap_list", None) or [])
    if caps:
        kw["bucket_cap_mb_list"] = [c / 2**20 for c in caps]
    elif not getattr(ddp, "bucket_bytes_cap_default", True):
        kw["bucket_cap_mb"] = ddp.bucket_bytes_cap / 2**20
    accepted = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    return {k: v for k, v in kw.items() if k in accepted}


def rewrap_ddp(ddp: nn.parallel.DistributedDataParallel) -> nn.parallel.DistributedDataParallel:
    """A new DDP wrapper around the same module (same parameters, same optimizer references), registering exactly
    the parameters that require gradients now. DDP decides at construction which parameters it synchronises, so this
    is needed whenever the trainable set changes; parameters are broadcast from rank 0 again on construction.

    The wrapper keeps the settings of ``ddp``: device_ids, output_device, dim, process_group (or device_mesh),
    broadcast_buffers, bucket_cap_mb (or bucket_cap_mb_list), find_unused_parameters, gradient_as_bucket_view,
    static_graph, skip_all_reduce_unused_params, batched_grad_copy, and the communication hooks registered with
    ``register_comm_hook`` (with their state objects). Not carried: ``init_sync`` (always True: the rebuild
    re-broadcasts from rank 0), ``check_reduction`` (deprecated, no effect), ``no_sync()`` contexts in progress.
    ``mixed_precision`` and ``delay_all_reduce_named_params`` cannot be rebuilt and raise
    :class:`~nnunet_transfer.errors.TrainingStateError`.
    """
    kwargs = _ddp_settings(ddp)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
        new = nn.parallel.DistributedDataParallel(ddp.module, **kwargs)
    for hook, state in getattr(ddp, "_comm_hooks", []):
        new.register_comm_hook(state, hook)
    return new


class GradClip:
    """Clip the gradient norm of an optimizer's parameters to ``max_norm`` right before each of its steps (an
    optimizer step pre-hook: after backward, after a grad scaler's unscale, before the update). Where the training
    step already clipped to a larger norm (nnU-Net: 12), the result equals clipping to ``max_norm`` alone."""

    def __init__(self, optimizer: torch.optim.Optimizer, max_norm: float):
        self.max_norm = float(max_norm)
        self.handle = optimizer.register_step_pre_hook(self)

    def __call__(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if params:
            torch.nn.utils.clip_grad_norm_(params, self.max_norm)

    def remove(self) -> None:
        self.handle.remove()
