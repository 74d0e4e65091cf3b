"""The export's errors: unusable input (exit 2) and a refused export (exit 1)."""

from __future__ import annotations

from nnunet_transfer.errors import TransferError

__all__ = ["ExportError", "ExportRefusedError", "MissingExtraError"]


class ExportError(TransferError):
    """The export request cannot be carried out as given: no such model folder, fold, checkpoint or format, an
    output that exists already. Nothing was written."""


class ExportRefusedError(TransferError):
    """The export was made but does not hold the fold's weights or does not compute what the network computes (or the
    exporter failed): nothing was written."""

    exit_code = 1


class MissingExtraError(ExportError):
    """An optional dependency of the chosen format is not installed (the message says which extra installs it)."""
