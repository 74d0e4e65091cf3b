"""Contract of every nnU-Net seam nnunet-transfer relies on, against the installed nnunetv2. Each assertion message
names the seam: when nnU-Net changes one of them, this file says which."""

from __future__ import annotations

import inspect
import os

import pytest
import torch
from helpers import build_trainer, make_plans, trainer_folders
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

import nnunet_transfer.trainers as our_trainers
from nnunet_transfer._autoregister import TRAINER_FOLDER
from nnunet_transfer.nnunet.pretrained_hook import check_pretrained_seam
from nnunet_transfer.trainers.adaptive_ft import RECIPE_PLANS_KEY, nnUNetTrainerAdaptiveFT

TRAINERS = [getattr(our_trainers, name) for name in our_trainers.__all__]


@pytest.fixture
def trainer(tmp_path, monkeypatch):
    """nnUNetTrainerAdaptiveFT as ``get_trainer_from_args`` builds it, initialized (network, optimizer; no data)."""
    return build_trainer(tmp_path, monkeypatch)


def test_seam_pretrained_weights_function():
    import nnunetv2.run.load_pretrained_weights as lpw
    import nnunetv2.run.run_training as rt

    for module in (lpw, rt):
        fn = getattr(module, "load_pretrained_weights", None)
        assert fn is not None, f"seam -pretrained_weights: {module.__name__}.load_pretrained_weights is gone"
        fn = getattr(fn, "__wrapped__", fn)
        assert list(inspect.signature(fn).parameters) == ["network", "fname", "verbose"], \
            f"seam -pretrained_weights: {module.__name__}.load_pretrained_weights{inspect.signature(fn)}"
    assert "load_pretrained_weights" in rt.maybe_load_checkpoint.__code__.co_names, \
        "seam -pretrained_weights: maybe_load_checkpoint no longer calls the module-level load_pretrained_weights"
    assert check_pretrained_seam() == [], "seam -pretrained_weights: check_pretrained_seam reports problems"


def test_seam_continue_training_in_plans(tmp_path, monkeypatch):
    from nnunetv2.run.run_training import get_trainer_from_args

    plans = make_plans()
    for k, v in trainer_folders(tmp_path, plans).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("nnUNet_extTrainer", TRAINER_FOLDER)
    t = get_trainer_from_args("990", "3d_fullres", 0, "nnUNetTrainerAdaptiveFT", "nnUNetPlans",
                              continue_training=True, device=torch.device("cpu"))
    assert type(t) is nnUNetTrainerAdaptiveFT, "seam nnUNet_extTrainer: get_trainer_from_args built another class"
    assert t._continue_training is True, \
        "seam plans['continue_training']: get_trainer_from_args no longer passes --c in the plans dict"
    assert "continue_training" not in t.plans_manager.plans, \
        "seam plans['continue_training']: nnUNetTrainer.__init__ no longer pops it (our __init__ reads it first)"


def test_seam_init_signature_and_my_init_kwargs(trainer):
    base = inspect.signature(nnUNetTrainer.__init__, eval_str=True)
    for cls in TRAINERS:
        assert inspect.signature(cls.__init__, eval_str=True) == base, \
            f"seam my_init_kwargs: {cls.__name__}.__init__ differs from nnUNetTrainer.__init__{base}"
    assert list(trainer.my_init_kwargs) == ["plans", "configuration", "fold", "dataset_json", "device"], \
        "seam my_init_kwargs: nnUNetTrainer.__init__ no longer records its arguments by its signature"
    assert trainer.my_init_kwargs["plans"][RECIPE_PLANS_KEY]["name"] == trainer.ft_recipe.name, \
        "seam my_init_kwargs: the recipe is not in init_args.plans"


def test_seam_build_network_architecture():
    expected = ["plans_manager", "configuration_manager", "num_input_channels", "num_output_channels",
                "enable_deep_supervision"]
    for cls in (nnUNetTrainer, *TRAINERS):
        sig = inspect.signature(cls.build_network_architecture)
        assert list(sig.parameters) == expected, \
            f"seam build_network_architecture: {cls.__name__}{sig} (the predictor looks for 'plans_manager')"
        assert isinstance(inspect.getattr_static(cls, "build_network_architecture"), staticmethod), \
            f"seam build_network_architecture: {cls.__name__}'s is no longer a staticmethod"
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    assert "'plans_manager' in sig.parameters" in inspect.getsource(
        nnUNetPredictor.initialize_from_trained_model_folder), \
        "seam build_network_architecture: the predictor no longer picks the signature by 'plans_manager'"


CHECKPOINT_KEYS = {"network_weights", "optimizer_state", "grad_scaler_state", "logging", "_best_ema", "current_epoch",
                   "init_args", "trainer_name", "inference_allowed_mirroring_axes"}


def test_seam_checkpoint_keys(trainer, tmp_path):
    path = tmp_path / "checkpoint.pth"
    trainer.save_checkpoint(str(path))
    ckpt = torch.load(path, weights_only=False)
    assert set(ckpt) == CHECKPOINT_KEYS, f"seam checkpoint keys: save_checkpoint writes {sorted(ckpt)}"
    assert ckpt["trainer_name"] == "nnUNetTrainerAdaptiveFT" and ckpt["current_epoch"] == 1, "seam checkpoint keys"
    source = inspect.getsource(nnUNetTrainer.load_checkpoint)
    for key in CHECKPOINT_KEYS - {"trainer_name"}:
        assert f"'{key}'" in source, f"seam checkpoint keys: nnUNetTrainer.load_checkpoint no longer reads {key!r}"
    ours, theirs = (inspect.signature(c.load_checkpoint) for c in (nnUNetTrainerAdaptiveFT, nnUNetTrainer))
    assert list(ours.parameters) == list(theirs.parameters), \
        f"seam load_checkpoint: nnU-Net's parameters are now {theirs} (ours {ours})"
    trainer.load_checkpoint(str(path))  # round trip through nnU-Net's reader
    assert trainer.current_epoch == 1, "seam checkpoint keys: load_checkpoint did not restore current_epoch"


def test_seam_plans_json_is_plans_manager_plans():
    assert "save_json(self.plans_manager.plans, join(self.output_folder_base, 'plans.json')" in \
        inspect.getsource(nnUNetTrainer.on_train_start), \
        "seam plans.json: on_train_start no longer saves plans_manager.plans (where the recipe is written)"


def test_seam_ext_trainer_lookup(monkeypatch, tmp_path):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    monkeypatch.setenv("nnUNet_extTrainer", os.pathsep.join([str(tmp_path / "not_there"), TRAINER_FOLDER]))
    for cls in TRAINERS:
        assert recursive_find_trainer_class_by_name(cls.__name__) is cls, \
            f"seam nnUNet_extTrainer: recursive_find_trainer_class_by_name({cls.__name__!r}) finds another class"
