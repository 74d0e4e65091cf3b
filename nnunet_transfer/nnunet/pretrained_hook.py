"""The seam behind ``nnUNetv2_train -pretrained_weights``: nnU-Net's module-level ``load_pretrained_weights``.

``nnunetv2.run.run_training.maybe_load_checkpoint`` calls it right after ``trainer.initialize()``; it is strict
(any shape difference is an AssertionError). We replace it, in both modules that hold it, by a dispatcher: networks
of our trainers go to the trainer's adaptive loader, every other network to nnU-Net's own function.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

__all__ = ["install_pretrained_hook"]

_TRAINERS: weakref.WeakSet = weakref.WeakSet()


def _install() -> None:
    """Route nnU-Net's module-level ``load_pretrained_weights`` to our trainers' adaptive loader.

    ``nnunetv2.run.run_training.maybe_load_checkpoint`` calls it right after ``trainer.initialize()``. The wrapper
    dispatches by network identity: networks of other trainers still get nnU-Net's own loader.
    """
    import nnunetv2.run.load_pretrained_weights as lpw
    import nnunetv2.run.run_training as rt

    stock = lpw.load_pretrained_weights
    if getattr(stock, "__nnunet_transfer__", False):
        return

    def load_pretrained_weights(network: torch.nn.Module, fname: str, verbose: bool = False) -> None:
        for trainer in list(_TRAINERS):
            if trainer.network is network:
                trainer.load_pretrained_weights(fname)
                return
        stock(network, fname, verbose=verbose)

    load_pretrained_weights.__nnunet_transfer__ = True  # type: ignore[attr-defined]
    load_pretrained_weights.__wrapped__ = stock  # type: ignore[attr-defined]
    lpw.load_pretrained_weights = load_pretrained_weights
    rt.load_pretrained_weights = load_pretrained_weights



def install_pretrained_hook(trainer: Any) -> None:
    """Route ``-pretrained_weights`` for ``trainer``'s network to ``trainer.load_pretrained_weights``."""
    _TRAINERS.add(trainer)
    _install()
