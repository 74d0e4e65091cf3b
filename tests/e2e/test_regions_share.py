"""Region-based fine-tuning, ensembling and sharing through the stock nnU-Net CLI, on a nested-regions dataset.

Dataset 911 (``make_nested_dataset``): three nested structures as regions whole = {1, 2, 3}, core = {2, 3},
inner = {3} (sigmoid heads). Fine-tuned with ``nnUNetTrainerAdaptiveFT`` (2d and 3d_fullres, folds 0 and 1) from a
label-based source (outer, middle, inner: softmax), and with ``nnUNetTrainerAdaptiveFT_Full`` (3d_fullres, fold 0)
from a region-based source with other regions (core = {2}). To keep the test short the two sources are untrained
networks saved in nnU-Net's checkpoint format (built by nnU-Net's ``build_network_architecture`` from the plans, with
the source dataset's ``dataset.json`` in ``init_args``): what is checked here is the head mapping and what the
region-based models do downstream, not what the sources knew. The plans are shrunk (8-64 features, one convolution
per stage) before training; the five trainings run side by side.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import RECIPES, bin_path, cli, nnunet_env, run

TRAINER = "nnUNetTrainerAdaptiveFT"
OTHER_TRAINER = "nnUNetTrainerAdaptiveFT_Full"  # the region -> region run: a model folder of its own
DATASET = "Dataset911_Nested"
LABELS = {"background": 0, "outer": 1, "middle": 2, "inner": 3}
OTHER_REGIONS = {"background": 0, "whole": [1, 2, 3], "core": [2], "inner": 3}
CONFIGS = ("2d", "3d_fullres")


def _shrink_plans(path) -> dict:
    plans = json.loads(path.read_text())
    for conf in plans["configurations"].values():
        kw = conf["architecture"]["arch_kwargs"]
        n = kw["n_stages"]
        kw["features_per_stage"] = [min(8 * 2**i, 64) for i in range(n)]
        kw["n_conv_per_stage"] = [1] * n
        kw["n_conv_per_stage_decoder"] = [1] * (n - 1)
    path.write_text(json.dumps(plans, indent=2))
    return plans


def _source(path, plans, conf, labels) -> str:
    """An untrained network in nnU-Net's checkpoint format, for a dataset with ``labels``."""
    from nnunet_transfer.nnunet.networks import build_network

    dataset_json = {"channel_names": {"0": "MR"}, "labels": labels, "file_ending": ".nii.gz", "numTraining": 5}
    if any(isinstance(v, list) for v in labels.values()):
        dataset_json["regions_class_order"] = [1, 2, 3]
    torch.manual_seed(0)
    net = build_network(plans, conf, dataset_json)
    torch.save({"network_weights": net.state_dict(), "trainer_name": "nnUNetTrainer", "current_epoch": 0,
                "init_args": {"plans": plans, "configuration": conf, "fold": 0, "dataset_json": dataset_json}}, path)
    return str(path)


