"""Fixtures shared by the unit and the end-to-end tests."""

from __future__ import annotations

import pytest
from helpers import make_unet


@pytest.fixture
def unet_factory():
    """Build small real nnU-Net networks (see :func:`helpers.make_unet`)."""
    return make_unet


@pytest.fixture
def gloo(tmp_path):
    """A one-process gloo process group (world size 1) for the duration of the test."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg_store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()
