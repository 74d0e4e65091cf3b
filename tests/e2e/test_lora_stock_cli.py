"""LoRA through the stock CLI (issue 21): ``nnUNetv2_train -tr nnUNetTrainerAdaptiveFT_LoRA -pretrained_weights``,
the stock ``nnUNetv2_predict`` on the fold as it is, ``share`` and a prediction by nnU-Net alone (the same
segmentation), ``export --format onnx`` verified with no adapter in it, ``adapters extract`` + ``apply`` giving the
fold's merged network, and a wrong base refused. One tiny training (dataset 901, 2 epochs of 4 iterations), stopped
by SIGUSR1 after its first epoch (exit 75) and continued with ``--c``."""

from __future__ import annotations

import json
import os
import shutil
import signal

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import RECIPES, bin_path, cli, epochs_in_log, run, signal_in_epoch

TRAINER = "nnUNetTrainerAdaptiveFT_LoRA"
DATASET = "Dataset901_Aniso"


@pytest.fixture(scope="module")
def lora_run(workspace, tmp_path_factory):
    """Dataset 901 fine-tuned from the session's pretrained checkpoint with rank-4 adapters on the encoder: stopped
    by SIGUSR1 in epoch 0 (exit 75, as a preempted job), then continued with ``--c``."""
    env = {**workspace.env, "NNUNET_TRANSFER_RECIPE": str(RECIPES / "lora_tiny.yaml"), "nnUNet_def_n_proc": "2",
           "nnUNet_n_proc_DA": "1"}
    cmd = [bin_path("nnUNetv2_train"), str(workspace.ANISO), "3d_fullres", "0", "-tr", TRAINER, "-device", "cpu"]
    model = workspace.results(DATASET, TRAINER)
    out = tmp_path_factory.mktemp("lora") / "stopped.out"
    status, log = signal_in_epoch([*cmd, "-pretrained_weights", str(workspace.checkpoint)], env, model / "fold_0", 0,
                                  lambda proc: os.kill(proc.pid, signal.SIGUSR1), out)
    stopped = torch.load(model / "fold_0" / "checkpoint_latest.pth", map_location="cpu", weights_only=False)
    facts = (status, out.read_text(), epochs_in_log(log), stopped["current_epoch"],
             {k: v for k, v in stopped["network_weights"].items() if ".lora_" in k})
    run([*cmd, "--c"], env)
    return model, facts


@pytest.fixture(scope="module")
def lora_fold(lora_run):
    return lora_run[0]


def test_a_preempted_lora_fold_stops_after_the_epoch_and_continues_with_its_adapters(lora_run):
    from nnunet_transfer.core.preemption import PREEMPTED_EXIT_CODE

    lora_fold, (status, output, epochs, next_epoch, adapters) = lora_run
    assert status == PREEMPTED_EXIT_CODE and "Traceback" not in output, output[-3000:]
    assert "Training stopped on SIGUSR1 (received " in output and "at the end of epoch 0" in output
    assert epochs == [0] and next_epoch == 1
    assert adapters and any(v.abs().sum() > 0 for k, v in adapters.items() if ".lora_B." in k)  # trained in epoch 0
    fold = lora_fold / "fold_0"
    logs = sorted(fold.glob("training_log_*.txt"))
    assert len(logs) == 2 and epochs_in_log(logs[1]) == [1]  # continued from the next epoch
    assert [r["epoch"] for r in json.loads((fold / "lr_table.json").read_text())] == [0, 1]
    assert (fold / "checkpoint_final.pth").is_file() and not (fold / "checkpoint_latest.pth").exists()


def _predict(images, out, trainer: str) -> list[str]:
    return [bin_path("nnUNetv2_predict"), "-i", str(images), "-o", str(out), "-d", "901", "-c", "3d_fullres",
            "-tr", trainer, "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_tta",
            "--disable_progress_bar"]


