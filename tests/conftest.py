"""Fixtures shared by the unit and the end-to-end tests."""

from __future__ import annotations

import pytest
from helpers import make_unet


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Under pytest-xdist (``scripts/test.sh`` runs ``-n 2``): every end-to-end test on one worker, in file order
    (they share the session's workspace, and two of their trainings at once would only compete for the cores), the
    unit tests spread over the others, so that they run beside the end-to-end ones instead of after them."""
    from xdist.scheduler import LoadScopeScheduling

    class EndToEndTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "e2e" if nodeid.startswith("tests/e2e/") else nodeid

    return EndToEndTogether(config, log)


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
