"""The end-to-end tests: a session workspace planned, preprocessed and pretrained through the stock nnUNetv2_* CLI.

Every test collected here is marked ``slow`` (``pytest -m "not slow"`` runs the unit tests only).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import Workspace, bin_path, run

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(item.fspath).resolve().parents:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Workspace:
    """Datasets 900 (source, 1 channel, isotropic), 901 (anisotropic 1x1x3 mm, other labels), 902 (2 channels),
    903 (2 channels and anisotropic).

    Planned and preprocessed with ``nnUNetv2_plan_and_preprocess`` and a source model pretrained on 900 with a
    short stock trainer (``nnUNetv2_train``); about 1.5 minutes on 2 cores.
    """
    from nnunet_transfer.demo.synthetic import make_dataset

    ws = Workspace(tmp_path_factory.mktemp("nnunet"))
    raw = ws.root / "raw"
    make_dataset(raw, ws.SOURCE, "Src", shape=(32, 32, 32), spacing=(1, 1, 1), seed=0)
    make_dataset(raw, ws.ANISO, "Aniso", shape=(12, 32, 32), spacing=(3, 1, 1), seed=1,
                 labels={"background": 0, "lesion": 1, "vessel": 2})
    make_dataset(raw, ws.TWO_CH, "TwoCh", shape=(32, 32, 32), spacing=(1, 1, 1), seed=2,
                 channel_names={"0": "T1", "1": "T2"})
    make_dataset(raw, ws.ANISO_TWO_CH, "AnisoTwoCh", shape=(12, 32, 32), spacing=(3, 1, 1), seed=3,
                 channel_names={"0": "T1", "1": "FLAIR"}, labels={"background": 0, "edema": 1, "lesion": 2})
    run([bin_path("nnUNetv2_plan_and_preprocess"), "-d", str(ws.SOURCE), str(ws.ANISO), str(ws.TWO_CH), str(ws.ANISO_TWO_CH),
         "-c", "3d_fullres", "-npfp", "2", "-np", "2"], ws.env)
    ws.train(ws.SOURCE, ws.TINY, "0")
    ws.checkpoint = ws.results("Dataset900_Src", ws.TINY) / "fold_0" / "checkpoint_final.pth"
    assert ws.checkpoint.is_file()
    return ws
