"""Fixtures shared by the unit and the end-to-end tests."""

from __future__ import annotations

import pytest
from helpers import make_unet


@pytest.fixture
def unet_factory():
    """Build small real nnU-Net networks (see :func:`helpers.make_unet`)."""
    return make_unet
