"""Shim imported by nnU-Net's external-trainer search (``nnUNet_extTrainer``).

nnU-Net imports every module in this folder under its bare name and drops it from ``sys.modules`` afterwards, so
the classes live in :mod:`nnunet_transfer.trainers` (a stable module path for pickling and multiprocessing) and are
only re-exported here.
"""

from nnunet_transfer.trainers import *  # noqa: F403
from nnunet_transfer.trainers import __all__  # noqa: F401
