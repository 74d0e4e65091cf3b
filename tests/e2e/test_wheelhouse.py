"""``scripts/wheelhouse.py``: an offline install into a fresh environment that already has torch, as on a GPU node.

The wheelhouse is built for this Python and platform (through the same cross-platform path as for another one),
leaving out torch and whatever the fresh environment has; then ``pip install --no-index --find-links`` installs the
package there and ``nnunet-transfer doctor`` passes. Needs the package index (or pip's cache) for the download.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path

import pytest
from helpers import run
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]


def _canonical(name: str) -> str:
    return name.replace("_", "-").replace(".", "-").lower()


def _link_torch(venv: Path) -> set[str]:
    """torch, torchvision and everything they need, linked from this environment into ``venv`` (an environment that
    "has torch" without installing gigabytes again). Returns the linked distributions."""
    site = next((venv / "lib").glob("python*/site-packages"))
    todo: list[tuple[str, tuple[str, ...]]] = [("torch", ()), ("torchvision", ())]
    seen: set[str] = set()
    done: set[tuple[str, tuple[str, ...]]] = set()
    while todo:
        name, extras = todo.pop()
        name = _canonical(name)
        if (name, extras) in done:
            continue
        done.add((name, extras))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        todo += [(r.name, tuple(sorted(r.extras))) for r in map(Requirement, dist.requires or [])
                 if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in ("", *extras))]
        if name in seen:
            continue
        seen.add(name)
        for top in {f.parts[0] for f in dist.files or [] if f.parts[0] not in ("..", "bin", "__pycache__")}:
            source = Path(dist.locate_file(top))
            if source.exists() and not (site / top).exists():
                (site / top).symlink_to(source)
    return seen


def _platform_tag() -> str:
    libc, version = platform.libc_ver()
    if libc != "glibc":
        pytest.skip(f"not a glibc system ({libc or 'unknown'}): no manylinux tag to build for")
    major, minor = (int(v) for v in version.split(".")[:2])
    return f"manylinux_{major}_{minor}_{platform.machine()}"


def test_offline_install_into_an_environment_with_torch(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("nnUNet_extTrainer", "PYTHONPATH", "VIRTUAL_ENV")}
    fresh = tmp_path / "node-env"
    run([sys.executable, "-m", "venv", str(fresh)], env)
    linked = _link_torch(fresh)
    assert {"torch", "torchvision"} <= linked
    python = str(fresh / "bin" / "python")
    freeze = tmp_path / "node-freeze.txt"
    freeze.write_text(run([python, "-m", "pip", "freeze"], env).stdout)
    assert "torch==" in freeze.read_text()

    house = tmp_path / "wheelhouse"
    built = run([sys.executable, str(ROOT / "scripts" / "wheelhouse.py"), str(house), "--python-version",
                 f"{sys.version_info.major}.{sys.version_info.minor}", "--platform", _platform_tag(),
                 "--exclude-from", str(freeze)], env, timeout=1500)
    wheels = sorted(p.name for p in house.glob("*.whl"))
    assert any(w.startswith("nnunet_transfer-") for w in wheels)
    assert any(w.startswith("nnunetv2-") for w in wheels) and any(w.startswith("acvl_utils-") for w in wheels)
    assert not [w for w in wheels if w.startswith(("torch-", "torchvision-", "nvidia_", "triton-"))], wheels
    requirements = (house / "requirements.txt").read_text().split()
    assert requirements[0] == "nnunet-transfer" and not any(r.startswith("torch==") for r in requirements)
    assert "left out" in built.stdout and "torch" in built.stdout

    run([python, "-m", "pip", "install", "--no-index", "--find-links", str(house), "-r",
         str(house / "requirements.txt")], env, timeout=900)
    site = next((fresh / "lib").glob("python*/site-packages"))
    assert [p.is_symlink() for p in site.glob("torch-*.dist-info")] == [True], "pip replaced the environment's torch"
    activated = {**env, "PATH": os.pathsep.join([str(fresh / "bin"), env.get("PATH", "")])}
    doctor = run([str(fresh / "bin" / "nnunet-transfer"), "doctor"], activated)
    assert "nnUNetTrainerAdaptiveFT" in doctor.stdout
    # the installed package is the wheelhouse's, in the fresh environment (not this checkout's)
    where = run([python, "-c", "import nnunet_transfer; print(nnunet_transfer.__file__)"], env).stdout
    assert str(fresh) in where