def _run_all(jobs) -> dict[int, str]:
    """Run ``(command, env, must_succeed)`` jobs side by side; their outputs by position."""
    procs = [(cmd, ok, subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
             for cmd, env, ok in jobs]
    failed, outputs = [], {}
    for i, (cmd, ok, p) in enumerate(procs):
        outputs[i], _ = p.communicate(timeout=900)
        if (p.returncode == 0) != ok:
            failed.append(f"{' '.join(cmd)} exited {p.returncode}\n{outputs[i][-3000:]}")
    assert not failed, "\n".join(failed)
    return outputs


@pytest.fixture(scope="module")
def nested(tmp_path_factory):
    """The nnU-Net folders with dataset 911 planned, preprocessed and fine-tuned five times (see the module doc)."""
    from nnunet_transfer.demo.synthetic import make_nested_dataset

    root = tmp_path_factory.mktemp("nested")
    env = nnunet_env(root, NNUNET_TRANSFER_RECIPE=str(RECIPES / "nested.yaml"), nnUNet_def_n_proc="1")
    make_nested_dataset(root / "raw", 911, "Nested", num_cases=5, seed=1)
    run([bin_path("nnUNetv2_plan_and_preprocess"), "-d", "911", "-c", *CONFIGS, "-npfp", "2", "-np", "2"], env)
    plans = _shrink_plans(root / "preprocessed" / DATASET / "nnUNetPlans.json")
    sources = root / "sources"
    sources.mkdir()
    train = [bin_path("nnUNetv2_train"), "911"]
    commands = [[*train, conf, fold, "-tr", TRAINER, "-device", "cpu", "--npz", "-pretrained_weights",
                 _source(sources / f"labels_{conf}.pth", plans, conf, LABELS)]
                for conf in CONFIGS for fold in ("0", "1")]
    commands.append([*train, "3d_fullres", "0", "-tr", OTHER_TRAINER, "-device", "cpu", "-pretrained_weights",
                     _source(sources / "other_regions.pth", plans, "3d_fullres", OTHER_REGIONS)])
    _run_all([(cmd, {**env, "OMP_NUM_THREADS": "1"}, True) for cmd in commands])
    return root, env


def _folder(root, conf, trainer=TRAINER):
    return root / "results" / DATASET / f"{trainer}__nnUNetPlans__{conf}"


def _mapping(report) -> list[tuple]:
    return [(m["target_index"], m["target_name"], m["source_index"], m["source_name"]) for m in report["label_mapping"]]


def test_heads_map_by_region_name_and_label_set(nested):
    root, _ = nested
    for conf in CONFIGS:
        for fold in ("0", "1"):
            report = json.loads((_folder(root, conf) / f"fold_{fold}" / "pretrained_load_report.json").read_text())
            assert report["passed"] and report["applied"] and report["coverage"] == 1.0
            # label-based source: only "inner" ({3}) is a region of the same name and label set
            assert _mapping(report) == [(0, "whole", None, None), (1, "core", None, None), (2, "inner", 3, "inner")]
            heads = [t for t in report["tensors"] if t["is_head"]]
            assert heads and {t["code"] for t in heads} == {"head_mapped"}
    report = json.loads((_folder(root, "3d_fullres", OTHER_TRAINER) / "fold_0" / "pretrained_load_report.json")
                        .read_text())
    assert _mapping(report) == [(0, "whole", 0, "whole"), (1, "core", None, None), (2, "inner", 2, "inner")]
    assert report["label_mapping"][1]["note"] == "'core' stands for labels {2, 3} here but {2} in the source"
    assert "fresh: core" in next(t for t in report["tensors"] if t["is_head"])["reason"]


def _dice(pred: np.ndarray, gt: np.ndarray, regions) -> float:
    scores = []
    for region in regions:
        p, g = np.isin(pred, region), np.isin(gt, region)
        denom = p.sum() + g.sum()
        scores.append(1.0 if denom == 0 else 2 * (p & g).sum() / denom)
    return float(np.mean(scores))


def test_find_best_and_ensemble_keep_the_dice_of_the_members(nested):
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    root, env = nested
    run([bin_path("nnUNetv2_find_best_configuration"), "911", "-c", *CONFIGS, "-tr", TRAINER, "-f", "0", "1",
         "-np", "1"], env)
    members = {c: json.loads((_folder(root, c) / "crossval_results_folds_0_1" / "summary.json").read_text())
               ["foreground_mean"]["Dice"] for c in CONFIGS}
    ens_dir = root / "results" / DATASET / "ensembles" / (
        f"ensemble___{TRAINER}__nnUNetPlans__2d___{TRAINER}__nnUNetPlans__3d_fullres___0_1")
    ensemble = json.loads((ens_dir / "summary.json").read_text())["foreground_mean"]["Dice"]
    mean = float(np.mean(list(members.values())))
    assert min(members.values()) > 0.3, members  # the members learnt something
    # in line with the members: not worse than their mean, not better than the best by more than the margin
    assert mean - 0.05 <= ensemble <= max(members.values()) + 0.05, (members, ensemble)

    # the double-sigmoid failure on the same probabilities: sigmoid applied again to the averaged probabilities
    dataset_json = json.loads((_folder(root, "3d_fullres") / "dataset.json").read_text())
    lm = LabelManager(dataset_json["labels"], dataset_json["regions_class_order"])
    gt_dir = root / "preprocessed" / DATASET / "gt_segmentations"
    regions = [r for r in lm.foreground_regions]
    failed, ours = [], []
    cases = sorted(p.name[:-4] for p in (_folder(root, "2d") / "fold_0" / "validation").glob("*.npz"))
    assert cases
    # nnUNetv2_ensemble takes prediction folders (nnUNetv2_predict --save_probabilities: .npz, .pkl, dataset.json,
    # plans.json); fold 0's validation folders hold the first two, the model folders the others
    inputs = []
    for c in CONFIGS:
        inputs.append(root / "ensemble_inputs" / c)
        shutil.copytree(_folder(root, c) / "fold_0" / "validation", inputs[-1], dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("*.nii.gz", "summary.json"))
        for name in ("dataset.json", "plans.json"):
            shutil.copy(_folder(root, c) / name, inputs[-1])
    out = root / "ensembled_fold0"
    run([bin_path("nnUNetv2_ensemble"), "-i", *map(str, inputs), "-o", str(out), "-np", "1"], env)
    for case in cases:
        probs = np.mean([np.load(_folder(root, c) / "fold_0" / "validation" / f"{case}.npz")["probabilities"]
                         for c in CONFIGS], axis=0)
        twice = lm.convert_probabilities_to_segmentation(1 / (1 + np.exp(-probs)))
        gt = sitk.GetArrayFromImage(sitk.ReadImage(str(gt_dir / f"{case}.nii.gz")))
        ensembled = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{case}.nii.gz")))
        # nnUNetv2_ensemble on the fold's validation probabilities = find_best's ensemble of these cases
        from_find_best = sitk.GetArrayFromImage(sitk.ReadImage(str(ens_dir / f"{case}.nii.gz")))
        assert np.array_equal(ensembled, from_find_best)
        assert np.array_equal(ensembled, lm.convert_probabilities_to_segmentation(probs))
        failed.append(_dice(np.asarray(twice), gt, regions))
        ours.append(_dice(ensembled, gt, regions))
    assert np.mean(failed) < 0.3 and np.mean(ours) - np.mean(failed) > 0.2, (ours, failed)


def _digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _predict(images, out, trainer):
    return [bin_path("nnUNetv2_predict"), "-i", str(images), "-o", str(out), "-d", "911", "-c", "3d_fullres",
            "-tr", trainer, "-f", "0", "1", "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_tta",
            "--disable_progress_bar"]


def test_shared_model_predicts_the_same_with_plain_nnunet(nested, tmp_path):
    root, env = nested
    original = _folder(root, "3d_fullres")
    before = _digest(original)
    shared_root, zip_file, installed = tmp_path / "shared", tmp_path / "model.zip", tmp_path / "installed"
    proc = cli("share", original, "-o", shared_root, env=env, check=True)
    assert f"trainer {TRAINER} -> nnUNetTrainer" in proc.stdout
    cli("share", original, "-o", zip_file, "--zip", env=env, check=True)
    assert _digest(original) == before  # the original is only read
    assert "nnunet_transfer_recipe" in json.loads((original / "plans.json").read_text())
    shared = shared_root / DATASET / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    assert "nnunet_transfer_recipe" not in json.loads((shared / "plans.json").read_text())

    # plain nnU-Net: our trainers are not registered and no nnUNet_extTrainer is set
    plain = {k: v for k, v in env.items() if k != "nnUNet_extTrainer"} | {"NNUNET_TRANSFER_NO_AUTOREGISTER": "1"}
    installed.mkdir()
    run([bin_path("nnUNetv2_install_pretrained_model_from_zip"), str(zip_file)], {**plain, "nnUNet_results":
                                                                                    str(installed)})
    assert (installed / DATASET / "nnUNetTrainer__nnUNetPlans__3d_fullres" / "fold_1" / "checkpoint_final.pth").is_file()
    images = tmp_path / "images"
    images.mkdir()
    for i in (0, 3):
        shutil.copy(root / "raw" / DATASET / "imagesTr" / f"nested_{i:03d}_0000.nii.gz", images)
    one = {"OMP_NUM_THREADS": "1"}
    outputs = _run_all([
        (_predict(images, tmp_path / "pred_original", TRAINER), env | one, True),
        (_predict(images, tmp_path / "pred_shared", "nnUNetTrainer"), plain | one | {"nnUNet_results":
                                                                                    str(shared_root)}, True),
        (_predict(images, tmp_path / "pred_zip", "nnUNetTrainer"), plain | one | {"nnUNet_results": str(installed)},
         True),
        # the original without this package fails: the very problem share solves
        (_predict(images, tmp_path / "no", TRAINER), plain | one, False),
    ])
    assert f"Could not find requested nnunet trainer {TRAINER}" in outputs[3]
    for i in (0, 3):
        arrays = [sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / d / f"nested_{i:03d}.nii.gz")))
                  for d in ("pred_original", "pred_shared", "pred_zip")]
        assert arrays[0].any() and np.array_equal(arrays[0], arrays[1]) and np.array_equal(arrays[0], arrays[2])
