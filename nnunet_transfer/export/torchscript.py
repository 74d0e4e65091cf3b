"""TorchScript export by tracing (``torch.jit.trace``) and its reload.

nnU-Net's networks have no shape-dependent Python control flow once deep supervision is off, so one trace serves
every batch size and every spatial size the network accepts (multiples of its total stride); the export is checked
at a second size before it is called dynamic. The module is not frozen: its ``state_dict()`` keeps every tensor
under the network's own names, which is what lets the weights be compared with the checkpoint's.

PyTorch deprecates TorchScript (``torch.jit.trace``/``load`` warn since 2.10); it still works, and its deprecation
warnings are silenced here.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

__all__ = ["export_torchscript", "load_torchscript", "torchscript_weights"]


@contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


def export_torchscript(network: nn.Module, example: torch.Tensor, path: str | Path) -> None:
    """Trace ``network`` (eval mode) on ``example`` and save the ScriptModule to ``path``."""
    network.eval()
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(network, example, check_trace=False)
        torch.jit.save(traced, str(path))


def load_torchscript(path: str | Path) -> torch.jit.ScriptModule:
    """Load a saved ScriptModule on the CPU, in eval mode."""
    with _quiet():
        module = torch.jit.load(str(path), map_location="cpu")
    module.eval()
    return module


def torchscript_weights(module: torch.jit.ScriptModule) -> dict[str, torch.Tensor]:
    """Every tensor the ScriptModule holds, under the network's names."""
    return dict(module.state_dict())
