"""DDP on CPU processes (the gloo backend): the path the test suite uses, and CPU clusters.

nnU-Net's trainer assumes CUDA under DDP: its ``__init__`` moves a DDP trainer to ``cuda:<rank>`` and builds a CUDA
GradScaler, and its ``initialize`` converts BatchNorm to SyncBatchNorm and wraps the network in
``DDP(network, device_ids=[rank])``, which DDP rejects for CPU modules. When a process group is up and the trainer
was asked for ``device=cpu``, :func:`use_cpu` undoes the CUDA choices and :func:`initialize` runs nnU-Net's
``initialize`` as for one process, then splits the batch, wraps the network without ``device_ids`` and rebuilds the
loss (its batch dice all-gathers across ranks).

SyncBatchNorm does not run on CPU tensors (torch raises "SyncBatchNorm expected input tensor to be on GPU" in
training), so BatchNorm layers stay plain: each rank normalises with its own batch statistics and DDP broadcasts
rank 0's running statistics at every forward pass. :func:`initialize` warns when the network has BatchNorm layers;
nnU-Net's default InstanceNorm needs no synchronisation. On CUDA none of this runs: the trainer is nnU-Net's.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["CpuDDPBatchNormWarning", "applies", "initialize", "use_cpu"]


class CpuDDPBatchNormWarning(UserWarning):
    """BatchNorm layers under DDP on CPU are not synchronised across ranks (SyncBatchNorm needs a GPU)."""


def applies(trainer: Any, device: torch.device) -> bool:
    """True when ``trainer`` (after ``nnUNetTrainer.__init__``) runs under a process group and was asked for CPU."""
    return bool(trainer.is_ddp) and torch.device(device).type == "cpu"


def use_cpu(trainer: Any, device: torch.device) -> None:
    """Undo nnU-Net's CUDA choices of ``__init__`` (``cuda:<rank>``, a CUDA GradScaler): train on ``device``."""
    trainer.device = torch.device(device)
    trainer.grad_scaler = None


def _batchnorm_layers(network: nn.Module) -> list[str]:
    return [name for name, m in network.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def initialize(trainer: Any, nnunet_initialize: Callable[[], None]) -> None:
    """nnU-Net's ``initialize`` for CPU processes of a process group (see the module docstring)."""
    trainer.is_ddp = False
    try:
        nnunet_initialize()
    finally:
        trainer.is_ddp = True
    trainer._set_batch_size_and_oversample()  # this rank's share of the batch (ran above as if not DDP)
    bn = _batchnorm_layers(trainer.network)
    if bn:
        message = (f"DDP on CPU: the network has {len(bn)} BatchNorm layers (first: {bn[0]}); nnU-Net converts them "
                   "to SyncBatchNorm on GPUs, but SyncBatchNorm does not run on CPU, so each rank normalises with its "
                   "own batch statistics (running statistics come from rank 0). Train on GPUs, or use InstanceNorm "
                   "(nnU-Net's default), for synchronised normalisation")
        trainer.print_to_log_file("WARNING: " + message, also_print_to_console=True)
        warnings.warn(message, CpuDDPBatchNormWarning, stacklevel=2)
    trainer.network = nn.parallel.DistributedDataParallel(trainer.network)
    trainer.loss = trainer._build_loss()  # with the DDP-aware (all-gathered) batch dice
