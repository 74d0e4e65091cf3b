"""The export's errors: unusable input (exit 2) and a refused export (exit 1); defined in :mod:`nnunet_transfer.errors`
(re-exported here, where they were first defined)."""

from __future__ import annotations

from nnunet_transfer.errors import ExportError, ExportRefusedError, MissingExtraError

__all__ = ["ExportError", "ExportRefusedError", "MissingExtraError"]
