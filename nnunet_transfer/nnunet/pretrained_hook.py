"""The seam behind ``nnUNetv2_train -pretrained_weights``: nnU-Net's module-level ``load_pretrained_weights``.

``nnunetv2.run.run_training.maybe_load_checkpoint`` calls it right after ``trainer.initialize()``; it is strict
(any shape difference is an AssertionError). We replace it, in both modules that hold it, by a dispatcher: networks
of our trainers go to the trainer's adaptive loader (``load_pretrained_adaptive``), every other network to nnU-Net's
own function. :func:`check_pretrained_seam` says whether nnU-Net still calls it that way.
"""

from __future__ import annotations

import inspect
import types
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import torch

from nnunet_transfer.errors import PretrainedSeamWarning

__all__ = ["PRETRAINED_SEAM", "PretrainedSeamWarning", "check_pretrained_seam", "install_pretrained_hook",
           "seam_problems"]

PRETRAINED_SEAM = ("nnunetv2.run.run_training.maybe_load_checkpoint -> module-level load_pretrained_weights"
                   "(network, fname, verbose) in nnunetv2.run.load_pretrained_weights and nnunetv2.run.run_training")
_NAME = "load_pretrained_weights"
_PARAMS = ("network", "fname", "verbose")
_MODULES = ("nnunetv2.run.load_pretrained_weights", "nnunetv2.run.run_training")

_TRAINERS: weakref.WeakSet = weakref.WeakSet()
_PROBLEMS: list[str] | None = None  # of the installed hook's seam check


def _names_used(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names_used(const)
    return names


def check_pretrained_seam(caller: Callable[..., Any] | None = None) -> list[str]:
    """Problems with the ``-pretrained_weights`` seam (empty if none): ``load_pretrained_weights`` must be a
    module-level function of both nnU-Net modules with parameters ``(network, fname, verbose)``, and ``caller``
    (default: ``nnunetv2.run.run_training.maybe_load_checkpoint``) must call it by that module-level name."""
    import importlib

    problems = []
    for module_name in _MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            problems.append(f"{module_name}: cannot be imported ({e})")
            continue
        fn = getattr(module, _NAME, None)
        if not callable(fn):
            problems.append(f"{module_name}.{_NAME}: no such function (moved or renamed in this nnU-Net version)")
            continue
        fn = getattr(fn, "__wrapped__", fn) if getattr(fn, "__nnunet_transfer__", False) else fn
        params = tuple(inspect.signature(fn).parameters)
        if params[:len(_PARAMS)] != _PARAMS:
            problems.append(f"{module_name}.{_NAME}{inspect.signature(fn)}: expected parameters {_PARAMS}")
    if caller is None:
        try:
            from nnunetv2.run import run_training
        except ImportError:
            return problems
        caller = getattr(run_training, "maybe_load_checkpoint", None)
        if caller is None:
            return [*problems, "nnunetv2.run.run_training.maybe_load_checkpoint: no such function"]
    code = getattr(caller, "__code__", None)
    where = f"{getattr(caller, '__module__', '?')}.{getattr(caller, '__qualname__', repr(caller))}"
    if code is None or _NAME not in _names_used(code):
        problems.append(f"{where} does not call {_NAME} (nnU-Net loads -pretrained_weights some other way)")
    return problems


def seam_problems() -> list[str] | None:
    """The problems found when the hook was installed (None: not installed yet)."""
    return None if _PROBLEMS is None else list(_PROBLEMS)


def _install() -> None:
    """Route nnU-Net's module-level ``load_pretrained_weights`` to our trainers' adaptive loader.

    The wrapper dispatches by network identity: networks of other trainers still get nnU-Net's own loader. The seam
    is checked once; a broken seam is a :class:`PretrainedSeamWarning` (``-pretrained_weights`` then fails at the
    start of training with an error naming the seam; the recipe's ``pretrained.checkpoint`` still works).
    """
    global _PROBLEMS
    import nnunetv2.run.load_pretrained_weights as lpw
    import nnunetv2.run.run_training as rt

    if _PROBLEMS is None:
        _PROBLEMS = check_pretrained_seam()
        if _PROBLEMS:
            warnings.warn(f"nnunet-transfer: the -pretrained_weights seam ({PRETRAINED_SEAM}) is broken in this "
                          f"nnU-Net version: {'; '.join(_PROBLEMS)}. -pretrained_weights will not reach the adaptive "
                          "loader; set pretrained.checkpoint in the recipe instead", PretrainedSeamWarning,
                          stacklevel=3)
    stock = getattr(lpw, _NAME, None)
    if stock is None or getattr(stock, "__nnunet_transfer__", False):
        return

    def load_pretrained_weights(network: torch.nn.Module, fname: str, verbose: bool = False) -> None:
        for trainer in list(_TRAINERS):
            if trainer.network is network:
                trainer.load_pretrained_adaptive(fname)
                return
        stock(network, fname, verbose=verbose)

    load_pretrained_weights.__nnunet_transfer__ = True  # type: ignore[attr-defined]
    load_pretrained_weights.__wrapped__ = stock  # type: ignore[attr-defined]
    lpw.load_pretrained_weights = load_pretrained_weights
    rt.load_pretrained_weights = load_pretrained_weights


def install_pretrained_hook(trainer: Any) -> None:
    """Route ``-pretrained_weights`` for ``trainer``'s network to ``trainer.load_pretrained_adaptive``."""
    _TRAINERS.add(trainer)
    _install()
