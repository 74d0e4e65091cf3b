"""Trainers of the GPU check (``nnunet-transfer gpu-check``): nnU-Net's and ours, measured per epoch.

Not among the package's trainers (``nnunet_transfer.trainers.__all__``): the check puts its own shim folder
(``nnunet_transfer/gpucheck/_trainers``) on ``nnUNet_extTrainer`` for its ``nnUNetv2_train`` / ``nnUNetv2_predict``
processes only. Each trainer writes, at the end of every epoch, ``gpucheck_epochs.json`` in its fold folder: the epoch's
wall time from ``on_epoch_start`` to ``on_epoch_end`` (training and validation iterations; CUDA synchronised) and the
peak of ``torch.cuda.max_memory_allocated`` during it (null on a CPU). The final validation is skipped. The stock
trainer's budget comes from ``NNUNET_TRANSFER_GPUCHECK_EPOCHS`` / ``_ITERATIONS`` / ``_VAL_ITERATIONS``; ours takes
it from its recipe, which the check writes with the same numbers.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_transfer.core.io import write_text_atomic
from nnunet_transfer.trainers.adaptive_ft import nnUNetTrainerAdaptiveFT

__all__ = ["EPOCHS_FILE", "nnUNetTrainerAdaptiveFT_GPUCheck", "nnUNetTrainer_GPUCheck"]

EPOCHS_FILE = "gpucheck_epochs.json"


class _EpochMeter:
    """Mixin: time and peak device memory of every epoch, to ``EPOCHS_FILE`` in the fold folder (rank 0)."""

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def on_epoch_start(self) -> None:
        self._sync()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._gpucheck_start = time.perf_counter()
        super().on_epoch_start()

    def on_epoch_end(self) -> None:
        self._sync()
        seconds = time.perf_counter() - self._gpucheck_start
        peak = torch.cuda.max_memory_allocated(self.device) / 2**20 if self.device.type == "cuda" else None
        if self.local_rank == 0:
            path = Path(self.output_folder) / EPOCHS_FILE
            records = json.loads(path.read_text()) if path.is_file() else []
            records.append({"epoch": int(self.current_epoch), "seconds": seconds, "peak_memory_mb": peak})
            write_text_atomic(path, json.dumps(records))
        super().on_epoch_end()

    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        """Skipped: the check times epochs, predicts with ``nnUNetv2_predict`` and never reads validation Dice."""
        self.print_to_log_file("GPU check: final validation skipped")


class nnUNetTrainer_GPUCheck(_EpochMeter, nnUNetTrainer):
    """nnU-Net's trainer on the check's budget, measured."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = int(os.environ.get("NNUNET_TRANSFER_GPUCHECK_EPOCHS", "2"))
        self.num_iterations_per_epoch = int(os.environ.get("NNUNET_TRANSFER_GPUCHECK_ITERATIONS", "10"))
        self.num_val_iterations_per_epoch = int(os.environ.get("NNUNET_TRANSFER_GPUCHECK_VAL_ITERATIONS", "2"))


class nnUNetTrainerAdaptiveFT_GPUCheck(_EpochMeter, nnUNetTrainerAdaptiveFT):
    """Our trainer (its recipe from ``NNUNET_TRANSFER_RECIPE``), measured."""
