"""nnUNetTrainer subclasses of nnunet-transfer, found by the stock ``nnUNetv2_*`` commands via ``nnUNet_extTrainer``."""

from nnunet_transfer.trainers.adaptive_ft import nnUNetTrainerAdaptiveFT
from nnunet_transfer.trainers.variants import (
    nnUNetTrainerAdaptiveFT_100epochs,
    nnUNetTrainerAdaptiveFT_250epochs,
    nnUNetTrainerAdaptiveFT_DecoderOnly,
    nnUNetTrainerAdaptiveFT_Full,
    nnUNetTrainerAdaptiveFT_LoRA,
    nnUNetTrainerAdaptiveFT_nnsslPrimus,
    nnUNetTrainerAdaptiveFT_nnsslPrimusLoRA,
    nnUNetTrainerAdaptiveFT_nnsslResEnc,
)

__all__ = [
    "nnUNetTrainerAdaptiveFT",
    "nnUNetTrainerAdaptiveFT_100epochs",
    "nnUNetTrainerAdaptiveFT_250epochs",
    "nnUNetTrainerAdaptiveFT_DecoderOnly",
    "nnUNetTrainerAdaptiveFT_Full",
    "nnUNetTrainerAdaptiveFT_LoRA",
    "nnUNetTrainerAdaptiveFT_nnsslPrimus",
    "nnUNetTrainerAdaptiveFT_nnsslPrimusLoRA",
    "nnUNetTrainerAdaptiveFT_nnsslResEnc",
]
