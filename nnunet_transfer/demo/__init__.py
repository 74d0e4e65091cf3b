"""The demo (``nnunet-transfer demo``) and the synthetic nnU-Net datasets it and the tests make."""

from nnunet_transfer.demo.run import run_demo
from nnunet_transfer.demo.synthetic import make_dataset

__all__ = ["make_dataset", "run_demo"]
