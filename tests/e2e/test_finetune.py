"""End to end through the stock nnU-Net CLI: pretrain, fine-tune with nnUNetTrainerAdaptiveFT, resume, predict."""

from __future__ import annotations

import json
import shutil

import numpy as np
import SimpleITK as sitk
from helpers import RECIPES, bin_path, run

TRAINER = "nnUNetTrainerAdaptiveFT"


def _report(folder):
    return json.loads((folder / "pretrained_load_report.json").read_text())


def _logs(folder):
    return sorted(folder.glob("training_log_*.txt"))


def test_stock_loader_fails_on_anisotropic_target(workspace):
    """The problem this package solves: nnU-Net's strict loader stops on the target's own plans."""
    proc = workspace.train(workspace.ANISO, workspace.TINY, "0", "-pretrained_weights", str(workspace.checkpoint),
                           check=False)
    assert proc.returncode != 0
    assert "The shape of the parameters of key" in proc.stdout + proc.stderr


def test_finetune_anisotropic_target_and_predict(workspace, tmp_path):
    env = {**workspace.env, "NNUNET_TRANSFER_RECIPE": str(RECIPES / "tiny.yaml")}
    workspace.train(workspace.ANISO, TRAINER, "0", "-pretrained_weights", str(workspace.checkpoint), env=env)
    out = workspace.results("Dataset901_Aniso", TRAINER)
    fold = out / "fold_0"
    report = _report(fold)
    assert report["coverage"] == 1.0 and report["passed"] and report["applied"]
    status = {t["key"]: t for t in report["tensors"]}
    adapted = {k for k, t in status.items() if t["status"] == "adapted" and not t["is_head"]}
    # the target's own plans: 1x3x3 kernels in the first stage, pooling 1x2x2 in two places
    assert "encoder.stages.0.0.convs.0.conv.weight" in adapted
    assert any(k.startswith("decoder.transpconvs.") for k in adapted)
    assert all(t["status"] == "loaded" for k, t in status.items() if k not in adapted and not t["is_head"])
    assert {m["target_name"]: m["source_name"] for m in report["label_mapping"]} == {
        "background": "background", "lesion": "lesion", "vessel": None}
    groups = {g["name"]: g for g in report["groups"]}  # each parameter tensor in one group, counted once
    assert sum(g["tensors"] for g in groups.values()) == sum(t["is_parameter"] for t in report["tensors"])
    assert {"encoder.stage0", "decoder.stage0", "heads"} <= set(groups)
    assert all(g["coverage"] == 1.0 for n, g in groups.items() if n != "heads")
    log = _logs(fold)[-1].read_text()
    assert "nnunet-transfer load report:" in log and "coverage 1.000 (ok)" in log
    assert "parameter groups (name: tensors, parameters, share, rate multiplier, trains from epoch):" in log
    assert "parameter groups: encoder.stage0 " in log
    assert (fold / "checkpoint_final.pth").is_file()
    assert (fold / "adaptive_ft_recipe.yaml").read_text().startswith("name: tiny")
    assert "Dice" in (fold / "validation" / "summary.json").read_text()

    # the stock nnUNetv2_predict finds the trainer and predicts
    images = tmp_path / "in"
    images.mkdir()
    src = workspace.root / "raw" / "Dataset901_Aniso" / "imagesTr" / "aniso_000_0000.nii.gz"
    shutil.copy(src, images / "case_0000.nii.gz")
    run([bin_path("nnUNetv2_predict"), "-i", str(images), "-o", str(tmp_path / "pred"), "-d", "901", "-c",
         "3d_fullres", "-tr", TRAINER, "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_tta",
         "--disable_progress_bar"], workspace.env)
    pred = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "pred" / "case.nii.gz")))
    assert pred.shape == (12, 32, 32)
    assert set(np.unique(pred)) <= {0, 1, 2}

    # a finished fold is never trained over: the same command again fails before anything in it changes
    kept = {p.name: p.read_bytes() for p in fold.iterdir() if p.is_file() and not p.name.startswith("training_log")}
    proc = workspace.train(workspace.ANISO, TRAINER, "0", "-pretrained_weights", str(workspace.checkpoint), env=env,
                           check=False)
    assert proc.returncode != 0
    assert f"{fold / 'checkpoint_final.pth'}: this fold has finished training" in proc.stdout + proc.stderr
    assert {p.name: p.read_bytes() for p in fold.iterdir() if p.name in kept} == kept

    # --val under another recipe (other parameter groups, so another optimizer layout): the checkpoint's recipe,
    # the one the fold was trained with, is in force; nnU-Net's optimizer-state load would fail under the other one
    other = tmp_path / "one_group.yaml"
    other.write_text("name: one_group\ngroups: {all: ['.+']}\n")
    (fold / "validation" / "summary.json").unlink()
    proc = workspace.train(workspace.ANISO, TRAINER, "0", "--val",
                           env={**workspace.env, "NNUNET_TRANSFER_RECIPE": str(other)})
    assert "nnunet-transfer recipe: tiny (" in proc.stdout and "the one this checkpoint was trained with" in proc.stdout
    assert "Dice" in (fold / "validation" / "summary.json").read_text()


