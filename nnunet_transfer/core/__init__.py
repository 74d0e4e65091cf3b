"""The core: checkpoint loading and adaptation, parameter groups and schedules, the architecture registry.

Nothing under ``nnunet_transfer.core`` imports nnunetv2 (the test suite checks it with import-linter): it works on
any ``torch.nn.Module`` and is usable without nnU-Net's data folders. The nnU-Net bridge is
:mod:`nnunet_transfer.nnunet`; the trainers nnU-Net finds are :mod:`nnunet_transfer.trainers`.
"""
