"""Networks built through the trainer class's own build_network_architecture (nnU-Net's, a variant, a class)."""

from __future__ import annotations

import pytest
import torch
from plans_data import DATASET_JSON, tiny_plans
from torch import nn

from nnunet_transfer.errors import PlansError
from nnunet_transfer.nnunet.networks import build_network, find_trainer_class


def _norms(net: nn.Module) -> set[type]:
    return {type(m) for m in net.modules() if isinstance(m, nn.InstanceNorm3d | nn.BatchNorm3d)}


def test_default_is_nnunets_trainer_network():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = tiny_plans()
    torch.manual_seed(0)
    net = build_network(plans, "3d_fullres", DATASET_JSON)
    pm = PlansManager(tiny_plans())
    torch.manual_seed(0)
    expected = nnUNetTrainer.build_network_architecture(pm, pm.get_configuration("3d_fullres"), 1, 3, True)
    ours, theirs = net.state_dict(), expected.state_dict()
    assert list(ours) == list(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert _norms(net) == {nn.InstanceNorm3d}
    assert net.decoder.deep_supervision is True
    assert plans == tiny_plans()  # the caller's plans are not modified


def test_trainer_by_name_builds_what_that_trainer_builds(capsys):
    net = build_network(tiny_plans(), "3d_fullres", DATASET_JSON, trainer="nnUNetTrainerBN")
    assert _norms(net) == {nn.BatchNorm3d}
    assert capsys.readouterr().out == ""  # nnU-Net's search prints are silenced


def test_trainer_class_and_the_pre_27_signature():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.training.nnUNetTrainer.variants.network_architecture.nnUNetTrainerBN import nnUNetTrainerBN

    assert _norms(build_network(tiny_plans(), "3d_fullres", DATASET_JSON, trainer=nnUNetTrainerBN)) == {nn.BatchNorm3d}
    seen = []

    class OldSignature(nnUNetTrainer):
        @staticmethod
        def build_network_architecture(architecture_class_name, arch_init_kwargs, arch_init_kwargs_req_import,
                                       num_input_channels, num_output_channels, enable_deep_supervision=True):
            seen.append((architecture_class_name.rsplit(".", 1)[-1], num_input_channels, num_output_channels,
                         enable_deep_supervision))
            return nn.Identity()

    assert isinstance(build_network(tiny_plans(), "3d_fullres", DATASET_JSON, trainer=OldSignature), nn.Identity)
    assert seen == [("PlainConvUNet", 1, 3, True)]


def test_meta_device_build_runs_a_patch():
    with torch.device("meta"):
        net = build_network(tiny_plans(), "3d_fullres", DATASET_JSON, trainer=find_trainer_class("nnUNetTrainerBN"))
        out = net(torch.zeros(1, 1, 16, 16, 16))
    assert out[0].shape == (1, 3, 16, 16, 16) and out[0].device.type == "meta"


def test_errors_name_the_trainer_and_configuration():
    with pytest.raises(PlansError, match=r"trainer 'nnUNetTrainerNoSuchThing': not found .*nnUNet_extTrainer"):
        build_network(tiny_plans(), "3d_fullres", DATASET_JSON, trainer="nnUNetTrainerNoSuchThing")
    with pytest.raises(PlansError, match=r"trainer int: has no build_network_architecture"):
        find_trainer_class(int)
    with pytest.raises(PlansError, match=r"configuration '2d' not in plans 'nnUNetPlans' \(available: \['3d_fullres'\]\)"):
        build_network(tiny_plans(), "2d", DATASET_JSON)
    plans = tiny_plans()
    del plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["norm_op"]
    with pytest.raises(PlansError, match=r"trainer nnUNetTrainerBN: build_network_architecture fails for configuration "
                                         r"'3d_fullres' of plans 'nnUNetPlans': RuntimeError: 'norm_op' not found"):
        build_network(plans, "3d_fullres", DATASET_JSON, trainer="nnUNetTrainerBN")