def test_lora_fold_trains_predicts_shares_and_plain_nnunet_predicts_the_same(workspace, lora_fold, tmp_path):
    from nnunet_transfer.core.io import sha256_file

    fold = lora_fold / "fold_0"
    report = json.loads((fold / "pretrained_load_report.json").read_text())
    assert report["passed"] and report["coverage"] == 1.0  # pretrained weights only: the adapters are new
    new = [t for t in report["tensors"] if t["status"] == "new"]
    assert new and all(".lora_" in t["key"] and not t["in_coverage"] for t in new)
    base = json.loads((fold / "adapter_base.json").read_text())
    assert base["sha256"] == sha256_file(workspace.checkpoint)
    assert (fold / "adapters" / "adapter_config.json").is_file()
    weights = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)["network_weights"]
    assert any(".lora_B." in k for k in weights) and any(".base_layer." in k for k in weights)

    images = tmp_path / "in"
    images.mkdir()
    shutil.copy(workspace.root / "raw" / DATASET / "imagesTr" / "aniso_000_0000.nii.gz", images / "case_0000.nii.gz")
    run(_predict(images, tmp_path / "pred_lora", TRAINER), workspace.env)  # the fold as it is, unmerged

    shared = tmp_path / "shared"
    proc = cli("share", lora_fold, "-o", shared, env=workspace.env, check=True)
    assert f"{TRAINER} -> nnUNetTrainer" in proc.stdout
    copy = shared / DATASET / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    merged = torch.load(copy / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert not any(".lora_" in k or ".base_layer." in k for k in merged["network_weights"])
    assert json.loads((copy / "nnunet_transfer_share.json").read_text())["adapters_merged"] is True
    plain = {k: v for k, v in workspace.env.items() if k != "nnUNet_extTrainer"} | {
        "NNUNET_TRANSFER_NO_AUTOREGISTER": "1", "nnUNet_results": str(shared)}
    run(_predict(images, tmp_path / "pred_plain", "nnUNetTrainer"), plain)
    a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / d / "case.nii.gz")))
            for d in ("pred_lora", "pred_plain"))
    assert a.any() and np.array_equal(a, b)

    # ONNX: verified against the fold's network, holding the merged weights and no adapter layer
    out = tmp_path / "fold0.onnx"
    proc = cli("export", lora_fold, "-f", "0", "--format", "onnx", "-o", out, env=workspace.env, check=True)
    assert "LoRA adapters merged" in proc.stdout
    import onnx

    names = [i.name for i in onnx.load(str(out)).graph.initializer]
    assert names and not any("lora" in n or "base_layer" in n for n in names)


def test_adapters_extract_and_apply_reproduce_the_merged_fold(workspace, lora_fold, tmp_path):
    from safetensors.torch import load_file

    from nnunet_transfer.core.adapters import merge_lora_weights
    from nnunet_transfer.core.schedules.recipes import adapters_in_plans

    out = tmp_path / "adapters"
    cli("adapters", "extract", lora_fold, "-f", "0", "-o", out, env=workspace.env, check=True)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    stored = load_file(str(out / "adapter_model.safetensors"))
    assert any(k.endswith(".lora_A.weight") for k in stored)  # peft's names
    assert not any(k.endswith(".base_layer.weight") and k.startswith("encoder.") for k in stored)
    written = load_file(str(lora_fold / "fold_0" / "adapters" / "adapter_model.safetensors"))  # by the trainer
    assert written.keys() == stored.keys() and all(torch.equal(written[k], stored[k]) for k in stored)
    assert (out / "adapter_model.safetensors").stat().st_size < (lora_fold / "fold_0" / "checkpoint_final.pth"
                                                                 ).stat().st_size

    ckpt = tmp_path / "applied.pth"
    cli("adapters", "apply", workspace.checkpoint, out, "-o", ckpt, env=workspace.env, check=True)
    applied = torch.load(ckpt, map_location="cpu", weights_only=False)
    fold = torch.load(lora_fold / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    expected = merge_lora_weights(fold["network_weights"],
                                  adapters_in_plans(json.loads((lora_fold / "plans.json").read_text())))
    assert applied["trainer_name"] == "nnUNetTrainer" and applied["network_weights"].keys() == expected.keys()
    for k, v in expected.items():
        assert torch.equal(applied["network_weights"][k], v), k

    wrong = tmp_path / "other_base.pth"
    wrong.write_bytes(workspace.checkpoint.read_bytes() + b"\0")
    proc = cli("adapters", "apply", wrong, out, "-o", tmp_path / "no.pth", env=workspace.env)
    assert proc.returncode == 2 and "is not that of the base checkpoint" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "no.pth").exists()
