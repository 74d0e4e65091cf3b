"""Console scripts of the Python environment this package runs in (``nnUNetv2_train``, ``nnunet-transfer``...)."""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["console_script"]


def console_script(name: str) -> str:
    """The path of console script ``name`` beside ``sys.executable`` (an environment used without activating it),
    else ``name`` as it is (found on PATH)."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name
