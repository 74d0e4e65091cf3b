"""``nnunet-transfer doctor``: does the stock nnU-Net find our trainers here, and if not, why not; does the installed
nnU-Net ensemble region-based (sigmoid) predictions correctly (see :mod:`nnunet_transfer.nnunet.ensembling`)."""

from __future__ import annotations

import argparse
import os
import shutil
import site
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["check_ensembling", "register", "run", "run_doctor"]

PTH_NAME = "nnunet_transfer_autoregister.pth"
TRAINER = "nnUNetTrainerAdaptiveFT"


def _check(ok: bool, label: str, detail: str) -> bool:
    print(f"[{'ok' if ok else 'FAIL'}] {label}: {detail}")
    return ok


def run_doctor() -> int:
    """Print one line per check; return 0 only when every check passes (the stock commands will find
    ``nnUNetTrainerAdaptiveFT`` and ``-pretrained_weights`` reaches it), 1 when any line says FAIL."""
    from nnunet_transfer._autoregister import ENV_VAR, TRAINER_FOLDER

    results = []
    try:
        from importlib.metadata import version

        nnunet_version = version("nnunetv2")
        supported = nnunet_version.startswith("2.8.")
        results.append(_check(supported, "nnunetv2 version", f"{nnunet_version} (supported: 2.8.x)"))
    except Exception as e:  # pragma: no cover - nnunetv2 is a dependency
        results.append(_check(False, "nnunetv2 version", f"nnunetv2 not importable ({e})"))

    entries = [p for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p]
    ours = any(os.path.normpath(p) == os.path.normpath(TRAINER_FOLDER) for p in entries)
    dirs = [*site.getsitepackages(), site.getusersitepackages()]
    pth = next((Path(d) / PTH_NAME for d in dirs if (Path(d) / PTH_NAME).is_file()), None)
    if pth is not None:
        results.append(_check(True, "start-up hook", str(pth)))
    elif ours:  # an install outside site-packages (pip install --target DIR, PYTHONPATH=DIR): the variable set by hand
        results.append(_check(True, "start-up hook", f"{PTH_NAME} is not in {dirs} (an install with pip --target?), "
                                                     f"but {ENV_VAR} names our trainer folder: nothing else to do"))
    else:
        results.append(_check(False, "start-up hook",
                              f"{PTH_NAME} not found in {dirs}: reinstall with pip (a plain `pip install "
                              "nnunet-transfer` or `pip install .` installs it); for an install with pip --target "
                              f"(not processed at start-up): export {ENV_VAR}={TRAINER_FOLDER}"))
    if ours:
        hint = ""
    elif os.environ.get("NNUNET_TRANSFER_NO_AUTOREGISTER"):
        hint = " (NNUNET_TRANSFER_NO_AUTOREGISTER is set)"
    else:
        hint = " (python started with -S or -I, or the hook is missing)"
    results.append(_check(ours, f"{ENV_VAR} in this process", os.pathsep.join(entries) + hint))
    missing = [p for p in entries if not os.path.isdir(p)]
    if missing:
        results.append(_check(False, f"{ENV_VAR} entries", f"not folders (nnU-Net skips them): {missing}: remove "
                                                          f"them from {ENV_VAR} or create the folders"))

    try:
        from nnunet_transfer.nnunet.networks import find_trainer_class

        cls = find_trainer_class(TRAINER)
        results.append(_check(cls.__module__.startswith("nnunet_transfer."), "trainer lookup",
                              f"nnU-Net resolves {TRAINER} to {cls.__module__}.{cls.__qualname__}"))
    except Exception as e:
        results.append(_check(False, "trainer lookup", f"nnU-Net cannot find {TRAINER}: {e}"))

    try:
        from nnunet_transfer.nnunet.pretrained_hook import PRETRAINED_SEAM, check_pretrained_seam

        problems = check_pretrained_seam()
        detail = "; ".join(problems) + ": use pretrained.checkpoint in the recipe instead" if problems else "in place"
        results.append(_check(not problems, "-pretrained_weights seam", f"{PRETRAINED_SEAM}: {detail}"))
    except Exception as e:
        results.append(_check(False, "-pretrained_weights seam", f"cannot be checked: {e}"))

    train = shutil.which("nnUNetv2_train")
    if train is None:
        where = "not on PATH: activate the environment nnunetv2 is installed in"
        results.append(_check(False, "nnUNetv2_train", where))
    else:
        with open(train, "rb") as f:
            shebang = f.readline().decode(errors="replace").strip()
        interpreter = shebang[2:].strip().split()[0] if shebang.startswith("#!") else ""
        probe = [interpreter or sys.executable, "-c", f"import os; print(os.environ.get({ENV_VAR!r}, ''))"]
        try:
            out = subprocess.run(probe, capture_output=True, text=True, timeout=60, check=False).stdout
        except OSError as e:
            out = f"<could not run {probe[0]}: {e}>"
        sees = TRAINER_FOLDER in out
        results.append(_check(sees, "nnUNetv2_train's interpreter",
                              f"{probe[0]} {'sees' if sees else 'does NOT see'} our trainer folder"
                              + ("" if sees else ": install nnunet-transfer into that environment")))
    registered = all(results)
    ensembling = check_ensembling()
    if registered and ensembling:
        print("registration works: `nnUNetv2_train ... -tr nnUNetTrainerAdaptiveFT` will find the trainer")
    elif registered:
        print("registration works, but this nnU-Net ensembles region-based models wrongly: see the FAIL line above")
    else:
        print("registration problem: see the FAIL lines above")
    return 0 if registered and ensembling else 1


def check_ensembling(merge: Callable[..., Any] | None = None) -> bool:
    """One line: the installed nnU-Net's region-based inference non-linearity and ``nnUNetv2_ensemble`` path on a
    tiny synthetic case (probabilities in, the expected segmentation out); a known failure is named."""
    label = "region-based ensembling"
    try:
        from nnunet_transfer.nnunet.ensembling import check_region_ensembling

        problems = check_region_ensembling(merge)
    except Exception as e:
        return _check(False, label, f"cannot be checked: {type(e).__name__}: {e}")
    detail = "; ".join(problems) if problems else "sigmoid once, averaged probabilities thresholded per region"
    return _check(not problems, label, detail)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check that the stock nnUNetv2_* commands find our trainers (and why not), and "
                                       "that nnU-Net ensembles region-based models correctly")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_doctor()
