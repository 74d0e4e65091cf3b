"""``nnUNetTrainerAdaptiveFT``: nnU-Net's trainer with adaptive pretrained loading, recipes and schedules.

``nnUNetv2_train D C F -tr nnUNetTrainerAdaptiveFT -pretrained_weights CKPT`` sends the weights through
:func:`nnunet_transfer.load_pretrained` instead of nnU-Net's strict loader; the report goes to the training log and
to ``pretrained_load_report.json`` in the fold folder. The checkpoint may also come from the recipe
(``pretrained.checkpoint``); it is loaded once, at the start of a new training, never over a resumed (``--c``) run.

The recipe's schedule (parameter groups, freeze phases, per-group learning rates, warmup) replaces nnU-Net's single
polynomial rate: every parameter is in the optimizer from the start (one param group per parameter group), frozen
groups get no gradient and their norm layers stay in eval mode, and under DDP the wrapper is rebuilt whenever the
trainable set changes so that newly unfrozen parameters are synchronised. Each epoch's rates and trainable groups
go to the log and to ``lr_table.json``, and a panel of them under nnU-Net's ``progress.png``: drawn in a background
thread during the next epoch (rank 0), waited for before nnU-Net writes ``progress.png`` again and at the end of
training; a failure to draw it is logged and training goes on.

Preemption: from the start of training, SIGUSR1, SIGUSR2 or SIGTERM ask the trainer to stop (see
``core/preemption.py``; a second SIGTERM kills at once). At the end of the epoch under way it writes
``checkpoint_latest.pth`` as nnU-Net's periodic save would have, shuts the data loaders down and exits with
:data:`PREEMPTED_EXIT_CODE` (75); ``nnUNetv2_train ... --c`` continues from the next epoch. Under DDP all ranks
stop at the same epoch. Checkpoints are written atomically (a temporary file replaced in one step), so a kill
during a save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.distributed as dist
import yaml
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_transfer.core.background import LatestJobWorker
from nnunet_transfer.core.io import atomic_path
from nnunet_transfer.core.loading.loader import load_pretrained, unwrap_network
from nnunet_transfer.core.loading.report import LoadReport
from nnunet_transfer.core.preemption import PREEMPTED_EXIT_CODE, GracefulStop
from nnunet_transfer.core.schedules.groups import ParameterGroup, derive_groups
from nnunet_transfer.core.schedules.lr_table import LRTable
from nnunet_transfer.core.schedules.plot import SchedulePanel
from nnunet_transfer.core.schedules.recipes import RECIPE_ENV_VAR, Recipe, load_recipe
from nnunet_transfer.core.schedules.schedule import (
    GradClip,
    PerGroupLRScheduler,
    Schedule,
    apply_freeze,
    build_optimizer,
    freeze_norms,
    resolve_schedule,
    rewrap_ddp,
)
from nnunet_transfer.core.schedules.skips import disable_skip_split, update_skip_split
from nnunet_transfer.errors import LoadGuardError, RecipeError, TrainingStateError
from nnunet_transfer.nnunet.networks import accepts_deep_supervision, build_from_plans
from nnunet_transfer.nnunet.pretrained_hook import PRETRAINED_SEAM, install_pretrained_hook, seam_problems
from nnunet_transfer.trainers import _cpu_ddp

__all__ = ["LR_TABLE_FILE", "RECIPE_FILE", "RECIPE_PLANS_KEY", "REPORT_FILE", "nnUNetTrainerAdaptiveFT"]

REPORT_FILE = "pretrained_load_report.json"
RECIPE_FILE = "adaptive_ft_recipe.yaml"
LR_TABLE_FILE = "lr_table.json"
RECIPE_PLANS_KEY = "nnunet_transfer_recipe"


def _pretrained_weights_flag() -> bool:
    """True when this process is ``nnUNetv2_train ... -pretrained_weights CKPT``."""
    return any(a == "-pretrained_weights" or a.startswith("-pretrained_weights=") for a in sys.argv[1:])


class nnUNetTrainerAdaptiveFT(nnUNetTrainer):
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
        self.param_groups: list[ParameterGroup] = []
        self.schedule: Schedule | None = None
        self._trainable: list[str] | None = None
        self._split = 0  # decoder convolutions split now (see _split_skips)
        self._lr_table: LRTable | None = None  # lr_table.json, read once (a resumed run's epochs)
        self._fractions: dict[tuple[str, ...], float] = {}  # trainable fraction per trainable set
        self._panel = SchedulePanel()
        self._panel_worker = LatestJobWorker("nnunet-transfer schedule panel", nice=19)
        self._graceful = GracefulStop()  # installed by on_train_start, removed by on_train_end or a stop
        self._grad_clip: GradClip | None = None
        install_pretrained_hook(self)

    @staticmethod
    def build_network_architecture(plans_manager: Any, configuration_manager: Any, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> torch.nn.Module:
        """nnU-Net's network for the plans; a network class without deep supervision (Primus) is built without it,
        so that the plans alone build it (also for ``nnUNetv2_predict``)."""
        return build_from_plans(configuration_manager, num_input_channels, num_output_channels,
                                enable_deep_supervision)

    def set_deep_supervision_enabled(self, enabled: bool) -> None:
        """nnU-Net's, for networks that have a decoder with deep supervision (Primus has none)."""
        if hasattr(getattr(unwrap_network(self.network), "decoder", None), "deep_supervision"):
            super().set_deep_supervision_enabled(enabled)

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
        return report

    def _log_report(self, report: LoadReport) -> None:
        self.print_to_log_file("nnunet-transfer load report:\n" + report.table(), also_print_to_console=False,
                               add_timestamp=False)
        self.print_to_log_file(report.summary(), also_print_to_console=True)
        if self.local_rank == 0:
            report.write_json(Path(self.output_folder) / REPORT_FILE)

    def initialize(self) -> None:
        """nnU-Net's initialize; for CPU processes of a process group (gloo), see ``trainers/_cpu_ddp.py``."""
        if self._on_cpu_ddp:
            _cpu_ddp.initialize(self, super().initialize)
        else:
            super().initialize()

    # --- schedule -----------------------------------------------------------------------------------------------
    def configure_optimizers(self):
        """One optimizer param group per parameter group, all parameters from the start; our per-group scheduler."""
        recipe = self.ft_recipe
        self.param_groups = derive_groups(unwrap_network(self.network), recipe.groups)
        self.schedule = resolve_schedule(recipe, [g.name for g in self.param_groups], self.num_epochs, self.initial_lr,
                                         self.weight_decay)
        # nnU-Net logs (and plots) param group 0 only: lead with a group that trains from the start at the full rate
        s = self.schedule
        lead = max((g for g in self.param_groups if s.unfreeze_epoch[g.name] == 0),
                   key=lambda g: s.multiplier[g.name], default=self.param_groups[0])
        ordered = [lead] + [g for g in self.param_groups if g is not lead]
        optimizer = build_optimizer(ordered, self.schedule, recipe.optimizer, recipe.adamw_betas)
        if recipe.grad_clip_norm is not None:  # nnU-Net's train_step clips at 12; this clips further, before each step
            self._grad_clip = GradClip(optimizer, recipe.grad_clip_norm)
        self._fractions = {}
        total = sum(g.numel for g in self.param_groups)
        self.print_to_log_file("parameter groups (name: tensors, parameters, share, rate multiplier, trains from "
                               "epoch):\n" + "\n".join(
                                   f"  {g.name}: {len(g.params)}, {g.numel}, {g.numel / total:.1%}, "
                                   f"{s.multiplier[g.name]:g}, {s.unfreeze_epoch[g.name]}" for g in self.param_groups),
                               also_print_to_console=False, add_timestamp=False)
        return optimizer, PerGroupLRScheduler(optimizer, self.schedule)

    def _set_trainable(self, epoch: int) -> None:
        trainable = self.schedule.trainable(epoch)
        first = self._trainable is None
        changed = apply_freeze(self.param_groups, trainable)
        if changed and not first:
            self.print_to_log_file(f"epoch {epoch}: trainable groups now {trainable}")
        if changed and self.is_ddp:
            # DDP fixed at construction which parameters it synchronises: rebuild it for the new trainable set
            self.network = rewrap_ddp(self.network)
        self._trainable = trainable
        if changed or first:
            self._split_skips()

    def _split_skips(self) -> None:
        """No input gradient for the skips whose encoder side is frozen now (recipe ``split_frozen_skips``); called
        whenever the trainable set changes."""
        if self.ft_recipe.split_frozen_skips:
            split = update_skip_split(self.network)
        else:
            disable_skip_split(self.network)
            split = 0
        if split != self._split:
            self.print_to_log_file(f"decoder convolutions computing no gradient for a frozen skip: {split}",
                                   also_print_to_console=False)
        self._split = split

    def _norms_to_eval(self) -> None:
        if self.ft_recipe.frozen_norm == "eval" and self._trainable is not None:
            freeze_norms(unwrap_network(self.network), self.param_groups, self._trainable)

    def _trainable_fraction(self) -> float:
        key = tuple(self._trainable)
        if key not in self._fractions:
            total = sum(g.numel for g in self.param_groups)
            self._fractions[key] = sum(g.numel for g in self.param_groups if g.name in self._trainable) / total
        return self._fractions[key]

    def _log_schedule(self, epoch: int) -> None:
        lrs = {pg["name"]: pg["lr"] for pg in self.optimizer.param_groups}
        frac = self._trainable_fraction()
        self.print_to_log_file("learning rates: " + ", ".join(f"{k} {v:.3g}" for k, v in lrs.items())
                               + f"; trainable fraction {frac:.3f}")
        if self.local_rank != 0:
            return
        if self._lr_table is None:
            self._lr_table = LRTable.load(Path(self.output_folder) / LR_TABLE_FILE)
        self._lr_table.record({"epoch": epoch, "lr": lrs, "trainable": list(self._trainable),
                               "trainable_fraction": frac})

    def on_train_epoch_start(self) -> None:
        self._set_trainable(self.current_epoch)
        super().on_train_epoch_start()  # network.train(), scheduler step (every group), logs group 0
        self._norms_to_eval()
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
        if self._stop_agreed():
            self._stop_preempted()

    def on_train_end(self) -> None:
        self._wait_for_panel()  # the last epoch's panel is in progress.png before training is reported done
        self._panel_worker.close()
        self._graceful.release_children()  # nnU-Net shuts the loaders down now: stragglers must obey its SIGTERM
        try:
            super().on_train_end()
        finally:
            self._graceful.uninstall()

    # --- preemption ---------------------------------------------------------------------------------------------
    def _stop_agreed(self) -> bool:
        """Whether to stop now: a stop signal reached this process, or under DDP any rank (every rank must leave
        the loop at the same epoch, or the others would wait for it in their next collective call)."""
        stop = self._graceful.requested is not None
        if self.is_ddp and dist.is_available() and dist.is_initialized():
            flag = torch.tensor([int(stop)], dtype=torch.int32, device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item())
        return stop

    def _continue_command(self) -> str:
        """The ``nnUNetv2_train`` command that continues this training."""
        args = [self.plans_manager.dataset_name, self.configuration_name, str(self.fold), "-tr", type(self).__name__,
                "-p", self.plans_manager.plans_name]
        if self.device.type != "cuda":
            args += ["-device", self.device.type]
        if self.is_ddp and dist.is_initialized():
            args += ["-num_gpus", str(dist.get_world_size())]
        return "nnUNetv2_train " + shlex.join(args) + " --c"

    def _stop_preempted(self) -> None:
        """Called by :meth:`on_epoch_end` (after nnU-Net's, which advanced ``current_epoch``) when a stop was asked
        for: write ``checkpoint_latest.pth`` as nnU-Net's periodic save at this epoch would have, shut the data
        loaders down and leave with :data:`PREEMPTED_EXIT_CODE` through ``SystemExit``."""
        finished = self.current_epoch - 1
        latest = os.path.join(self.output_folder, "checkpoint_latest.pth")
        if not ((finished + 1) % self.save_every == 0 and finished != self.num_epochs - 1):  # else written just now
            # nnU-Net saves before its current_epoch += 1 and stores current_epoch + 1: the epoch to continue from
            self.current_epoch -= 1
            try:
                self.save_checkpoint(latest)
            finally:
                self.current_epoch += 1
        if self.is_ddp and dist.is_available() and dist.is_initialized():
            dist.barrier()  # no rank leaves (and takes the process group down) before rank 0 has written
        self._wait_for_panel()
        self._panel_worker.close()
        self._shutdown_dataloaders()
        request = self._graceful.requested
        why = request.describe() if request is not None else "a stop request of another rank"
        saved = ("checkpoint_latest.pth holds the state to continue from epoch "
                 f"{self.current_epoch}" if not self.disable_checkpointing else
                 "no checkpoint written (checkpointing is disabled): a resumed run starts over")
        self.print_to_log_file(f"Training stopped on {why} at the end of epoch {finished}; {saved}. Continue with: "
                               f"{self._continue_command()} (exit status {PREEMPTED_EXIT_CODE})",
                               also_print_to_console=True)
        self._graceful.uninstall()
        raise SystemExit(PREEMPTED_EXIT_CODE)

    def _shutdown_dataloaders(self) -> None:
        """Stop the data-augmentation workers as nnU-Net's ``on_train_end`` does (their output silenced)."""
        self._graceful.release_children()
        old_stdout = sys.stdout
        try:
            with open(os.devnull, "w") as devnull:
                sys.stdout = devnull
                for loader in (self.dataloader_train, self.dataloader_val):
                    finish = getattr(loader, "_finish", None)  # (NonDet)MultiThreadedAugmenter; not single-threaded
                    if callable(finish):
                        finish()
        finally:
            sys.stdout = old_stdout

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's, written to a temporary file beside ``filename`` that replaces it in one step: a kill during
        the save leaves the previous checkpoint as it was."""
        if self.local_rank != 0 or self.disable_checkpointing:
            super().save_checkpoint(filename)  # writes nothing
            return
        with atomic_path(filename) as tmp:
            super().save_checkpoint(str(tmp))

    def _remove_stale_temporaries(self) -> None:
        """Temporary checkpoint files of a run killed during a save (SIGKILL)."""
        if self.local_rank != 0:
            return
        for tmp in Path(self.output_folder).glob(".checkpoint_*.tmp.pth"):
            tmp.unlink(missing_ok=True)

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
        if not self._graceful.install():
            self.print_to_log_file("stop signals (SIGUSR1, SIGUSR2, SIGTERM) not handled: training does not run in "
                                   "the main thread", also_print_to_console=False)
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
