"""Preemption and atomic checkpoints for our nnU-Net trainers (a mixin: no ``__init__``, nnU-Net's hooks stay the
trainer's).

From the start of training, SIGUSR1, SIGUSR2 or SIGTERM ask the trainer to stop (see ``core/preemption.py``; a second
SIGTERM kills at once). At the end of the epoch under way it writes ``checkpoint_latest.pth`` as nnU-Net's periodic
save would have, shuts the data loaders down and exits with :data:`PREEMPTED_EXIT_CODE` (75); ``nnUNetv2_train ...
--c`` continues from the next epoch. Under DDP all ranks stop at the same epoch. Checkpoints are written atomically
(a temporary file replaced in one step), so a kill during a save leaves the previous checkpoint intact.

The trainer calls :meth:`PreemptionMixin._install_stop_signals` first thing in ``on_train_start`` (before nnU-Net
forks its data-augmentation workers, which inherit the handlers), :meth:`PreemptionMixin._maybe_stop` at the end of
``on_epoch_end``, and :meth:`PreemptionMixin._release_stop_signals` around nnU-Net's ``on_train_end``; it may
override :meth:`PreemptionMixin._before_stop` to finish its own background work before the process leaves.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from nnunet_transfer.core.io import atomic_path
from nnunet_transfer.core.preemption import PREEMPTED_EXIT_CODE, GracefulStop

__all__ = ["PREEMPTED_EXIT_CODE", "PreemptionMixin"]


class PreemptionMixin:
    """Stop signals, a clean stop at an epoch's end with exit status 75, atomic checkpoint writes. Mixed into a
    subclass of nnU-Net's ``nnUNetTrainer`` (before it in the bases)."""

    @property
    def _graceful(self) -> GracefulStop:
        """This trainer's stop-signal handler (installed by ``on_train_start``, removed by ``on_train_end`` or a
        stop)."""
        graceful = self.__dict__.get("_graceful_stop")
        if graceful is None:
            graceful = self.__dict__["_graceful_stop"] = GracefulStop()
        return graceful

    def _install_stop_signals(self) -> None:
        if not self._graceful.install():
            self.print_to_log_file("stop signals (SIGUSR1, SIGUSR2, SIGTERM) not handled: training does not run in "
                                   "the main thread", also_print_to_console=False)

    def _release_stop_signals(self) -> None:
        """Before nnU-Net shuts the loaders down: stragglers must obey its SIGTERM."""
        self._graceful.release_children()

    def _maybe_stop(self) -> None:
        """At the end of ``on_epoch_end`` (after nnU-Net's): stop if a stop was asked for (see the module)."""
        if self._stop_agreed():
            self._stop_preempted()

    def _before_stop(self) -> None:
        """The trainer's own work to finish before a preempted process leaves (after the checkpoint is written)."""

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
        """Called by :meth:`_maybe_stop` (after nnU-Net's ``on_epoch_end``, which advanced ``current_epoch``) when a
        stop was asked for: write ``checkpoint_latest.pth`` as nnU-Net's periodic save at this epoch would have, shut
        the data loaders down and leave with :data:`PREEMPTED_EXIT_CODE` through ``SystemExit``."""
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
        self._before_stop()
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
