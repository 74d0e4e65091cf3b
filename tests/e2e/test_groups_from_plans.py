"""Parameter groups of the network nnU-Net builds from a planned dataset's plans."""

from __future__ import annotations

import json

from nnunet_transfer.core.schedules.groups import derive_groups


def test_groups_of_the_network_nnunet_builds_from_plans(workspace):


    from nnunet_transfer.nnunet.networks import build_network

    folder = workspace.root / "preprocessed" / "Dataset901_Aniso"
    net = build_network(json.loads((folder / "nnUNetPlans.json").read_text()), "3d_fullres",
                        json.loads((folder / "dataset.json").read_text()))
    groups = derive_groups(net)
    assert sum(g.numel for g in groups) == sum(p.numel() for p in net.parameters())
    assert [g.name for g in groups][-1] == "heads"
