"""The package's layout holds: the core never imports nnU-Net, only the bridge (and the trainers) do, encoders and
the bridge have no import cycle, and the layers only import downwards."""

from __future__ import annotations

import os
import pkgutil
import re
import sys
from pathlib import Path

from helpers import run

import nnunet_transfer.core

ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_hold():
    """import-linter over the source tree (imports inside functions included): see [tool.importlinter]."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = run([str(Path(sys.executable).parent / "lint-imports"), "--config", str(ROOT / "pyproject.toml")], env,
               check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    kept = re.search(r"Contracts: (\d+) kept, 0 broken\.", proc.stdout)
    assert kept and int(kept.group(1)) >= 4, proc.stdout[-3000:]
    text = " ".join(proc.stdout.split())  # long contract names wrap
    for name in ("the core never imports nnU-Net KEPT",
                 "only the bridge (and the trainers, which subclass nnU-Net's) imports nnU-Net KEPT",
                 "no import cycles among the modules of encoders and of the bridge KEPT"):
        assert name in text, proc.stdout[-3000:]


def test_importing_every_core_module_loads_no_nnunet():
    """At run time too (covers importlib and other imports a static check cannot see)."""
    names = [m.name for m in pkgutil.walk_packages(nnunet_transfer.core.__path__, "nnunet_transfer.core.")]
    assert len(names) >= 12
    code = ("import importlib, sys\n"
            f"for n in {names!r}: importlib.import_module(n)\n"
            "print(sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] in ('nnunetv2', 'batchgenerators')}))")
    assert run([sys.executable, "-c", code], dict(os.environ)).stdout.strip() == "[]"
