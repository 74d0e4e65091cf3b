"""Variants of nnUNetTrainerAdaptiveFT, each a recipe name (nnU-Net's style: one attribute per variant).

Any recipe can also be used without a class: ``NNUNET_TRANSFER_RECIPE=name_or_path nnUNetv2_train ...``.
"""

from nnunet_transfer.trainers.adaptive_ft import nnUNetTrainerAdaptiveFT

__all__ = [
    "nnUNetTrainerAdaptiveFT_100epochs",
    "nnUNetTrainerAdaptiveFT_250epochs",
    "nnUNetTrainerAdaptiveFT_DecoderOnly",
    "nnUNetTrainerAdaptiveFT_Full",
]


class nnUNetTrainerAdaptiveFT_DecoderOnly(nnUNetTrainerAdaptiveFT):
    """The encoder stays frozen for the whole run."""

    recipe = "decoder_only"


class nnUNetTrainerAdaptiveFT_Full(nnUNetTrainerAdaptiveFT):
    """No freezing; per-group rates (encoder at 0.1x)."""

    recipe = "full_ft"


class nnUNetTrainerAdaptiveFT_250epochs(nnUNetTrainerAdaptiveFT):
    """The default schedule on 250 epochs."""

    recipe = "default_250epochs"


class nnUNetTrainerAdaptiveFT_100epochs(nnUNetTrainerAdaptiveFT):
    """The default schedule on 100 epochs."""

    recipe = "default_100epochs"
