"""``nnUNetTrainerAdaptiveFT``: nnU-Net's trainer with adaptive pretrained loading and recipes.

``nnUNetv2_train D C F -tr nnUNetTrainerAdaptiveFT -pretrained_weights CKPT`` sends the weights through
:func:`nnunet_transfer.load_pretrained` instead of nnU-Net's strict loader; the report goes to the training log and
to ``pretrained_load_report.json`` in the fold folder. The checkpoint may also come from the recipe
(``pretrained.checkpoint``); it is loaded once, at the start of a new training, never over a resumed (``--c``) run.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path
from typing import Any, ClassVar

import torch
import yaml
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_transfer.errors import LoadGuardError
from nnunet_transfer.loader import load_pretrained
from nnunet_transfer.recipes import RECIPE_ENV_VAR, Recipe, load_recipe
from nnunet_transfer.report import LoadReport

__all__ = ["REPORT_FILE", "RECIPE_FILE", "nnUNetTrainerAdaptiveFT"]

REPORT_FILE = "pretrained_load_report.json"
RECIPE_FILE = "adaptive_ft_recipe.yaml"

_TRAINERS: weakref.WeakSet = weakref.WeakSet()


def _install_pretrained_hook() -> None:
    """Route nnU-Net's module-level ``load_pretrained_weights`` to our trainers' adaptive loader.

    ``nnunetv2.run.run_training.maybe_load_checkpoint`` calls it right after ``trainer.initialize()``. The wrapper
    dispatches by network identity: networks of other trainers still get nnU-Net's own loader.
    """
    import nnunetv2.run.load_pretrained_weights as lpw
    import nnunetv2.run.run_training as rt

    stock = lpw.load_pretrained_weights
    if getattr(stock, "__nnunet_transfer__", False):
        return

    def load_pretrained_weights(network: torch.nn.Module, fname: str, verbose: bool = False) -> None:
        for trainer in list(_TRAINERS):
            if trainer.network is network:
                trainer.load_pretrained_weights(fname)
                return
        stock(network, fname, verbose=verbose)

    load_pretrained_weights.__nnunet_transfer__ = True  # type: ignore[attr-defined]
    load_pretrained_weights.__wrapped__ = stock  # type: ignore[attr-defined]
    lpw.load_pretrained_weights = load_pretrained_weights
    rt.load_pretrained_weights = load_pretrained_weights


class nnUNetTrainerAdaptiveFT(nnUNetTrainer):
    """nnU-Net's trainer with adaptive pretrained loading; settings come from a validated recipe."""

    #: shipped recipe name or YAML path; the environment variable NNUNET_TRANSFER_RECIPE overrides it
    recipe: ClassVar[str] = "default"

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        continue_training = bool(plans.get("continue_training", False))
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.ft_recipe: Recipe = self._resolve_recipe(continue_training)
        self._apply_recipe(self.ft_recipe)
        self.pretrained_report: LoadReport | None = None
        self._resumed = False
        _TRAINERS.add(self)
        _install_pretrained_hook()

    # --- recipe -----------------------------------------------------------------------------------------------
    def _resolve_recipe(self, continue_training: bool) -> Recipe:
        stored = Path(self.output_folder) / RECIPE_FILE if self.output_folder else None
        if continue_training and stored is not None and stored.is_file():
            recipe = load_recipe(stored)  # a resumed run keeps the recipe it started with
        else:
            recipe = load_recipe(os.environ.get(RECIPE_ENV_VAR) or self.recipe)
        self.print_to_log_file(f"nnunet-transfer recipe: {recipe.name} ({recipe.source})", also_print_to_console=True)
        return recipe

    def _apply_recipe(self, recipe: Recipe) -> None:
        for field, attr in (
            ("num_epochs", "num_epochs"),
            ("iterations_per_epoch", "num_iterations_per_epoch"),
            ("val_iterations_per_epoch", "num_val_iterations_per_epoch"),
            ("initial_lr", "initial_lr"),
            ("weight_decay", "weight_decay"),
        ):
            value = getattr(recipe, field)
            if value is not None:
                setattr(self, attr, value)

    def _write_recipe(self) -> None:
        if self.local_rank != 0:
            return
        data: dict[str, Any] = self.ft_recipe.model_dump(mode="json", exclude={"source"})
        path = Path(self.output_folder) / RECIPE_FILE
        path.write_text(yaml.safe_dump(data, sort_keys=False))

    # --- pretrained weights -----------------------------------------------------------------------------------
    def load_pretrained_weights(self, checkpoint: str | os.PathLike) -> LoadReport:
        """Load ``checkpoint`` adaptively into the (maybe compiled / DDP-wrapped) network; log and save the report."""
        if not self.was_initialized:
            self.initialize()
        options = self.ft_recipe.pretrained.loader_options()
        try:
            report = load_pretrained(self.network, checkpoint, self.dataset_json.get("labels"), **options)
        except LoadGuardError as e:
            self._log_report(e.report)
            raise
        self._log_report(report)
        self.pretrained_report = report
        return report

    def _log_report(self, report: LoadReport) -> None:
        self.print_to_log_file("nnunet-transfer load report:\n" + report.table(), also_print_to_console=False,
                               add_timestamp=False)
        self.print_to_log_file(report.summary(), also_print_to_console=True)
        if self.local_rank == 0:
            report.write_json(Path(self.output_folder) / REPORT_FILE)

    # --- nnU-Net hooks ----------------------------------------------------------------------------------------
    def load_checkpoint(self, filename_or_checkpoint: dict | str) -> None:
        self._resumed = True
        super().load_checkpoint(filename_or_checkpoint)

    def on_train_start(self) -> None:
        if not self.was_initialized:
            self.initialize()
        checkpoint = self.ft_recipe.pretrained.checkpoint
        if checkpoint and not self._resumed and self.current_epoch == 0:
            if self.pretrained_report is None:
                self.load_pretrained_weights(checkpoint)
            else:
                self.print_to_log_file(f"recipe checkpoint {checkpoint} not loaded: -pretrained_weights was given")
        super().on_train_start()
        self._write_recipe()
