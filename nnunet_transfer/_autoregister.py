"""Put our trainer folder on ``nnUNet_extTrainer`` at interpreter start-up (see ``nnunet_transfer_autoregister.pth``).

nnU-Net v2 (2.8.x) looks for trainers it does not ship in the folders listed in ``nnUNet_extTrainer``. A ``.pth``
file installed next to the package imports this module when Python starts, so ``nnUNetv2_train -tr
nnUNetTrainerAdaptiveFT`` works without any manual step. The user's own folders keep their place (and their
priority); ours is appended. It must stay cheap and never raise: it only touches ``os.environ``.
Set ``NNUNET_TRANSFER_NO_AUTOREGISTER=1`` to switch it off.
"""

import contextlib
import os

ENV_VAR = "nnUNet_extTrainer"
TRAINER_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_ext_trainers")


def register() -> bool:
    """Append our trainer folder to ``nnUNet_extTrainer`` unless it is there already. Returns True if present."""
    if os.environ.get("NNUNET_TRANSFER_NO_AUTOREGISTER", "").lower() in ("1", "true", "yes"):
        return False
    parts = [p for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p.strip()]
    if not any(os.path.normpath(p) == os.path.normpath(TRAINER_FOLDER) for p in parts):
        parts.append(TRAINER_FOLDER)
        os.environ[ENV_VAR] = os.pathsep.join(parts)
    return True


with contextlib.suppress(Exception):  # start-up must never fail because of us
    register()
