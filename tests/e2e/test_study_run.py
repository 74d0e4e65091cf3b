"""A study end to end: 1 target x 3 arms (scratch, default, full_ft) x 2 fractions x 2 folds, through
``nnunet-transfer campaign`` and the stock ``nnUNetv2_*`` commands, with a second study that shares the scratch arm.

One module-scoped run: study A and study B (scratch only) start at once; A's process group is killed mid-fold; B
ends; A runs again and completes, then B again (nothing left). The tests then read what they left.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from campaign_helpers import wait_for
from helpers import bin_path, cli, nnunet_env, run

DS = "Dataset931_Study"
TINY = "nnUNetTrainer_TransferTestTiny"
FT = "nnUNetTrainerAdaptiveFT"
BUDGET = {"num_epochs": 3, "iterations_per_epoch": 2, "val_iterations_per_epoch": 1, "save_every": 1}
ARMS = [{"name": "scratch", "trainer": TINY, "pretrained": None},
        {"name": "default", "trainer": FT, "recipe": "default.yaml"},
        {"name": "full_ft", "trainer": FT, "recipe": "full_ft.yaml"}]
VICTIM = f"{DS}/3d_fullres/full_ft/fold_0@0.25"


@dataclass
class Study:
    root: Path
    env: dict[str, str]
    a: Path
    b: Path
    original_splits: bytes
    outputs: dict[str, str]
    finished_before_kill: dict[Path, int]

    def campaign(self, path: Path):
        from nnunet_transfer.campaigns.spec import load_campaign

        old = {k: os.environ.get(k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results",
                                              "nnUNet_extTrainer")}
        os.environ.update({k: self.env[k] for k in old})
        # the tests' trainers and ours (appended to nnUNet_extTrainer when this interpreter started)
        os.environ["nnUNet_extTrainer"] = os.pathsep.join(filter(None, [self.env["nnUNet_extTrainer"],
                                                                        old["nnUNet_extTrainer"]]))
        try:
            return load_campaign(path)
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def _start(path: Path, env: dict[str, str], out: Path) -> subprocess.Popen:
    return subprocess.Popen([bin_path("nnunet-transfer"), "campaign", "run", str(path)], env=env,
                            stdout=out.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


@pytest.fixture(scope="module")
def study(workspace, tmp_path_factory) -> Study:
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    from nnunet_transfer.demo.synthetic import make_dataset

    root = tmp_path_factory.mktemp("study")
    env = nnunet_env(root)
    make_dataset(root / "raw", 931, "Study", num_cases=10, shape=(32, 32, 32), seed=31)
    for sub in ("preprocessed", "results"):
        (root / sub).mkdir()
    run([bin_path("nnUNetv2_plan_and_preprocess"), "-d", "931", "-c", "3d_fullres", "-npfp", "2", "-np", "2"], env)
    # nnU-Net's own splits file, as nnUNetTrainer.do_split writes it (save_json: sorted keys, indent 4)
    from batchgenerators.utilities.file_and_folder_operations import save_json

    ids = sorted(p.name[: -len(".nii.gz")] for p in (root / "raw" / DS / "labelsTr").glob("*.nii.gz"))
    save_json(generate_crossval_split(ids, seed=12345, n_splits=5), str(root / "preprocessed" / DS / "splits_final.json"))
    original = (root / "preprocessed" / DS / "splits_final.json").read_bytes()
    (root / "default.yaml").write_text(yaml.safe_dump({"name": "study_default", **BUDGET}))
    (root / "full_ft.yaml").write_text(yaml.safe_dump({"name": "study_full_ft", **BUDGET, "initial_lr": 0.002}))
    common = {"pretrained": str(workspace.checkpoint), "configurations": ["3d_fullres"], "folds": [0, 1],
              "fractions": [0.25, 1.0], "seed": 0, "targets": [{"dataset": 931}], "device": "cpu"}
    a = root / "a.yaml"
    a.write_text(yaml.safe_dump({"name": "a", **common, "arms": ARMS}))
    b = root / "b.yaml"
    b.write_text(yaml.safe_dump({"name": "b", **common, "arms": ARMS[:1]}))

    outputs: dict[str, str] = {}
    start = time.monotonic()
    pa = _start(a, env, root / "a1.out")
    pb = _start(b, env, root / "b1.out")
    victim_dir = root / "results" / DS / f"{FT}__nnUNetPlans_full_ft__3d_fullres"
    try:
        # A's first full_ft fold has written its first checkpoint: kill A's whole process group mid-fold
        victim = wait_for(lambda: next(victim_dir.glob("fold_*/checkpoint_latest.pth"), None), timeout=600,
                          interval=0.02, what="a checkpoint_latest.pth of the full_ft arm")
        os.killpg(pa.pid, signal.SIGKILL)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pa.pid, signal.SIGKILL)
        pa.wait()
    finished = {p: p.stat().st_mtime_ns for p in (root / "results").glob("*/*/fold_*/checkpoint_final.pth")}
    assert pb.wait(timeout=900) in (0, 75)
    outputs["b1"] = (root / "b1.out").read_text()
    outputs["a1"] = (root / "a1.out").read_text()
    outputs["victim"] = str(victim.parent)
    again = cli("campaign", "run", a, env=env)
    outputs["a2"] = again.stdout + again.stderr
    assert again.returncode == 0, outputs["a2"]
    b2 = cli("campaign", "run", b, env=env)
    outputs["b2"] = b2.stdout + b2.stderr
    assert b2.returncode == 0, outputs["b2"]
    outputs["seconds"] = f"{time.monotonic() - start:.0f}"
    return Study(root, env, a, b, original, outputs, finished)


def test_the_kill_and_the_rerun_complete_the_study_without_retraining(study):
    out = study.outputs["a2"]
    assert "campaign a: 13 tasks" in out, out  # 1 prepare + 12 folds
    for path, mtime in study.finished_before_kill.items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was trained again"
    victim = Path(study.outputs["victim"])
    assert (victim / "checkpoint_final.pth").is_file()
    log = study.root / "a.campaign" / "logs" / f"{VICTIM.replace('/', '.')}.log"
    starts = [ln for ln in log.read_text().splitlines() if ln.startswith("$ ") and "nnUNetv2_train " in ln]
    assert len(starts) == 2 and "-pretrained_weights" in starts[0] and starts[1].split()[-3:] == ["--c", "-device", "cpu"]
    assert re.search(rf"^\[\d+/\d+\] {DS} 3d_fullres full_ft fold 0 at 0\.25 \(\d+ cases: nnU-Net fold \d\): done in "
                     r"\d+:\d\d \(continued \(--c\)\)", out, re.M), out  # from its checkpoint, not restarted
    assert "5 done (5 already)" in study.outputs["b2"], study.outputs["b2"]


def test_two_studies_sharing_an_arm_train_each_shared_fold_once(study):
    scratch = study.root / "results" / DS / f"{TINY}__nnUNetPlans__3d_fullres"
    folds = sorted(scratch.glob("fold_*"))
    assert len(folds) == 4
    for fold in folds:
        assert (fold / "validation" / "summary.json").is_file()
        assert len(list(fold.glob("training_log_*.txt"))) == 1, fold


def test_fraction_folds_are_nested_appended_and_validate_on_the_base_folds(study):
    folder = study.root / "preprocessed" / DS
    text = (folder / "splits_final.json").read_bytes()
    original = study.original_splits
    assert text.startswith(original.rstrip()[:-1].rstrip())  # the original folds byte-identical
    splits = json.loads(text)
    assert splits[:5] == json.loads(original) and len(splits) == 7
    sidecar = json.loads((folder / "splits_final_subsets.json").read_text())["subsets"]
    assert [(s["fold"], s["base_fold"], s["train_cases"], s["fraction"], s["seed"]) for s in sidecar] == [
        (5, 0, 2, 0.25, 0), (6, 1, 2, 0.25, 0)]
    for s in sidecar:
        assert set(splits[s["fold"]]["train"]) < set(splits[s["base_fold"]]["train"])
        assert splits[s["fold"]]["val"] == splits[s["base_fold"]]["val"]
    # the arms' own plans share the preprocessed data and carry their recipes
    own = json.loads((folder / "nnUNetPlans.json").read_text())
    full = json.loads((folder / "nnUNetPlans_full_ft.json").read_text())
    assert full["plans_name"] == "nnUNetPlans_full_ft" and full["nnunet_transfer_recipe"]["name"] == "study_full_ft"
    assert full["configurations"] == own["configurations"]


def test_the_documented_command_reproduces_a_cell_by_hand(study, workspace):
    """nnUNetv2_train D C FOLD -tr nnUNetTrainerAdaptiveFT -p nnUNetPlans_full_ft -pretrained_weights CKPT, into
    another results folder: the same recipe, the same cases, the same budget as the study's cell."""
    c = study.campaign(study.a)
    cell = c.task(VICTIM)
    env = {**study.env, "nnUNet_results": str(study.root / "by_hand")}
    env.pop("NNUNET_TRANSFER_RECIPE", None)
    run([bin_path("nnUNetv2_train"), "931", "3d_fullres", str(cell.fold), "-tr", FT, "-p", "nnUNetPlans_full_ft",
         "-pretrained_weights", str(workspace.checkpoint), "-device", "cpu"], env)
    mine = study.root / "by_hand" / DS / f"{FT}__nnUNetPlans_full_ft__3d_fullres" / f"fold_{cell.fold}"
    assert mine.parent.name == cell.fold_dir.parent.name
    theirs = json.loads((cell.fold_dir.parent / "plans.json").read_text())["nnunet_transfer_recipe"]
    assert json.loads((mine.parent / "plans.json").read_text())["nnunet_transfer_recipe"] == theirs

    def facts(fold: Path) -> list[str]:
        text = "\n".join(p.read_text() for p in sorted(fold.glob("training_log_*.txt")))
        return [ln.split(": ", 1)[1] for ln in text.splitlines()
                if ": " in ln and ("This split has" in ln or "nnunet-transfer recipe:" in ln)][:2]

    assert facts(mine) == facts(cell.fold_dir) and "2 training and 2 validation cases" in facts(mine)[-1]


