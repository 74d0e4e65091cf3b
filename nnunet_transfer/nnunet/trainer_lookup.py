"""Which trainer ``nnUNetv2_train -tr NAME`` will use, answered without importing torch or nnU-Net's trainers.

Resolving a trainer the way nnU-Net does (:func:`~nnunet_transfer.nnunet.networks.find_trainer_class`) imports
torch and every trainer module nnU-Net ships: 3-6 s, paid by every ``campaign run`` and ``campaign status`` only to
validate a name. This module answers from the source files, in nnU-Net's search order, for the two cases a campaign
meets almost always: a trainer nnU-Net ships (nnUNetTrainer and its variants) and one of ours reached through our
``nnUNet_extTrainer`` folder. Anything else (a user's own trainer) returns None and the caller imports.
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["OUR_TRAINERS", "TrainerInfo", "locate_trainer"]

#: our trainers and the recipe each names (their ``recipe`` class attribute; a unit test keeps the two equal)
OUR_TRAINERS: dict[str, str] = {
    "nnUNetTrainerAdaptiveFT": "default",
    "nnUNetTrainerAdaptiveFT_DecoderOnly": "decoder_only",
    "nnUNetTrainerAdaptiveFT_Full": "full_ft",
    "nnUNetTrainerAdaptiveFT_250epochs": "default_250epochs",
    "nnUNetTrainerAdaptiveFT_100epochs": "default_100epochs",
    "nnUNetTrainerAdaptiveFT_nnsslResEnc": "nnssl_resenc",
    "nnUNetTrainerAdaptiveFT_nnsslPrimus": "nnssl_primus",
    "nnUNetTrainerAdaptiveFT_LoRA": "lora",
    "nnUNetTrainerAdaptiveFT_nnsslPrimusLoRA": "nnssl_primus_lora",
}


@dataclass(frozen=True)
class TrainerInfo:
    """What a campaign needs to know about a trainer: whether it reads recipes and which one it names."""

    name: str
    reads_recipes: bool
    recipe: str | None = None


def _stock_folder() -> Path | None:
    spec = importlib.util.find_spec("nnunetv2")  # locates the package without running it
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "training" / "nnUNetTrainer"


def _scan(folder: Path, name: str) -> tuple[bool, bool]:
    """One pass over the modules under ``folder`` (as nnU-Net walks it): whether one defines a top-level class
    ``name``, and whether one imports our class ``name`` (by name or ``*``, as our shim does: nnU-Net then finds our
    class in that module)."""
    defines = re.compile(rf"^class\s+{re.escape(name)}\s*[(:]", re.MULTILINE)
    imports = re.compile(rf"^from\s+nnunet_transfer\.trainers(?:\.\w+)*\s+import\s[^\n]*(?:\*|\b{re.escape(name)}\b)",
                         re.MULTILINE)
    found_class = found_import = False
    for path in sorted(folder.rglob("*.py")):
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        found_class = found_class or (name in text and defines.search(text) is not None)
        found_import = found_import or imports.search(text) is not None
    return found_class, found_import


def locate_trainer(name: str) -> TrainerInfo | None:
    """The trainer nnU-Net resolves for ``name`` if it is one nnU-Net ships or one of ours, else None (unknown here:
    import it with ``find_trainer_class`` to be sure). nnU-Net searches its own trainers first, then the folders of
    ``nnUNet_extTrainer`` in order; a user's class of the same name earlier on that path makes this return None."""
    from nnunet_transfer._autoregister import TRAINER_FOLDER

    stock = _stock_folder()
    if stock is None or not stock.is_dir():
        return None
    if _scan(stock, name)[0]:
        return TrainerInfo(name, reads_recipes=False)
    if name not in OUR_TRAINERS:
        return None
    ours = os.path.normpath(TRAINER_FOLDER)
    for folder in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep):
        if not folder.strip() or not os.path.exists(folder):
            continue
        if os.path.normpath(folder) == ours:
            return TrainerInfo(name, reads_recipes=True, recipe=OUR_TRAINERS[name])
        defines, imports_ours = _scan(Path(folder), name)
        if defines:
            return None  # a user's class of that name comes first
        if imports_ours:  # e.g. another copy of our shim folder: nnU-Net finds our class there
            return TrainerInfo(name, reads_recipes=True, recipe=OUR_TRAINERS[name])
    return None  # our folder is not on nnUNet_extTrainer (NNUNET_TRANSFER_NO_AUTOREGISTER): nnU-Net would not find it
