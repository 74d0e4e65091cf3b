"""A user's own external trainer folder, as nnU-Net users have them: short-budget stock trainers for the tests.

The tests put this folder on ``nnUNet_extTrainer`` beside ours, which also checks that a user's folders keep
working after nnunet-transfer is installed.
"""

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainer_TransferTestTiny(nnUNetTrainer):
    """The stock trainer, only shorter: 2 epochs of 4 iterations, 2 validation iterations."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 2
        self.num_iterations_per_epoch = 4
        self.num_val_iterations_per_epoch = 2