def test_finetune_two_channel_target_adapts_only_the_first_convolution(workspace):
    env = {**workspace.env, "NNUNET_TRANSFER_RECIPE": str(RECIPES / "tiny.yaml")}
    workspace.train(workspace.TWO_CH, TRAINER, "0", "-pretrained_weights", str(workspace.checkpoint), env=env)
    report = _report(workspace.results("Dataset902_TwoCh", TRAINER) / "fold_0")
    adapted = [t for t in report["tensors"] if t["status"] == "adapted"]
    assert [t["key"] for t in adapted] == ["encoder.stages.0.0.convs.0.conv.weight"]
    assert adapted[0]["source_shape"][1] == 1 and adapted[0]["target_shape"][1] == 2
    assert "input channels 1->2" in adapted[0]["reason"]
    assert all(t["status"] == "loaded" for t in report["tensors"] if t is not adapted[0])
    assert report["coverage"] == 1.0


def test_finetune_target_with_other_channels_and_anisotropic_plans(workspace):
    env = {**workspace.env, "NNUNET_TRANSFER_RECIPE": str(RECIPES / "tiny.yaml")}
    workspace.train(workspace.ANISO_TWO_CH, TRAINER, "0", "-pretrained_weights", str(workspace.checkpoint), env=env)
    fold = workspace.results("Dataset903_AnisoTwoCh", TRAINER) / "fold_0"
    report = _report(fold)
    first = next(t for t in report["tensors"] if t["key"] == "encoder.stages.0.0.convs.0.conv.weight")
    assert first["status"] == "adapted" and first["source_shape"] == [32, 1, 3, 3, 3]
    assert first["target_shape"] == [32, 2, 1, 3, 3]
    assert "input channels 1->2" in first["reason"] and "kernel 3x3x3->1x3x3" in first["reason"]
    assert report["coverage"] == 1.0
    assert {m["target_name"]: m["source_name"] for m in report["label_mapping"]} == {
        "background": "background", "edema": None, "lesion": "lesion"}
    assert (fold / "checkpoint_final.pth").is_file()


def test_recipe_checkpoint_is_loaded_once_and_never_over_a_resumed_run(workspace, tmp_path):
    recipe = tmp_path / "with_ckpt.yaml"
    recipe.write_text((RECIPES / "tiny.yaml").read_text() + f"pretrained:\n  checkpoint: {workspace.checkpoint}\n")
    env = {**workspace.env, "NNUNET_TRANSFER_RECIPE": str(recipe)}
    workspace.train(workspace.TWO_CH, TRAINER, "1", env=env)
    fold = workspace.results("Dataset902_TwoCh", TRAINER) / "fold_1"
    report_file = fold / "pretrained_load_report.json"
    assert _report(fold)["coverage"] == 1.0
    first_report = report_file.read_bytes()
    assert "pretrained load from" in _logs(fold)[-1].read_text()

    # as if the run had been killed: only checkpoint_best remains; --c resumes from it, with the stored recipe
    (fold / "checkpoint_final.pth").unlink()
    logs_before = set(_logs(fold))
    env_resume = {**workspace.env, "NNUNET_TRANSFER_RECIPE": "default"}
    workspace.train(workspace.TWO_CH, TRAINER, "1", "--c", env=env_resume)
    new_logs = set(_logs(fold)) - logs_before
    assert len(new_logs) == 1
    log = new_logs.pop().read_text()
    assert "adaptive_ft_recipe.yaml" in log  # the recipe in force is the stored one
    assert "pretrained load from" not in log
    assert report_file.read_bytes() == first_report
    assert (fold / "checkpoint_final.pth").is_file()


