"""Our errors in ``nnUNetv2_train`` as one line, without a traceback (as the ``nnunet-transfer`` command prints them).

A trainer of this package installs :func:`install` when it is built. The hook only changes how an *uncaught*
:class:`~nnunet_transfer.errors.TransferError` is shown when the process ends (``RecipeError: <message>`` on stderr;
exit status 1, Python's for an uncaught exception, or the error's ``process_exit_status`` where it has one: 2 for a
missing optional extra, raised before anything is written); any other exception keeps the hook that was there before,
and code that catches our errors (a test, a notebook) gets them as ever.
"""

from __future__ import annotations

import os
import sys
from types import TracebackType

from nnunet_transfer.errors import TransferError

__all__ = ["install"]


def _one_line(previous):
    def hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        if issubclass(exc_type, TransferError):
            print(f"{exc_type.__name__}: {exc}", file=sys.stderr, flush=True)
            status = getattr(exc, "process_exit_status", None)  # an error that must end the process with its status
            if status is not None:
                sys.stdout.flush()
                os._exit(status)
        else:
            previous(exc_type, exc, tb)

    hook.nnunet_transfer_one_line = True  # type: ignore[attr-defined]
    return hook


def install() -> None:
    """Show uncaught errors of ours in one line from now on (idempotent)."""
    if not getattr(sys.excepthook, "nnunet_transfer_one_line", False):
        sys.excepthook = _one_line(sys.excepthook)
