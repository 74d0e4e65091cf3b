"""nnUNetTrainer subclasses of nnunet-transfer, found by the stock ``nnUNetv2_*`` commands via ``nnUNet_extTrainer``."""

from nnunet_transfer.trainers.adaptive_ft import nnUNetTrainerAdaptiveFT

__all__ = ["nnUNetTrainerAdaptiveFT"]
