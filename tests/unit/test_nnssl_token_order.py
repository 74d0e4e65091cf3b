"""Primus token order (issue 23): nnssl's EvaMAE pretrains with patch tokens flattened ``b c w h d -> b (h w d) c``,
dynamic_network_architectures' Primus fine-tunes with ``(w h d)``. The reference below is the pretraining's encoder
written from nnssl's EvaMAE.forward (patch embedding, that flatten, dynamic_network_architectures' Eva with the
checkpoint's weights); the network the plans of ``plans --from`` build must give the same features per position."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.eva import Eva
from einops import rearrange
from nnssl_data import primus_checkpoint, primus_kwargs

from nnunet_transfer import load_pretrained, read_checkpoint
from nnunet_transfer.core.primus import PRIMUS_HWD, PrimusHWD
from nnunet_transfer.nnunet.plans.nnssl import nnunet_plans

KW = primus_kwargs()  # embed 48, 2 blocks, 2 heads, patch embedding 4


def _reference(weights: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """nnssl EvaMAE's encoder (masking off) on ``x``: features per patch position, ``b c w h d``. The positional
    embedding's rows and the rotary grid are in the (h w d) order of the flattened tokens; for a grid other than the
    pretraining's, the embedding is resampled along those axes (h, w, d)."""
    proj_w, proj_b = weights["down_projection.proj.weight"], weights["down_projection.proj.bias"]
    tokens = F.conv3d(x, proj_w, proj_b, stride=proj_w.shape[2:])
    _, _, w, h, d = tokens.shape
    tokens = rearrange(tokens, "b c w h d -> b (h w d) c")
    eva = Eva(embed_dim=KW["embed_dim"], depth=KW["eva_depth"], num_heads=KW["eva_numheads"], ref_feat_shape=(h, w, d),
              init_values=KW["init_values"], scale_attn_inner=KW["scale_attn_inner"])
    state = {k.removeprefix("eva."): v for k, v in weights.items() if k.startswith("eva.")}
    pos = state["pos_embed"]
    side = round(pos.shape[1] ** (1 / 3))
    grid = pos.reshape(1, side, side, side, -1).permute(0, 4, 1, 2, 3)  # rows (h w d)
    state["pos_embed"] = F.interpolate(grid, size=(h, w, d), mode="trilinear", align_corners=False).permute(
        0, 2, 3, 4, 1).reshape(1, h * w * d, -1)
    eva.load_state_dict(state)
    eva.eval()
    with torch.no_grad():
        out, _ = eva(tokens)
    return rearrange(out, "b (h w d) c -> b c w h d", h=h, w=w, d=d)


def _features(network: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the fine-tuning network's encoder hands its patch decoder (``b c w h d``)."""
    seen = []
    hook = network.up_projection.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    network.eval()
    with torch.no_grad():
        network(x)
    hook.remove()
    return seen[0]


def _fine_tuning_network(path, patch):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_transfer.nnunet.networks import build_from_plans

    nnssl = read_checkpoint(path).nnssl
    plans = nnunet_plans(nnssl.plan, patch_size=patch, token_order=nnssl.token_order)
    network = build_from_plans(PlansManager(plans).get_configuration("3d_fullres"), 1, 2, True)
    return plans, network


@pytest.mark.parametrize("patch", [(16, 16, 16), (16, 24, 16), (24, 16, 32)])
def test_plans_from_an_evamae_checkpoint_see_positions_as_pretrained(tmp_path, patch):
    """Fails with dynamic_network_architectures' Primus (tokens (w h d)): there the first two axes are swapped."""
    path, _ = primus_checkpoint(tmp_path / "checkpoint_final.pth", form="training", decoder_depth=1,
                                recommended=(16, 16, 16))
    assert read_checkpoint(path).nnssl.token_order == "hwd"
    plans, network = _fine_tuning_network(path, patch)
    report = load_pretrained(network, path)
    x = torch.randn(2, 1, *patch, generator=torch.Generator().manual_seed(0))
    want = _reference(torch.load(path, weights_only=True)["network_weights"], x)
    got = _features(network, x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert plans["configurations"]["3d_fullres"]["architecture"]["network_class_name"] == PRIMUS_HWD
    assert report.coverage == 1.0 and not any(n.startswith("token order") for n in report.notes)


def test_todays_primus_differs_from_the_pretraining_and_the_report_says_so(tmp_path):
    """The stock Primus with the same weights: another encoder output (the measurement the variant fixes)."""
    from dynamic_network_architectures.architectures.primus import Primus

    path, _ = primus_checkpoint(tmp_path / "checkpoint_final.pth", recommended=(16, 16, 16))
    stock = Primus(1, KW["embed_dim"], KW["patch_embed_size"], 2, KW["eva_depth"], KW["eva_numheads"], (16, 16, 16),
                   init_values=KW["init_values"], scale_attn_inner=KW["scale_attn_inner"])
    report = load_pretrained(stock, path)
    assert report.notes[-1] == (
        "token order: the checkpoint's tokens were flattened (h w d) in pretraining (trainer BaseEvaMAETrainer), this "
        "Primus flattens them (w h d): its positional and rotary embeddings see the first two spatial axes swapped; "
        "the plans of `nnunet-transfer plans --from` build a network with the pretraining's order")
    x = torch.randn(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    want = _reference(torch.load(path, weights_only=True)["network_weights"], x)
    assert (_features(stock, x) - want).abs().max() > 1e-2


def test_a_simmim_checkpoint_keeps_dynamic_network_architectures_primus(tmp_path):
    path, _ = primus_checkpoint(tmp_path / "checkpoint_final.pth", trainer_name="SimMIMEvaTrainer")
    nnssl = read_checkpoint(path).nnssl
    assert nnssl.token_order == "whd"
    assert nnssl.architecture["network_class_name"] == "dynamic_network_architectures.architectures.primus.Primus"
    # an explicit token_order in the adaptation plan wins over the trainer's name
    path2, _ = primus_checkpoint(tmp_path / "b" / "checkpoint_final.pth", trainer_name="SimMIMEvaTrainer",
                                 token_order="hwd")
    assert read_checkpoint(path2).nnssl.architecture["network_class_name"] == PRIMUS_HWD


def test_primus_hwd_has_primus_parameters_and_its_rotary_grid_in_token_order():
    from dynamic_network_architectures.architectures.primus import Primus

    args = (1, KW["embed_dim"], KW["patch_embed_size"], 3, KW["eva_depth"], KW["eva_numheads"], (16, 24, 32))
    torch.manual_seed(0)
    a = Primus(*args)
    torch.manual_seed(0)
    b = PrimusHWD(*args)
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    assert list(a.eva.rope.feat_shape) == [4, 6, 8] and list(b.eva.rope.feat_shape) == [6, 4, 8]
    out, mask = b(torch.zeros(1, 1, 16, 24, 32), ret_mask=True)
    assert out.shape == (1, 3, 16, 24, 32) and mask is None
