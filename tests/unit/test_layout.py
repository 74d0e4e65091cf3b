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
                 "no import cycles among the modules of campaigns, encoders and the bridge KEPT"):
        assert name in text, proc.stdout[-3000:]


def test_importing_every_core_module_loads_no_nnunet():
    """At run time too (covers importlib and other imports a static check cannot see)."""
    names = [m.name for m in pkgutil.walk_packages(nnunet_transfer.core.__path__, "nnunet_transfer.core.")]
    assert len(names) >= 12
    code = ("import importlib, sys\n"
            f"for n in {names!r}: importlib.import_module(n)\n"
            "print(sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] in ('nnunetv2', 'batchgenerators')}))")
    assert run([sys.executable, "-c", code], dict(os.environ)).stdout.strip() == "[]"


def test_public_api_block_is_written_from_the_table():
    """``nnunet_transfer/__init__.py``: the TYPE_CHECKING imports equal its ``_PUBLIC`` table (one table: ``__all__``
    and the lazy look-up are derived from it at run time, the imports are written by ``scripts/public_api.py``)."""
    proc = run([sys.executable, str(ROOT / "scripts" / "public_api.py"), "--check"], dict(os.environ), check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_public_api_check_fails_on_a_stale_block(tmp_path):
    """The check is not vacuous: a name added to the table but not to the block is found."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("public_api", ROOT / "scripts" / "public_api.py")
    public_api = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(public_api)
    source = (ROOT / "nnunet_transfer" / "__init__.py").read_text()
    table = public_api.read_table(source)
    assert "load_pretrained" in table["core.loading.loader"]
    table["core.loading.loader"] = (*table["core.loading.loader"], "extra_name")
    assert "extra_name as extra_name" in public_api.render(table)
    assert public_api.render(table) not in source


def test_test_file_names_are_unique_across_folders():
    """pytest imports test files by their base name (no __init__.py in tests/): two folders holding the same name
    stop the collection of the whole suite."""
    seen: dict[str, Path] = {}
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        assert path.name not in seen, f"{path} and {seen[path.name]} share a name"
        seen[path.name] = path
    assert len(seen) > 50
