"""Typed exceptions. Each message names the file, key, shapes or field at fault and what to do about it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nnunet_transfer.core.loading.report import LoadReport

__all__ = [
    "AdapterError",
    "ArchitectureError",
    "CampaignError",
    "CheckpointError",
    "ExportError",
    "ExportRefusedError",
    "LoadGuardError",
    "MissingExtraError",
    "MissingTrainerWarning",
    "NnsslError",
    "NonFiniteWeightsError",
    "PeftMissingError",
    "PlansError",
    "PretrainedSeamWarning",
    "RecipeError",
    "ReportError",
    "SlurmError",
    "SplitsError",
    "TrainerNotFoundError",
    "TrainingStateError",
    "TransferError",
    "UnsafeCheckpointError",
]


class TransferError(Exception):
    """Base class of every error nnunet-transfer raises on purpose (the CLI prints these without a traceback)."""

    exit_code = 2


class CheckpointError(TransferError):
    """The checkpoint file cannot be used: missing, unreadable, not a checkpoint, or no weights in it."""


class UnsafeCheckpointError(CheckpointError):
    """Loading the checkpoint would need globals outside the safe allow-list (arbitrary code could run)."""

    def __init__(self, message: str, globals_needed: list[str]):
        super().__init__(message)
        self.globals_needed = globals_needed


class NonFiniteWeightsError(CheckpointError):
    """A tensor that would be loaded holds NaN or Inf values."""


class LoadGuardError(TransferError):
    """The load would cover too little of the network: training would in effect start from scratch."""

    exit_code = 1

    def __init__(self, message: str, report: LoadReport):
        super().__init__(message)
        self.report = report


class RecipeError(TransferError):
    """A fine-tuning recipe is invalid (unknown key, wrong type, bad value)."""


class PlansError(TransferError):
    """nnU-Net plans or dataset files are missing or inconsistent."""


class TrainingStateError(TransferError):
    """A training would lose results or start without pretrained weights (a finished fold, no weights given)."""


class ArchitectureError(TransferError):
    """An architecture spec is invalid or names what its network does not have (a module, a duplicate name)."""


class CampaignError(TransferError):
    """A campaign file is invalid (unknown key, wrong type, unknown dataset, missing checkpoint, trainer or recipe)."""


class ReportError(TransferError):
    """A campaign report cannot be written (its output folder cannot be created or is not a folder)."""


class SlurmError(TransferError):
    """SLURM cannot be used here (no ``sbatch``/``srun``), or a submission failed."""


class NnsslError(CheckpointError):
    """An nnssl checkpoint's adaptation plan is malformed, names an unknown architecture or keys it does not hold."""


class ExportError(TransferError):
    """The export request cannot be carried out as given: no such model folder, fold, checkpoint or format, an
    output that exists already. Nothing was written."""


class ExportRefusedError(TransferError):
    """The export was made but does not hold the fold's weights or does not compute what the network computes (or the
    exporter failed): nothing was written."""

    exit_code = 1


class MissingExtraError(ExportError):
    """An optional dependency of the chosen format is not installed (the message says which extra installs it)."""


class TrainerNotFoundError(PlansError):
    """A trainer class named by a checkpoint, a model folder or the user is not installed here (neither among
    nnU-Net's trainers nor in the ``nnUNet_extTrainer`` folders)."""

    def __init__(self, message: str, trainer: str):
        super().__init__(message)
        self.trainer = trainer


class PretrainedSeamWarning(UserWarning):
    """nnU-Net no longer calls ``load_pretrained_weights`` the way the ``-pretrained_weights`` hook expects."""


class MissingTrainerWarning(UserWarning):
    """A checkpoint's trainer class is not installed: its network was built by nnU-Net's own ``nnUNetTrainer``, which
    the tensor-by-tensor check can confirm only for the parameters (not activations or other parameter-free parts)."""


class AdapterError(TransferError):
    """LoRA adapters that cannot be injected, saved or applied (a wrong base checkpoint, a folder without adapters)."""


class PeftMissingError(AdapterError):
    """Adapters were asked for, but Hugging Face ``peft`` (the ``peft`` extra) is not installed."""

    process_exit_status = 2  # nnUNetv2_train ends with it (trainers/_user_errors.py): a user error, nothing written


class SplitsError(TransferError):
    """Label-fraction folds cannot be written: a fraction leaves no case or drops a label, or ``splits_final.json``
    or its sidecar is unreadable."""