def test_resumed_schedule_has_the_same_per_epoch_table(workspace):
    """Progressive unfreezing through the stock CLI; a run killed mid-schedule and continued with --c follows the
    same table (epoch, per-group learning rate, trainable groups) as an uninterrupted one."""
    import os
    import signal
    import subprocess
    import time

    env = {**workspace.env, "NNUNET_TRANSFER_RECIPE": str(RECIPES / "progressive.yaml")}
    out = workspace.results("Dataset901_Aniso", TRAINER)
    workspace.train(workspace.ANISO, TRAINER, "2", "-pretrained_weights", str(workspace.checkpoint), env=env)
    full = json.loads((out / "fold_2" / "lr_table.json").read_text())
    assert [r["epoch"] for r in full] == [0, 1, 2, 3, 4]
    assert [len(r["trainable"]) for r in full] == [4, 5, 6, 7, 8]
    assert full[0]["lr"]["encoder.stage0"] == 0 and full[0]["trainable_fraction"] < 0.5
    assert full[4]["trainable_fraction"] == 1.0
    import matplotlib.image as mpimg

    height = mpimg.imread(str(out / "fold_2" / "progress.png")).shape[0]
    assert height > 5400  # nnU-Net's three panels (54 in at 100 dpi) plus our per-group learning-rate panel
    plans = json.loads((out / "plans.json").read_text())
    assert plans["nnunet_transfer_recipe"]["name"] == "progressive"  # the recipe in force travels with the plans

    cmd = [bin_path("nnUNetv2_train"), "901", "3d_fullres", "3", "-tr", TRAINER, "-pretrained_weights",
           str(workspace.checkpoint), "-device", "cpu"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    table = out / "fold_3" / "lr_table.json"
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            if table.is_file() and len(json.loads(table.read_text() or "[]")) >= 3:
                break
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert (out / "fold_3" / "checkpoint_latest.pth").is_file() and not (out / "fold_3" / "checkpoint_final.pth").exists()
    workspace.train(workspace.ANISO, TRAINER, "3", "--c", env=env)
    resumed = json.loads(table.read_text())
    strip = [{k: r[k] for k in ("epoch", "lr", "trainable")} for r in resumed]
    assert strip == [{k: r[k] for k in ("epoch", "lr", "trainable")} for r in full]


def test_a_new_training_without_pretrained_weights_is_refused(workspace, tmp_path):
    """A fine-tuning trainer never trains from scratch silently; ``pretrained.required: false`` is the deliberate way."""
    fold = workspace.results("Dataset902_TwoCh", TRAINER) / "fold_4"
    proc = workspace.train(workspace.TWO_CH, TRAINER, "4", check=False,
                           env={**workspace.env, "NNUNET_TRANSFER_RECIPE": str(RECIPES / "tiny.yaml")})
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "TrainingStateError: nnUNetTrainerAdaptiveFT got no pretrained weights and would train from scratch" in out
    assert "-pretrained_weights CHECKPOINT" in out and "tiny.yaml" in out
    assert not list(fold.glob("checkpoint_*.pth"))

    scratch = tmp_path / "scratch.yaml"
    scratch.write_text((RECIPES / "tiny.yaml").read_text() + "pretrained: {required: false}\n")
    proc = workspace.train(workspace.TWO_CH, TRAINER, "4", env={**workspace.env, "NNUNET_TRANSFER_RECIPE": str(scratch)})
    assert "training from scratch" in proc.stdout
    assert (fold / "checkpoint_final.pth").is_file() and not (fold / "pretrained_load_report.json").exists()


def test_resume_before_the_first_checkpoint_restarts_from_the_pretrained_weights(workspace, tmp_path):
    """--c on a run that had loaded its pretrained weights but saved no checkpoint yet (killed in epoch 0): nnU-Net
    would start a new training from scratch; the run restarts from the weights its load report names."""
    env = {**workspace.env, "NNUNET_TRANSFER_RECIPE": str(RECIPES / "tiny.yaml")}
    gone = workspace.results("Dataset901_Aniso", TRAINER) / "fold_1"
    gone.mkdir(parents=True)
    (gone / "pretrained_load_report.json").write_text(json.dumps({"checkpoint": str(tmp_path / "moved.pth")}))
    proc = workspace.train(workspace.ANISO, TRAINER, "1", "--c", env=env, check=False)
    assert proc.returncode != 0
    assert f"the pretrained checkpoint this run began with ({tmp_path / 'moved.pth'}" in proc.stdout + proc.stderr
    assert not list(gone.glob("checkpoint_*.pth"))

    fold = workspace.results("Dataset901_Aniso", TRAINER) / "fold_4"
    fold.mkdir(parents=True)
    (fold / "pretrained_load_report.json").write_text(json.dumps({"checkpoint": str(workspace.checkpoint)}))
    proc = workspace.train(workspace.ANISO, TRAINER, "4", "--c", env=env)
    assert "the run restarts from the pretrained weights it began with" in proc.stdout
    assert _report(fold)["coverage"] == 1.0 and _report(fold)["applied"]
    assert (fold / "checkpoint_final.pth").is_file()