def _summaries(study: Study) -> list[tuple[str, float, int, int, Path]]:
    c = study.campaign(study.a)
    return [(t.arm, t.point.fraction, t.point.base_fold, t.fold, t.fold_dir / "validation" / "summary.json")
            for t in c.train_tasks]


def _case_dice(values: dict[str, float], label: str) -> float:
    """A case's Dice of a label; for ``mean`` the mean of its finite label Dice (as the study report defines it)."""
    if label != "mean":
        return values[label]
    finite = [v for v in values.values() if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def test_report_numbers_equal_nnunet_summaries(study):
    proc = cli("campaign", "report", study.a, env=study.env)
    assert proc.returncode == 0, proc.stderr
    out = study.root / "a.campaign" / "report"
    png = out / "learning_curve.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    with open(out / "cases.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    expected = {}
    per_case: dict[tuple[str, float, int, str], dict[str, float]] = {}
    fold_dice: dict[tuple[str, float, int], dict[str, float]] = {}
    names = {"1": "organ", "2": "lesion"}
    for arm, fraction, base, _, summary in _summaries(study):
        data = json.loads(summary.read_text())
        fold_dice[(arm, fraction, base)] = {names[k]: v["Dice"] for k, v in data["mean"].items()}
        fold_dice[(arm, fraction, base)]["mean"] = data["foreground_mean"]["Dice"]
        for entry in data["metric_per_case"]:
            case = Path(entry["reference_file"]).name.removesuffix(".nii.gz")
            for k, m in entry["metrics"].items():
                expected[(arm, fraction, base, case, names[k])] = m["Dice"]
                per_case.setdefault((arm, fraction, base, case), {})[names[k]] = m["Dice"]
    got = {(r["arm"], float(r["fraction"]), int(r["fold"]), r["case"], r["label"]): float(r["dice"]) for r in rows}
    assert got.keys() == expected.keys() and len(rows) == len(expected) == 3 * 2 * 2 * 2 * 2
    assert all(got[k] == v or (math.isnan(got[k]) and math.isnan(v)) for k, v in expected.items())

    from scipy.stats import wilcoxon

    with open(out / "comparisons.csv", newline="") as f:
        comparisons = list(csv.DictReader(f))
    assert {(r["point"], r["arm"]) for r in comparisons} == {(p, a) for p in ("0.25", "1") for a in ("default", "full_ft")}
    for r in comparisons:
        fraction = float(r["point"])
        label = r["label"]
        diffs = []
        for base in (0, 1):
            for case in sorted({k[3] for k in per_case if k[:3] == (r["arm"], fraction, base)}):
                a = _case_dice(per_case[(r["arm"], fraction, base, case)], label)
                s = _case_dice(per_case[("scratch", fraction, base, case)], label)
                if not (math.isnan(a) or math.isnan(s)):
                    diffs.append(a - s)
        folds_won = sum(fold_dice[(r["arm"], fraction, b)][label] > fold_dice[("scratch", fraction, b)][label]
                        for b in (0, 1))
        won = sum(d > 0 for d in diffs)
        assert int(r["n_cases"]) == len(diffs) == 4 and int(r["cases_won"]) == won
        assert int(r["folds_won"]) == folds_won and int(r["n_folds"]) == 2
        assert float(r["mean_diff"]) == pytest.approx(float(np.mean(diffs)), abs=1e-12)
        p = wilcoxon(diffs).pvalue if any(diffs) else math.nan
        assert (math.isnan(p) and r["p_value"] == "NaN") or float(r["p_value"]) == pytest.approx(p)
        arm_mean = float(np.mean([fold_dice[(r["arm"], fraction, b)][label] for b in (0, 1)]))
        assert float(r["arm_dice"]) == pytest.approx(arm_mean, abs=1e-12)
    md = (out / "report.md").read_text()
    assert "Paired comparison against scratch" in md and "Label efficiency" in md and "Equal budget" in md
    print(f"\nstudy run (both studies, kill, reruns): {study.outputs['seconds']} s")


def test_held_out_test_set_is_predicted_by_the_fold_ensemble_and_scored(study):
    """``test: true``: stock nnUNetv2_predict with the arm's folds of a point, stock nnUNetv2_evaluate_folder, and the
    report's test Dice equal to the summary nnU-Net wrote. A third study file with one arm and one fraction, sharing
    the trained folds: only its test task runs."""
    import shutil

    raw = study.root / "raw" / DS
    for sub in ("imagesTs", "labelsTs"):
        (raw / sub).mkdir(exist_ok=True)
    for i in (0, 1):  # two training cases as the held-out set (the numbers are not the point here)
        shutil.copy(raw / "imagesTr" / f"study_00{i}_0000.nii.gz", raw / "imagesTs" / f"test_00{i}_0000.nii.gz")
        shutil.copy(raw / "labelsTr" / f"study_00{i}.nii.gz", raw / "labelsTs" / f"test_00{i}.nii.gz")
    spec = yaml.safe_load(study.a.read_text())
    spec.update(name="t", arms=[ARMS[1]], fractions=[0.25], test=True)
    t = study.root / "t.yaml"
    t.write_text(yaml.safe_dump(spec))
    proc = cli("campaign", "run", t, env=study.env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "test set at 0.25 (folds 5, 6): done" in proc.stdout and "4 done (3 already)" in proc.stdout, proc.stdout
    summary = study.root / "results" / DS / f"{FT}__nnUNetPlans_default__3d_fullres" / "test_folds_5_6" / "summary.json"
    log = (study.root / "t.campaign" / "logs" / f"{DS}.3d_fullres.default.test@0.25.log").read_text()
    assert "nnUNetv2_predict -i" in log and " -f 5 6 " in log and "nnUNetv2_evaluate_folder" in log
    report = cli("campaign", "report", t, env=study.env)
    assert report.returncode == 0, report.stderr
    with open(study.root / "t.campaign" / "report" / "test.csv", newline="") as f:
        rows = {(r["arm"], r["point"], r["label"]): float(r["dice"]) for r in csv.DictReader(f)}
    assert rows[("default", "0.25", "mean")] == json.loads(summary.read_text())["foreground_mean"]["Dice"]
    assert "Held-out test set" in (study.root / "t.campaign" / "report" / "report.md").read_text()
