"""The source-level trainer lookup agrees with nnU-Net's own (importing) resolution, and stays out of torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from campaign_helpers import campaign_dict, make_roots, write_campaign

from nnunet_transfer._autoregister import TRAINER_FOLDER
from nnunet_transfer.nnunet.networks import find_trainer_class
from nnunet_transfer.nnunet.trainer_lookup import OUR_TRAINERS, TrainerInfo, locate_trainer

TEST_TRAINERS = str(Path(__file__).parents[1] / "ext_trainers")


def test_our_table_is_our_trainers_recipes():
    import nnunet_transfer.trainers as trainers

    assert OUR_TRAINERS == {name: getattr(trainers, name).recipe for name in trainers.__all__}


@pytest.mark.parametrize("name", ["nnUNetTrainer", "nnUNetTrainerBN", "nnUNetTrainer_250epochs",
                                  "nnUNetTrainerNoDeepSupervision", *OUR_TRAINERS])
def test_agrees_with_nnunet_resolution(name, monkeypatch):
    monkeypatch.setenv("nnUNet_extTrainer", os.pathsep.join([TEST_TRAINERS, TRAINER_FOLDER]))
    cls = find_trainer_class(name)
    recipe = getattr(cls, "recipe", None)
    assert locate_trainer(name) == TrainerInfo(name, hasattr(cls, "recipe"), None if recipe is None else str(recipe))


def test_unknown_and_users_trainers_are_left_to_the_import(monkeypatch, tmp_path):
    monkeypatch.setenv("nnUNet_extTrainer", os.pathsep.join([TEST_TRAINERS, TRAINER_FOLDER]))
    assert locate_trainer("nnUNetTrainer_TransferTestTiny") is None  # a user's trainer: only the import knows
    assert locate_trainer("nnUNetTrainerDoesNotExist") is None
    # a user's folder before ours that defines a class of our name wins in nnU-Net: we do not claim it
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "mine.py").write_text("class nnUNetTrainerAdaptiveFT_Full(object):\n    pass\n")
    monkeypatch.setenv("nnUNet_extTrainer", os.pathsep.join([str(shadow), TRAINER_FOLDER]))
    assert locate_trainer("nnUNetTrainerAdaptiveFT_Full") is None
    # our folder not on the path (NNUNET_TRANSFER_NO_AUTOREGISTER=1): nnU-Net would not find ours
    monkeypatch.setenv("nnUNet_extTrainer", TEST_TRAINERS)
    assert locate_trainer("nnUNetTrainerAdaptiveFT") is None
    assert locate_trainer("nnUNetTrainer") == TrainerInfo("nnUNetTrainer", False)


def test_another_copy_of_our_shim_folder_is_ours(monkeypatch, tmp_path):
    """An installed copy plus a development checkout on PYTHONPATH put two shim folders on the path: nnU-Net finds
    our class through the first, so do we (and a user's module that imports one of ours by name)."""
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "shim.py").write_text("from nnunet_transfer.trainers import *  # noqa\n")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "mine.py").write_text("from nnunet_transfer.trainers import nnUNetTrainerAdaptiveFT_Full\n")
    monkeypatch.setenv("nnUNet_extTrainer", os.pathsep.join([str(copy), TRAINER_FOLDER]))
    assert locate_trainer("nnUNetTrainerAdaptiveFT_DecoderOnly") == TrainerInfo(
        "nnUNetTrainerAdaptiveFT_DecoderOnly", True, "decoder_only")
    monkeypatch.setenv("nnUNet_extTrainer", str(mine))
    assert locate_trainer("nnUNetTrainerAdaptiveFT_Full") == TrainerInfo("nnUNetTrainerAdaptiveFT_Full", True, "full_ft")
    assert locate_trainer("nnUNetTrainerAdaptiveFT_DecoderOnly") is None  # not in that module: nnU-Net finds none


def test_loading_a_campaign_imports_no_torch(tmp_path):
    """``campaign run``/``status`` validate the trainers of both arms without the 3-6 s of importing torch and
    nnU-Net's trainer modules (issue 10's overhead goal)."""
    env = {**os.environ, **make_roots(tmp_path)}
    path = write_campaign(tmp_path / "c.yaml", campaign_dict(trainer="nnUNetTrainerAdaptiveFT_Full"))
    code = ("import sys; from nnunet_transfer.campaigns.spec import load_campaign; "
            f"c = load_campaign({str(path)!r}); assert c.check_recipe == 'full_ft', c.check_recipe; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'nnunetv2')))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
