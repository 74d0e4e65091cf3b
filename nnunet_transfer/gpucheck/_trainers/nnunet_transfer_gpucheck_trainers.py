"""Shim imported by nnU-Net's external-trainer search, for the GPU check's own processes only.

As in ``nnunet_transfer/_ext_trainers``, the classes live at a stable module path
(:mod:`nnunet_transfer.trainers.gpucheck`) and are only re-exported here.
"""

from nnunet_transfer.trainers.gpucheck import *  # noqa: F403
from nnunet_transfer.trainers.gpucheck import __all__  # noqa: F401
