"""nnUNetTrainerAdaptiveFT (and its LoRA variant) under DDP: two CPU processes on the gloo backend, trained through
nnU-Net's own trainer entry points (``get_trainer_from_args``, ``maybe_load_checkpoint``, ``run_training``; see
``ddp_harness.py``)."""

from __future__ import annotations

import json
import re
import sys

import torch
from helpers import RECIPES, TESTS, run

TRAINER_FOLDER = "nnUNetTrainerAdaptiveFT__nnUNetPlans__3d_fullres"


def _train_ddp(workspace, tmp_path, *flags: str, recipe: str = "ddp.yaml"):
    env = {**workspace.env, "nnUNet_results": str(tmp_path / "results"), "nnUNet_n_proc_DA": "0",
           "NNUNET_TRANSFER_RECIPE": str(RECIPES / recipe)}
    run([sys.executable, str(TESTS / "ddp_harness.py"), str(workspace.ANISO), str(workspace.checkpoint),
         str(tmp_path), *flags], env)
    loaded, r0, r1 = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in ("loaded", "rank0", "rank1"))
    return loaded, r0, r1


def _stage(key: str) -> int | None:
    m = re.match(r"encoder\.stages\.(\d+)\.", key)
    return int(m.group(1)) if m else None


def test_trainer_under_ddp_keeps_unfrozen_stages_synchronised(workspace, tmp_path):
    loaded, r0, r1 = _train_ddp(workspace, tmp_path)
    deepest = max(s for k in loaded if (s := _stage(k)) is not None)
    unfrozen = {deepest, deepest - 1}  # the recipe unfreezes one stage per epoch from epoch 1, 3 epochs
    for k in loaded:
        assert torch.equal(r0[k], r1[k]), f"{k} differs between the ranks"
        stage = _stage(k)
        if stage is not None and stage not in unfrozen:
            assert torch.equal(r0[k], loaded[k]), f"{k} is frozen all along but changed"
    trained = [k for k in loaded if _stage(k) in unfrozen and k.endswith("weight")]
    assert trained and all(not torch.equal(r0[k], loaded[k]) for k in trained)
    assert any(not torch.equal(r0[k], loaded[k]) for k in loaded if k.startswith("decoder.stages."))

    table = json.loads((tmp_path / "results" / "Dataset901_Aniso" / TRAINER_FOLDER / "fold_0" / "lr_table.json")
                       .read_text())
    assert [r["epoch"] for r in table] == [0, 1, 2]
    assert [sum(g.startswith("encoder.") for g in r["trainable"]) for r in table] == [0, 1, 2]
    log = next((tmp_path / "results" / "Dataset901_Aniso" / TRAINER_FOLDER / "fold_0").glob("training_log_*.txt"))
    assert "trainable groups now" in log.read_text()


def test_control_without_rewrap_the_ranks_drift_apart(workspace, tmp_path):
    """The failure the rebuild prevents: a wrapper built while the encoder was frozen never synchronises it."""
    loaded, r0, r1 = _train_ddp(workspace, tmp_path, "--no-rewrap-after-first")
    deepest = max(s for k in loaded if (s := _stage(k)) is not None)
    assert any(not torch.equal(r0[k], r1[k]) for k in loaded if _stage(k) == deepest)
    assert all(torch.equal(r0[k], r1[k]) for k in loaded if k.startswith("decoder.stages."))


def test_lora_under_ddp_trains_the_adapters_in_step_and_never_the_pretrained_weights(workspace, tmp_path):
    """nnUNetTrainerAdaptiveFT_LoRA, 2 ranks: every tensor equal across the ranks; the pretrained weights of the
    adapted layers (``base_layer.weight``) never change; the adapters of the stages the schedule unfroze moved, the
    others did not."""
    loaded, r0, r1 = _train_ddp(workspace, tmp_path, "--trainer", "nnUNetTrainerAdaptiveFT_LoRA",
                                recipe="ddp_lora.yaml")
    for k in loaded:
        assert torch.equal(r0[k], r1[k]), f"{k} differs between the ranks"
    base = [k for k in loaded if k.endswith(".base_layer.weight")]
    assert base and all(torch.equal(r0[k], loaded[k]) for k in base)
    deepest = max(s for k in loaded if (s := _stage(k)) is not None)
    adapters = [k for k in loaded if ".lora_B." in k and k.startswith("encoder.")]  # not the decoder's aliases
    moved = [k for k in adapters if _stage(k) in {deepest, deepest - 1}]
    assert moved and all(not torch.equal(r0[k], loaded[k]) for k in moved)
    assert all(torch.equal(r0[k], loaded[k]) for k in adapters if _stage(k) not in {deepest, deepest - 1})
