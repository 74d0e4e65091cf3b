"""``nnUNetTrainerAdaptiveFT``: nnU-Net's trainer with adaptive pretrained loading, recipes and schedules.

``nnUNetv2_train D C F -tr nnUNetTrainerAdaptiveFT -pretrained_weights CKPT`` sends the weights through
:func:`nnunet_transfer.load_pretrained` instead of nnU-Net's strict loader; the report goes to the training log and
to ``pretrained_load_report.json`` in the fold folder. The checkpoint may also come from the recipe
(``pretrained.checkpoint``); it is loaded once, at the start of a new training, never over a resumed (``--c``) run.

The recipe's schedule (parameter groups, freeze phases, per-group learning rates, warmup, clipping), put to work by
the fine-tuning engine (:class:`~nnunet_transfer.core.schedules.engine.FineTuneEngine`, the one ``FineTuning`` uses
too), replaces nnU-Net's single polynomial rate: every parameter is in the optimizer from the start (one param group
per parameter group), frozen groups get no gradient and their norm layers stay in eval mode, and under DDP the wrapper
is rebuilt whenever the trainable set changes so that newly unfrozen parameters are synchronised. Each epoch's rates
and trainable groups go to the log and to ``lr_table.json``, and a panel of them under nnU-Net's ``progress.png``:
drawn in a background thread during the next epoch (rank 0), waited for before nnU-Net writes ``progress.png`` again
and at the end of training; a failure to draw it is logged and training goes on.

Preemption and atomic checkpoint writes: see ``trainers/preemption.py`` (SIGUSR1, SIGUSR2 or SIGTERM end the epoch
under way, write ``checkpoint_latest.pth`` and exit with status 75; ``--c`` continues).

The recipe must fit the network and the run. A subclass that changes ``num_epochs`` after ``super().__init__`` (as
nnU-Net's ``nnUNetTrainer_5epochs`` does) gets the recipe scaled to it (:meth:`Recipe.scaled`, one log line); a
recipe whose groups the network does not have stops at ``initialize`` with one line naming the trainers whose recipes
fit (no traceback under ``nnUNetv2_train``: see ``trainers/_user_errors.py``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, ClassVar

import torch
import yaml
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_transfer.core.adapters import (
    ADAPTER_FOLDER,
    BASE_RECORD,
    fold_metadata,
    from_base,
    has_adapters,
    inject_adapters,
    require_peft,
    save_adapters,
)
from nnunet_transfer.core.background import LatestJobWorker
from nnunet_transfer.core.io import read_json_object, sha256_file, write_json_atomic
from nnunet_transfer.core.loading.loader import load_pretrained, unwrap_network
from nnunet_transfer.core.loading.report import REPORT_FILE, LoadReport
from nnunet_transfer.core.schedules.engine import FineTuneEngine
from nnunet_transfer.core.schedules.groups import ParameterGroup, derive_groups
from nnunet_transfer.core.schedules.lr_table import LRTable
from nnunet_transfer.core.schedules.plot import SchedulePanel
from nnunet_transfer.core.schedules.recipes import (
    NNUNET_DEFAULT_EPOCHS,
    RECIPE_ENV_VAR,
    RECIPE_PLANS_KEY,
    Recipe,
    adapters_in_plans,
    load_recipe,
    recipe_from_plans,
    recipe_in_plans,
    scaled_to_run,
)
from nnunet_transfer.core.schedules.schedule import Schedule, resolve_schedule, rewrap_ddp
from nnunet_transfer.errors import LoadGuardError, RecipeError, TrainingStateError
from nnunet_transfer.nnunet.networks import accepts_deep_supervision, build_from_plans
from nnunet_transfer.nnunet.pretrained_hook import PRETRAINED_SEAM, install_pretrained_hook, seam_problems
from nnunet_transfer.trainers import _cpu_ddp, _user_errors
from nnunet_transfer.trainers.preemption import PreemptionMixin

__all__ = ["LR_TABLE_FILE", "RECIPE_FILE", "RECIPE_PLANS_KEY", "REPORT_FILE", "nnUNetTrainerAdaptiveFT"]

RECIPE_FILE = "adaptive_ft_recipe.yaml"
LR_TABLE_FILE = "lr_table.json"


def _pretrained_weights_flag() -> bool:
    """True when this process is ``nnUNetv2_train ... -pretrained_weights CKPT``."""
    return any(a == "-pretrained_weights" or a.startswith("-pretrained_weights=") for a in sys.argv[1:])


class nnUNetTrainerAdaptiveFT(PreemptionMixin, nnUNetTrainer):
    """nnU-Net's trainer with adaptive pretrained loading; settings come from a validated recipe."""

    #: shipped recipe name or YAML path; the environment variable NNUNET_TRANSFER_RECIPE overrides it
    recipe: ClassVar[str] = "default"
    #: the nnU-Net trainer whose ``build_network_architecture`` builds the same network from the same plans (ours
    #: differs only for network classes without deep supervision, which nnU-Net's cannot build): what
    #: ``nnunet-transfer share`` names in a shared model's checkpoints
    stock_network_trainer: ClassVar[str] = "nnUNetTrainer"

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        continue_training = bool(plans.get("continue_training", False))
        _user_errors.install()  # our errors under nnUNetv2_train: one line, no traceback
        self._refuse_adapters_without_peft(plans)  # before nnU-Net creates the fold folder
        super().__init__(plans, configuration, fold, dataset_json, device)
        self._on_cpu_ddp = _cpu_ddp.applies(self, device)  # nnU-Net assumes CUDA under DDP: see trainers/_cpu_ddp.py
        if self._on_cpu_ddp:
            _cpu_ddp.use_cpu(self, device)
        self._continue_training = continue_training
        if not accepts_deep_supervision(self.configuration_manager.network_arch_class_name):
            self.enable_deep_supervision = False  # Primus (nnssl checkpoints' plans): one output, no decoder stages
        self.ft_recipe: Recipe = self._resolve_recipe(continue_training)
        self._apply_recipe(self.ft_recipe)
        self._store_recipe()
        self.pretrained_report: LoadReport | None = None
        self._resumed = False
        self.engine: FineTuneEngine | None = None  # built by configure_optimizers
        self._epochs_started = 0  # epoch starts of this process (the first one logs no change of trainable groups)
        self._split = 0  # decoder convolutions split for a frozen skip, as last logged
        self._lr_table: LRTable | None = None  # lr_table.json, read once (a resumed run's epochs)
        self._panel = SchedulePanel()
        self._panel_worker = LatestJobWorker("nnunet-transfer schedule panel", nice=19)
        install_pretrained_hook(self)

    @staticmethod
    def build_network_architecture(plans_manager: Any, configuration_manager: Any, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> torch.nn.Module:
        """nnU-Net's network for the plans; a network class without deep supervision (Primus) is built without it,
        so that the plans alone build it (also for ``nnUNetv2_predict``). A recipe with ``adapters`` in the plans
        (``plans[RECIPE_PLANS_KEY]``) gets its LoRA layers, so that ``nnUNetv2_predict`` loads the fold's unmerged
        weights as they are."""
        network = build_from_plans(configuration_manager, num_input_channels, num_output_channels,
                                   enable_deep_supervision)
        recipe = recipe_in_plans(plans_manager.plans, f"{plans_manager.plans_name} plans")
        if recipe is not None and recipe.adapters is not None:
            inject_adapters(network, recipe.adapters, recipe.groups)
        return network

    def set_deep_supervision_enabled(self, enabled: bool) -> None:
        """nnU-Net's, for networks that have a decoder with deep supervision (Primus has none)."""
        if hasattr(getattr(unwrap_network(self.network), "decoder", None), "deep_supervision"):
            super().set_deep_supervision_enabled(enabled)

    # --- recipe -----------------------------------------------------------------------------------------------
    def _refuse_adapters_without_peft(self, plans: dict) -> None:
        """A recipe with adapters (the plans', else the one this class or NNUNET_TRANSFER_RECIPE names) without
        peft installed: PeftMissingError (one line, exit 2 under nnUNetv2_train), before anything is written."""
        try:
            adapters = adapters_in_plans(plans)
            if adapters is None and not plans.get(RECIPE_PLANS_KEY):
                adapters = load_recipe(os.environ.get(RECIPE_ENV_VAR) or self.recipe).adapters
        except RecipeError:
            return  # the recipe's own error comes with more context later
        if adapters is not None:
            require_peft(f"{type(self).__name__}: the recipe's LoRA adapters")

    def _resolve_recipe(self, continue_training: bool) -> Recipe:
        stored = Path(self.output_folder) / RECIPE_FILE if self.output_folder else None
        in_plans = self.plans_manager.plans.get(RECIPE_PLANS_KEY)
        if continue_training and stored is not None and stored.is_file():
            recipe = load_recipe(stored)  # a resumed run keeps the recipe it started with
        elif os.environ.get(RECIPE_ENV_VAR) or not in_plans:
            recipe = load_recipe(os.environ.get(RECIPE_ENV_VAR) or self.recipe)
        else:  # the plans name it (a study arm's plans): NNUNET_TRANSFER_RECIPE > plans > class attribute
            recipe = recipe_from_plans(in_plans, f"{self.plans_manager.plans_name} plans, {RECIPE_PLANS_KEY}")
        self.print_to_log_file(f"nnunet-transfer recipe: {recipe.name} ({recipe.source})", also_print_to_console=True)
        return recipe

    def _apply_recipe(self, recipe: Recipe) -> None:
        for field, attr in (
            ("num_epochs", "num_epochs"),
            ("iterations_per_epoch", "num_iterations_per_epoch"),
            ("val_iterations_per_epoch", "num_val_iterations_per_epoch"),
            ("initial_lr", "initial_lr"),
            ("weight_decay", "weight_decay"),
            ("save_every", "save_every"),
        ):
            value = getattr(recipe, field)
            if value is not None:
                setattr(self, attr, value)

    def _store_recipe(self) -> None:
        """Put the recipe in force where nnU-Net keeps the plans: ``plans_manager.plans`` (saved as the results'
        ``plans.json`` by ``on_train_start``) and ``my_init_kwargs["plans"]`` (every checkpoint's ``init_args``).
        They are one dict only until something (a variant, ``load_checkpoint``) replaces one of them."""
        data = self.ft_recipe.model_dump(mode="json", exclude={"source"})
        self.plans_manager.plans[RECIPE_PLANS_KEY] = data
        self.my_init_kwargs["plans"][RECIPE_PLANS_KEY] = data

    def _write_recipe(self) -> None:
        if self.local_rank != 0:
            return
        data: dict[str, Any] = self.ft_recipe.model_dump(mode="json", exclude={"source"})
        path = Path(self.output_folder) / RECIPE_FILE
        path.write_text(yaml.safe_dump(data, sort_keys=False))

    # --- pretrained weights -----------------------------------------------------------------------------------
    def load_pretrained_adaptive(self, checkpoint: str | os.PathLike) -> LoadReport:
        """Load ``checkpoint`` adaptively into the (maybe compiled / DDP-wrapped) network; log and save the report.

        ``-pretrained_weights`` reaches this through nnU-Net's module-level ``load_pretrained_weights`` (see
        ``nnunet/pretrained_hook.py``); the name differs from nnU-Net's own trainer methods on purpose."""
        if not self.was_initialized:
            self.initialize()
        if not self._resumed and self.current_epoch == 0:
            self._refuse_finished_fold()  # before the load writes its report into the fold folder
        options = self.ft_recipe.pretrained.load_options()
        checkpoint = os.path.abspath(checkpoint)  # the report names it; a later --c may need it again
        try:
            report = load_pretrained(self.network, checkpoint, self.dataset_json.get("labels"), options)
        except LoadGuardError as e:
            e.report.attach_groups(self.param_groups)
            self._log_report(e.report)
            raise
        report.attach_groups(self.param_groups)
        self._log_report(report)
        self.pretrained_report = report
        if self.local_rank == 0 and has_adapters(self.network):  # the base the fold's adapters apply to
            write_json_atomic(Path(self.output_folder) / BASE_RECORD,
                              {"checkpoint": checkpoint, "sha256": sha256_file(checkpoint)})
        return report

    def _log_report(self, report: LoadReport) -> None:
        self.print_to_log_file("nnunet-transfer load report:\n" + report.table(), also_print_to_console=False,
                               add_timestamp=False)
        self.print_to_log_file(report.summary(), also_print_to_console=True)
        if self.local_rank == 0:
            report.write_json(Path(self.output_folder) / REPORT_FILE)

    def initialize(self) -> None:
        """nnU-Net's initialize, with the recipe fitted to the run first (:meth:`_fit_recipe_to_run`); for CPU
        processes of a process group (gloo), see ``trainers/_cpu_ddp.py``."""
        if not self.was_initialized:
            self._fit_recipe_to_run()
        if self._on_cpu_ddp:
            _cpu_ddp.initialize(self, super().initialize)
        else:
            super().initialize()

    # --- schedule -----------------------------------------------------------------------------------------------
    @property
    def param_groups(self) -> list[ParameterGroup]:
        """The network's parameter groups (empty before ``initialize``)."""
        return self.engine.groups if self.engine is not None else []

    @property
    def schedule(self) -> Schedule | None:
        """The recipe's resolved schedule (None before ``initialize``)."""
        return self.engine.schedule if self.engine is not None else None

    @property
    def _trainable(self) -> list[str] | None:
        return self.engine.trainable if self.engine is not None else None

    def _fit_recipe_to_run(self) -> None:
        """A subclass that set another ``num_epochs`` after ``super().__init__`` (nnU-Net's way to shorten a run)
        meant a run of that length: scale the recipe to it (one log line)."""
        recipe = self.ft_recipe
        try:
            fitted = scaled_to_run(recipe, self.num_epochs)
        except RecipeError as e:
            raise RecipeError(f"{type(self).__name__}: num_epochs {self.num_epochs} and recipe {recipe.name} "
                              f"({recipe.source}) do not fit: {e}") from None
        if fitted is recipe:
            return
        self.print_to_log_file(
            f"nnunet-transfer recipe {recipe.name} scaled to this run's {self.num_epochs} epochs ({type(self).__name__}"
            f" sets num_epochs; the recipe is for {recipe.num_epochs or NNUNET_DEFAULT_EPOCHS}): {fitted.name}, its "
            "phase starts, unfreezing steps and warmups in proportion", also_print_to_console=True)
        self.ft_recipe = fitted
        self._apply_recipe(fitted)
        self._store_recipe()

    def _misfit(self, network: torch.nn.Module, error: RecipeError) -> str:
        """One line: the recipe does not fit ``network`` (``error``), and the trainers whose recipes fit it."""
        import nnunet_transfer.trainers as ours  # the variants subclass this class: imported when asked

        recipe = self.ft_recipe
        try:
            group_names = [g.name for g in derive_groups(network)]  # the architecture's, as shipped recipes use
        except RecipeError:
            group_names = []
        fits = []
        for name in ours.__all__:
            try:
                candidate = load_recipe(getattr(ours, name).recipe)
                resolve_schedule(candidate, group_names, candidate.num_epochs or NNUNET_DEFAULT_EPOCHS, 1.0)
            except RecipeError:
                continue
            fits.append((not (candidate.phases or candidate.progressive), f"{name} (recipe {candidate.name})"))
        fitting = [text for _, text in sorted(fits, key=lambda f: f[0])]  # trainers that freeze first ahead
        hint = (f"trainers whose recipe fits it: {', '.join(fitting)} (-tr NAME, or {RECIPE_ENV_VAR}=RECIPE)"
                if fitting else f"write a recipe with groups for it ({RECIPE_ENV_VAR}=PATH)")
        return (f"{type(self).__name__}: recipe {recipe.name} ({recipe.source}) does not fit this "
                f"{type(network).__name__} network: {error}; {hint}")

    def configure_optimizers(self):
        """The fine-tuning engine for the recipe: one optimizer param group per parameter group, all parameters
        from the start, the recipe's clipping; its per-group scheduler. A recipe that does not fit the network is
        one line naming the trainers whose recipes fit."""
        network = unwrap_network(self.network)
        try:
            # nnU-Net logs (and plots) param group 0 only: lead with a group that trains from the start at full rate
            self.engine = FineTuneEngine(network, self.ft_recipe, self.num_epochs, self.initial_lr, self.weight_decay,
                                         lead_group_first=True)
        except RecipeError as e:
            raise RecipeError(self._misfit(network, e)) from None
        self.print_to_log_file("parameter groups (name: tensors, parameters, share, rate multiplier, trains from "
                               "epoch):\n" + "\n".join(f"  {line}" for line in self.engine.group_lines()),
                               also_print_to_console=False, add_timestamp=False)
        self._log_split()
        return self.engine.optimizer, self.engine.scheduler

    def _set_trainable(self, epoch: int) -> None:
        changed = self.engine.set_trainable(epoch)
        if changed and self._epochs_started:
            self.print_to_log_file(f"epoch {epoch}: trainable groups now {self.engine.trainable}")
        if changed and self.is_ddp:
            # DDP fixed at construction which parameters it synchronises: rebuild it for the new trainable set
            self.network = rewrap_ddp(self.network)
        self._epochs_started += 1
        self._log_split()

    def _log_split(self) -> None:
        """Log the number of decoder convolutions that compute no gradient for a frozen skip, when it changed."""
        if self.engine.split_skips != self._split:
            self.print_to_log_file("decoder convolutions computing no gradient for a frozen skip: "
                                   f"{self.engine.split_skips}", also_print_to_console=False)
        self._split = self.engine.split_skips

    def _log_schedule(self, epoch: int) -> None:
        row = self.engine.record(epoch)
        self.print_to_log_file("learning rates: " + ", ".join(f"{k} {v:.3g}" for k, v in row["lr"].items())
                               + f"; trainable fraction {row['trainable_fraction']:.3f}")
        if self.local_rank != 0:
            return
        if self._lr_table is None:
            self._lr_table = LRTable.load(Path(self.output_folder) / LR_TABLE_FILE)
        self._lr_table.record(row)

    def on_train_epoch_start(self) -> None:
        self._set_trainable(self.current_epoch)
        super().on_train_epoch_start()  # network.train(), scheduler step (every group), logs group 0
        self.engine.norms_to_eval()
        self._log_schedule(self.current_epoch)

    def _wait_for_panel(self) -> None:
        """Wait for the schedule panel under way (if any); log the failures of panels that could not be added."""
        for failure in self._panel_worker.wait():
            self.print_to_log_file("schedule panel not added to progress.png (training goes on):\n" + failure,
                                   also_print_to_console=False)
            self.print_to_log_file("schedule panel not added to progress.png (training goes on): "
                                   + failure.strip().splitlines()[-1], also_print_to_console=True)

    def on_epoch_end(self) -> None:
        self._wait_for_panel()  # an earlier panel must never land on the progress.png nnU-Net writes now
        super().on_epoch_end()  # writes progress.png (rank 0), current_epoch += 1
        if self.local_rank == 0 and self._lr_table is not None and self._lr_table.rows:
            # drawn while the next epoch trains; the rows are a snapshot (the list grows, rows are never changed)
            self._panel_worker.submit(self._panel.add_to, Path(self.output_folder) / "progress.png",
                                      list(self._lr_table.rows))
        self._maybe_stop()

    def _before_stop(self) -> None:
        self._wait_for_panel()
        self._panel_worker.close()

    def on_train_end(self) -> None:
        self._wait_for_panel()  # the last epoch's panel is in progress.png before training is reported done
        self._panel_worker.close()
        self._release_stop_signals()
        try:
            super().on_train_end()
            self._write_adapters()
        finally:
            self._graceful.uninstall()

    def _write_adapters(self) -> None:
        """A LoRA run's final adapters in peft's format in ``fold_F/adapters`` (``nnunet-transfer adapters
        extract`` writes the same from ``checkpoint_final.pth``)."""
        fold = Path(self.output_folder)
        if self.local_rank != 0 or self.ft_recipe.adapters is None or not has_adapters(self.network):
            return
        base = fold / BASE_RECORD
        report = fold / REPORT_FILE
        state = unwrap_network(self.network).state_dict()
        keys = from_base(state, read_json_object(report) if report.is_file() else None)
        metadata = fold_metadata(self.plans_manager.plans, self.configuration_name, str(self.fold),
                                 self.dataset_json, type(self).__name__, self.current_epoch,
                                 list(self.inference_allowed_mirroring_axes or []) or None,
                                 read_json_object(base) if base.is_file() else None, keys)
        save_adapters(fold / ADAPTER_FOLDER, state, self.ft_recipe.adapters, keys, metadata)

    # --- nnU-Net hooks ----------------------------------------------------------------------------------------
    def load_checkpoint(self, filename_or_checkpoint: dict | str) -> None:
        """nnU-Net's, under the recipe the checkpoint was trained with (``--c``, ``--val``), whatever recipe the
        class or ``NNUNET_TRANSFER_RECIPE`` names now: its groups shape the optimizer state being loaded."""
        self._resumed = True
        if isinstance(filename_or_checkpoint, str):
            # nnU-Net reads its own fold checkpoint unrestricted right after this; mmap leaves the tensors on disk
            stored = torch.load(filename_or_checkpoint, map_location="cpu", weights_only=False, mmap=True)
        else:
            stored = filename_or_checkpoint
        self._adopt_recipe(stored.get("init_args", {}).get("plans", {}).get(RECIPE_PLANS_KEY),
                           str(filename_or_checkpoint) if isinstance(filename_or_checkpoint, str) else "checkpoint")
        del stored
        super().load_checkpoint(filename_or_checkpoint)

    def _adopt_recipe(self, data: dict | None, where: str) -> None:
        if not data or data == self.ft_recipe.model_dump(mode="json", exclude={"source"}):
            return
        try:
            recipe = Recipe.model_validate(data)
        except ValueError as e:
            raise RecipeError(f"{where}: the recipe stored in the checkpoint (init_args.plans.{RECIPE_PLANS_KEY}) "
                              f"is not valid for this version of nnunet-transfer: {e}") from None
        recipe.source = f"{where}, init_args.plans.{RECIPE_PLANS_KEY}"
        self.print_to_log_file(f"nnunet-transfer recipe: {recipe.name} ({recipe.source}), the one this checkpoint "
                               f"was trained with, instead of {self.ft_recipe.name}", also_print_to_console=True)
        self.ft_recipe = recipe
        self._apply_recipe(recipe)
        self._store_recipe()  # plans.json follows; my_init_kwargs becomes the checkpoint's (recipe in it) right after
        if self.was_initialized:  # the optimizer's param groups follow the recipe's parameter groups
            self.optimizer, self.lr_scheduler = self.configure_optimizers()

    def _refuse_finished_fold(self) -> None:
        final = Path(self.output_folder) / "checkpoint_final.pth"
        if final.is_file():
            raise TrainingStateError(
                f"{final}: this fold has finished training and a new training would overwrite it; use --val to "
                "validate it again, --c to continue it, or move the fold folder away to train it anew")

    def _pretrained_to_load(self) -> str | None:
        """The checkpoint a new training starts from when ``-pretrained_weights`` was not given, or an error if there
        is none (a fine-tuning trainer never trains from scratch unless the recipe says ``required: false``)."""
        fold = Path(self.output_folder)
        checkpoint = self.ft_recipe.pretrained.checkpoint
        if checkpoint:
            return checkpoint
        previous = fold / REPORT_FILE
        if self._continue_training and previous.is_file():
            # --c, but the run had saved no checkpoint yet: it restarts from the weights it began with
            began_with = json.loads(previous.read_text())["checkpoint"]
            if not os.path.isfile(began_with):
                raise TrainingStateError(
                    f"{fold}: nothing to resume from (no checkpoint_*.pth), and the pretrained checkpoint this run "
                    f"began with ({began_with}, named in {REPORT_FILE}) is gone; start again with -pretrained_weights")
            self.print_to_log_file(f"--c: {fold} holds no checkpoint yet; the run restarts from the pretrained "
                                   f"weights it began with ({began_with})", also_print_to_console=True)
            return began_with
        if self.ft_recipe.pretrained.required:
            raise TrainingStateError(
                f"{type(self).__name__} got no pretrained weights and would train from scratch: pass "
                f"-pretrained_weights CHECKPOINT, or set pretrained.checkpoint in the recipe ({self.ft_recipe.source}; "
                f"{RECIPE_ENV_VAR} names another). To train from scratch on purpose, use nnUNetTrainer or set "
                "pretrained.required: false")
        self.print_to_log_file("no pretrained weights (the recipe says pretrained.required: false): training from "
                               "scratch", also_print_to_console=True)
        return None

    def on_train_start(self) -> None:
        # before nnU-Net forks the data-augmentation workers (super().on_train_start()): they inherit the handlers
        self._install_stop_signals()
        try:
            self._start_training()
        except BaseException:
            self._graceful.uninstall()
            raise

    def _start_training(self) -> None:
        if not self.was_initialized:
            self.initialize()
        if not self._resumed and self.current_epoch == 0:  # a new training, not --c from a checkpoint
            self._refuse_finished_fold()
            if self.pretrained_report is None:
                if _pretrained_weights_flag():
                    raise TrainingStateError(
                        f"-pretrained_weights was given but never reached {type(self).__name__}: nnU-Net did not call "
                        f"its module-level load_pretrained_weights (the seam {PRETRAINED_SEAM}); problems found: "
                        f"{'; '.join(seam_problems() or ['none detected'])}. Set pretrained.checkpoint in the recipe "
                        "instead, or use an nnU-Net version this nnunet-transfer supports (nnunet-transfer doctor)")
                checkpoint = self._pretrained_to_load()
                if checkpoint:
                    self.load_pretrained_adaptive(checkpoint)
            elif self.ft_recipe.pretrained.checkpoint:
                self.print_to_log_file(f"recipe checkpoint {self.ft_recipe.pretrained.checkpoint} not loaded: "
                                       "-pretrained_weights was given")
        self._store_recipe()  # nnU-Net saves plans_manager.plans as plans.json now; a variant may have replaced it
        super().on_train_start()
        self._write_recipe()
        self._remove_stale_temporaries()
