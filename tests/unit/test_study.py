"""Studies without training: arms and fractions in campaign files, the appended label-fraction folds, the trainer's
recipe precedence, and the paired statistics on hand-made per-case numbers."""

from __future__ import annotations

import json
import math
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
from campaign_helpers import ALPHA, campaign_dict, make_roots, tree_snapshot, write_campaign
from helpers import assert_clean_error, cli, make_dataset_json, make_plans, trainer_folders

from nnunet_transfer.campaigns.spec import load_campaign
from nnunet_transfer.campaigns.statistics import bootstrap_ci, compare, label_efficiency, wilcoxon_p
from nnunet_transfer.errors import CampaignError
from nnunet_transfer.nnunet.splits import SIDECAR, SubsetRequest, draw_subset, ensure_subsets, plan_subsets

ARMS = [{"name": "scratch", "trainer": "nnUNetTrainer", "pretrained": None},
        {"name": "default", "trainer": "nnUNetTrainerAdaptiveFT", "recipe": "quick"},
        {"name": "full_ft", "trainer": "nnUNetTrainerAdaptiveFT", "recipe": "full_ft"}]


@pytest.fixture
def roots(tmp_path, monkeypatch) -> dict[str, str]:
    return make_roots(tmp_path, monkeypatch, num_cases=10)


def study(**changes) -> dict:
    data = campaign_dict(arms=ARMS, fractions=[0.25, 1.0], targets=[{"dataset": 911}])
    del data["baseline"]
    data.update(changes)
    return data


def load(tmp_path: Path, **changes):
    return load_campaign(write_campaign(tmp_path / "c.yaml", study(**changes)))


# --- campaign files -------------------------------------------------------------------------------------------------
def test_arms_and_fractions_make_one_fold_per_arm_point_and_base_fold(tmp_path, roots):
    c = load(tmp_path)
    assert [a.name for a in c.arms] == ["scratch", "default", "full_ft"] and c.reference == "scratch"
    trains = c.train_tasks
    assert len(trains) == 3 * 2 * 2
    by_id = {t.id: t for t in trains}
    # nnU-Net's default splits of 10 cases: 8 training cases per fold, 0.25 -> 2; folds 5 and 6 appended
    t = by_id[f"{ALPHA}/3d_fullres/full_ft/fold_1@0.25"]
    assert (t.fold, t.point.base_fold, t.point.n_train, t.plans, t.pretrained) == (
        6, 1, 2, "nnUNetPlans_full_ft", tmp_path / "pretrained.pth")
    assert t.fold_dir == Path(roots["nnUNet_results"]) / ALPHA / "nnUNetTrainerAdaptiveFT__nnUNetPlans_full_ft__3d_fullres" / "fold_6"
    scratch = by_id[f"{ALPHA}/3d_fullres/scratch/fold_0"]
    assert (scratch.fold, scratch.plans, scratch.pretrained, scratch.recipe) == (0, "nnUNetPlans", None, None)
    prepare = c.prepare_tasks[0]
    assert [(r.base_fold, r.n_train, planned) for r, planned in prepare.subsets] == [(0, 2, 5), (1, 2, 6)]
    assert [p for p, _ in prepare.arm_plans] == ["nnUNetPlans_default", "nnUNetPlans_full_ft"]
    assert json.loads(dict(prepare.arm_plans)["nnUNetPlans_full_ft"])["name"] == "full_ft"
    assert not (Path(roots["nnUNet_preprocessed"]) / ALPHA).exists()  # loading created nothing


def test_today_files_keep_their_two_arms(tmp_path, roots):
    c = load_campaign(write_campaign(tmp_path / "c.yaml", campaign_dict(recipe="quick")))
    assert [(a.name, a.plans_suffix, a.recipe_env) for a in c.arms] == [
        ("finetune", None, "quick"), ("baseline", None, None)]
    assert c.train_tasks[0].id == f"{ALPHA}/3d_fullres/finetune/fold_0" and c.train_tasks[0].plans == "nnUNetPlans"


@pytest.mark.parametrize("changes, fragments", [
    ({"fractions": [0, 1.0]}, ["fractions[0]", "greater than 0"]),
    ({"fractions": [1.5]}, ["fractions[0]", "less than or equal to 1"]),
    ({"fractions": [0.01]}, ["fractions[0]", "is no case"]),
    ({"fractions": None, "train_cases": [9]}, ["train_cases[0]", "only 8 training cases"]),
    ({"arms": [*ARMS, {"name": "default", "trainer": "nnUNetTrainer_x"}]}, ["arms[3].name", "used twice"]),
    ({"arms": [*ARMS[:2], {"name": "broken", "recipe": "no_such_recipe"}]}, ["arms[2].recipe", "no_such_recipe"]),
    ({"arms": [ARMS[0], {"name": "a", "recipe": "quick"}, {"name": "b", "trainer": "nnUNetTrainer"}]},
     ["arms[2]", "results folder of arms[0]"]),
    ({"arms": [{"name": "s", "trainer": "nnUNetTrainerAdaptiveFT", "pretrained": None}]},
     ["arms[0].trainer", "from scratch"]),
    ({"reference": "nope"}, ["reference", "no such arm"]),
    ({"recipe": "quick"}, ["recipe", "move it into arms"]),
])
def test_bad_study_files_name_the_field(tmp_path, roots, changes, fragments):
    with pytest.raises(CampaignError) as e:
        load(tmp_path, **changes)
    for f in fragments:
        assert f in str(e.value)


@pytest.mark.parametrize("changes, fragments", [
    ({"fractions": [0.05]}, ["fractions[0]", "is no case"]),
    ({"fractions": [0]}, ["fractions[0]", "greater than 0"]),
    ({"fractions": [1.2]}, ["fractions[0]", "less than or equal to 1"]),
    ({"arms": [*ARMS, ARMS[0]]}, ["arms[3].name", "used twice"]),
    ({"arms": [ARMS[0], {"name": "bad", "recipe": "missing.yaml"}]}, ["arms[1].recipe", "missing.yaml"]),
])
def test_cli_bad_study_exits_2_creates_nothing_and_leaves_the_splits(tmp_path, roots, changes, fragments):
    folder = Path(roots["nnUNet_preprocessed"]) / ALPHA
    folder.mkdir()
    splits = folder / "splits_final.json"
    splits.write_text(json.dumps([{"train": [f"alpha_{i:03d}" for i in range(1, 10)], "val": ["alpha_000"]}]))
    path = write_campaign(tmp_path / "c.yaml", study(folds=[0], **changes))
    before = tree_snapshot(tmp_path)
    for action in ("run", "status"):
        proc = cli("campaign", action, path, env={**roots, "PATH": "/usr/bin"})
        assert_clean_error(proc, 2, *fragments)
        assert len(proc.stderr.strip().splitlines()) == 1
    assert tree_snapshot(tmp_path) == before


def test_shipped_study_follows_the_schema():
    from importlib import resources

    import yaml

    from nnunet_transfer.campaigns.spec import CampaignSpec

    text = (resources.files("nnunet_transfer") / "configs" / "campaigns" / "study.yaml").read_text()
    spec = CampaignSpec.model_validate(yaml.safe_load(text))
    assert [(a.name, a.trainer, a.recipe) for a in spec.arms] == [
        ("scratch", "nnUNetTrainer", None), ("default", "nnUNetTrainerAdaptiveFT", None),
        ("full_ft", "nnUNetTrainerAdaptiveFT", "full_ft")]
    assert spec.arms[0].pretrained == "none" and "pretrained" not in spec.arms[1].model_fields_set
    assert spec.fractions == (0.1, 0.25, 0.5, 1.0) and spec.folds == (0, 1, 2, 3, 4) and spec.reference == "scratch"


# --- the splits -----------------------------------------------------------------------------------------------------
def _splits(folder: Path, n: int = 12) -> bytes:
    ids = [f"c{i:02d}" for i in range(n)]
    text = json.dumps([{"train": ids[3:], "val": ids[:3]}, {"train": ids[:9], "val": ids[9:]}], indent=4)
    (folder / "splits_final.json").write_text(text)
    return text.encode()


def test_subsets_nested_appended_after_byte_identical_folds_and_reused(tmp_path):
    before = _splits(tmp_path)
    requests = [SubsetRequest(0, n, n / 9, 3) for n in (2, 5)] + [SubsetRequest(1, 4, 0.5, 3)]
    assert plan_subsets(tmp_path, requests, []) == {(0, 2, 3): 2, (0, 5, 3): 3, (1, 4, 3): 4}
    made = ensure_subsets(tmp_path, requests, [])
    after = (tmp_path / "splits_final.json").read_bytes()
    assert after.startswith(before.rstrip()[:-1].rstrip())  # the existing folds' bytes, then the new ones
    splits = json.loads(after)
    assert len(splits) == 5 and splits[:2] == json.loads(before)
    small, large = made[(0, 2, 3)], made[(0, 5, 3)]
    assert set(small.train) < set(large.train) < set(splits[0]["train"])  # nested
    assert splits[small.fold]["val"] == splits[large.fold]["val"] == splits[0]["val"]  # validation unchanged
    assert splits[made[(1, 4, 3)].fold]["val"] == splits[1]["val"]
    sidecar = json.loads((tmp_path / SIDECAR).read_text())["subsets"]
    assert [(s["fold"], s["base_fold"], s["train_cases"], s["seed"]) for s in sidecar] == [
        (2, 0, 2, 3), (3, 0, 5, 3), (4, 1, 4, 3)]
    # again, and with the requests in another order: nothing appended, same folds
    assert ensure_subsets(tmp_path, requests[::-1], []) == made
    assert (tmp_path / "splits_final.json").read_bytes() == after
    assert plan_subsets(tmp_path, [*requests, SubsetRequest(1, 2, 0.25, 3)], [])[(1, 2, 3)] == 5


def test_two_writers_at_once_append_each_subset_once(tmp_path):
    _splits(tmp_path, 30)
    reqs = [[SubsetRequest(0, n, 0.1, s) for n in (3, 6, 9) for s in (0, 1)] for _ in range(4)]
    results = []
    threads = [threading.Thread(target=lambda r=r: results.append(ensure_subsets(tmp_path, r, []))) for r in reqs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    splits = json.loads((tmp_path / "splits_final.json").read_text())
    assert len(splits) == 2 + 6 and all(r == results[0] for r in results)


def test_draw_is_seeded_and_nested():
    cases = [f"x{i}" for i in range(20)]
    assert draw_subset(cases, 5, 0, 1) == draw_subset(cases[::-1], 5, 0, 1)
    assert set(draw_subset(cases, 5, 0, 1)) < set(draw_subset(cases, 10, 0, 1))
    assert draw_subset(cases, 5, 0, 1) != draw_subset(cases, 5, 1, 1)


def test_a_fraction_that_drops_a_label_is_refused_from_the_preprocessed_cases(tmp_path, roots):
    c = load(tmp_path, fractions=[0.25, 1.0], folds=[0])
    folder = Path(roots["nnUNet_preprocessed"]) / ALPHA
    plans = make_plans(ALPHA)
    (folder / plans["configurations"]["3d_fullres"]["data_identifier"]).mkdir(parents=True)
    (folder / "nnUNetPlans.json").write_text(json.dumps(plans))
    from nnunet_transfer.nnunet.datasets import default_splits

    base = default_splits([f"alpha_{i:03d}" for i in range(10)])[0]["train"]
    subset = draw_subset(base, 2, 0, 0)
    rare = next(x for x in base if x not in subset)  # label 2 only in a case the 25% subset leaves out
    for case in base:
        locs = {1: np.zeros((3, 4)), 2: np.zeros((2, 4)) if case == rare else []}
        with open(folder / plans["configurations"]["3d_fullres"]["data_identifier"] / f"{case}.pkl", "wb") as f:
            pickle.dump({"class_locations": locs}, f)
    assert c.train_tasks  # loaded before the preprocessed data existed: the prepare step checks it then
    with pytest.raises(CampaignError, match=r"fractions\[0\]: 0.25 of fold 0 .* has no case with label\(s\) 2"):
        load(tmp_path, fractions=[0.25, 1.0], folds=[0])
    assert not (folder / "splits_final.json").exists()


# --- the trainer's recipe -------------------------------------------------------------------------------------------
def test_recipe_precedence_env_over_plans_over_class(tmp_path, monkeypatch):
    import torch

    from nnunet_transfer.core.schedules.recipes import RECIPE_ENV_VAR, RECIPE_PLANS_KEY, load_recipe
    from nnunet_transfer.trainers.adaptive_ft import nnUNetTrainerAdaptiveFT

    def recipe_of(in_plans) -> tuple[str, str]:
        plans = make_plans()
        if in_plans is not None:
            plans[RECIPE_PLANS_KEY] = in_plans
        for k, v in trainer_folders(tmp_path, plans).items():
            monkeypatch.setenv(k, v)
        trainer = nnUNetTrainerAdaptiveFT(plans, "3d_fullres", 0, make_dataset_json(), torch.device("cpu"))
        return trainer.ft_recipe.name, str(trainer.ft_recipe.source)

    monkeypatch.delenv(RECIPE_ENV_VAR, raising=False)
    assert recipe_of(None)[0] == "default"  # the class attribute
    full = load_recipe("full_ft").model_dump(mode="json", exclude={"source"})
    name, source = recipe_of(full)
    assert name == "full_ft" and "nnUNetPlans plans, nnunet_transfer_recipe" in source  # the plans
    assert recipe_of("quick")[0] == "quick"  # a name in the plans
    monkeypatch.setenv(RECIPE_ENV_VAR, "decoder_only")
    assert recipe_of(full)[0] == "decoder_only"  # the environment variable first


# --- statistics -----------------------------------------------------------------------------------------------------
def test_paired_statistics_on_hand_made_cases():
    from scipy.stats import wilcoxon

    arm = {(0, "a"): 0.9, (0, "b"): 0.8, (1, "c"): 0.7, (1, "d"): 0.6, (1, "e"): math.nan, (1, "f"): 0.5}
    ref = {(0, "a"): 0.8, (0, "b"): 0.8, (1, "c"): 0.5, (1, "d"): 0.7, (1, "e"): 0.4, (1, "g"): 0.1}
    c = compare(arm, ref, {0: 0.85, 1: 0.6}, {0: 0.8, 1: 0.6})
    # pairs: a, b (tie), c, d; e has NaN, f and g are in one arm only
    diffs = [0.9 - 0.8, 0.0, 0.7 - 0.5, 0.6 - 0.7]
    assert c.n_cases == 4 and c.cases_won == 2 and (c.folds_won, c.n_folds) == (1, 2)
    assert c.mean_diff == pytest.approx(sum(diffs) / 4)
    assert c.p_value == pytest.approx(wilcoxon(diffs, zero_method="wilcox").pvalue)
    assert c.ci_low <= c.mean_diff <= c.ci_high and (c.ci_low, c.ci_high) == bootstrap_ci(diffs, 0)
    rng = np.random.default_rng(0)
    d = np.asarray(diffs)
    means = d[rng.integers(0, 4, size=(10000, 4))].mean(axis=1)
    assert (c.ci_low, c.ci_high) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])))


def test_statistics_edge_cases():
    assert math.isnan(wilcoxon_p([0.0, 0.0]))  # all ties: nothing to rank
    assert compare({(0, "a"): math.nan}, {(0, "a"): 0.5}, {}, {}) is None  # NaN only
    one = compare({(0, "a"): 0.6, (0, "b"): 0.7}, {(0, "a"): 0.5, (0, "b"): 0.5}, {0: 0.65}, {0: 0.5})  # one fold
    assert (one.folds_won, one.n_folds, one.n_cases, one.cases_won) == (1, 1, 2, 2)
    assert label_efficiency([("0.1", 0.5), ("0.5", 0.81), ("1", 0.9)], 0.8) == "0.5"
    assert label_efficiency([("0.1", math.nan), ("1", 0.7)], 0.8) is None
    assert label_efficiency([("1", 0.7)], math.nan) is None


def _summary(fold_dir: Path, cases: dict[str, tuple[float, float]]) -> None:
    """A validation/summary.json as nnU-Net writes it (labels 1 and 2; NaN where nnU-Net writes NaN)."""
    per_case = [{"reference_file": f"/gt/{c}.nii.gz", "prediction_file": f"/pred/{c}.nii.gz",
                 "metrics": {"1": {"Dice": d1}, "2": {"Dice": d2}}} for c, (d1, d2) in cases.items()]
    m1 = float(np.nanmean([v[0] for v in cases.values()]))
    m2 = float(np.nanmean([v[1] for v in cases.values()]))
    (fold_dir / "validation").mkdir(parents=True)
    (fold_dir / "validation" / "summary.json").write_text(json.dumps({
        "foreground_mean": {"Dice": (m1 + m2) / 2}, "mean": {"1": {"Dice": m1}, "2": {"Dice": m2}},
        "metric_per_case": per_case}))
    (fold_dir.parent / "dataset.json").write_text(json.dumps(
        {"labels": {"background": 0, "organ": 1, "lesion": 2}, "file_ending": ".nii.gz"}))


def test_study_report_from_hand_made_summaries(tmp_path):
    import csv
    from dataclasses import dataclass as dc

    from nnunet_transfer.campaigns.report import StudyOptions, write_report
    from nnunet_transfer.campaigns.tasks import FoldPoint

    @dc
    class T:
        dataset: str
        configuration: str
        arm: str
        fold: int
        fold_dir: Path
        point: FoldPoint

    tasks = []
    numbers = {  # arm, base fold -> case -> (organ, lesion); a case missing in one arm, a NaN, a single fold at 0.5
        ("scratch", 0): {"a": (0.5, 0.4), "b": (0.6, math.nan), "c": (0.7, 0.2)},
        ("ft", 0): {"a": (0.8, 0.5), "b": (0.6, 0.3)},
    }
    for (arm, base), cases in numbers.items():
        for point in (FoldPoint(base, base, 1.0, 8, "1"), FoldPoint(base, 5, 0.5, 4, "0.5")):
            fold_dir = tmp_path / "results" / arm / f"fold_{point.fold}"
            _summary(fold_dir, cases)
            tasks.append(T("Dataset1_X", "3d_fullres", arm, point.fold, fold_dir, point))
    result = write_report(tasks, tmp_path / "report", StudyOptions("scratch", seed=0))
    names = {p.name for p in result.files}
    assert {"cases.csv", "comparisons.csv", "learning_curve.png", "report.md", "report.csv"} <= names
    rows = list(csv.DictReader((tmp_path / "report" / "cases.csv").read_text().splitlines()))
    assert len(rows) == 2 * 2 * (3 + 2)
    assert {r["dice"] for r in rows if r["case"] == "b" and r["arm"] == "scratch" and r["label"] == "lesion"} == {"NaN"}
    comp = {(r["point"], r["label"]): r for r in csv.DictReader((tmp_path / "report" / "comparisons.csv").read_text().splitlines())}
    organ = comp[("1", "organ")]  # pairs a, b (c only in scratch): differences 0.3, 0.0
    assert (int(organ["n_cases"]), int(organ["cases_won"]), int(organ["folds_won"]), int(organ["n_folds"])) == (2, 1, 1, 1)
    assert float(organ["mean_diff"]) == pytest.approx(0.15)
    lesion = comp[("0.5", "lesion")]  # b is NaN in scratch: one pair (a)
    assert int(lesion["n_cases"]) == 1 and float(lesion["mean_diff"]) == pytest.approx(0.1)
    md = (tmp_path / "report" / "report.md").read_text()
    assert "ft @ 0.5" in md and "Label efficiency" in md and "| ft | 0.5 (4 cases) |" in md


def test_test_true_adds_one_test_task_per_arm_and_point_after_its_folds(tmp_path, roots):
    with pytest.raises(CampaignError, match=r"test: Dataset911_Alpha \(targets\[0\]\) has no imagesTs and no labelsTs"):
        load(tmp_path, test=True)
    raw = Path(roots["nnUNet_raw"]) / ALPHA
    (raw / "imagesTs").mkdir()
    (raw / "labelsTs").mkdir()
    from nnunet_transfer.campaigns.tasks import TestTask

    c = load(tmp_path, test=True)
    tests = c.graph.of_type(TestTask)
    assert [x.id for x in tests] == [f"{ALPHA}/3d_fullres/{a}/test@{p}" for p in ("0.25", "1")
                                     for a in ("scratch", "default", "full_ft")]
    t = c.task(f"{ALPHA}/3d_fullres/full_ft/test@0.25")
    assert t.folds == (5, 6) and t.needs == (f"{ALPHA}/3d_fullres/full_ft/fold_0@0.25",
                                             f"{ALPHA}/3d_fullres/full_ft/fold_1@0.25")
    assert t.out == c.task(t.needs[0]).fold_dir.parent / "test_folds_5_6"
    cmd = t.predict_command({}, "cpu")
    assert cmd[1:] == ["-i", str(raw / "imagesTs"), "-o", str(t.out), "-d", "911", "-c", "3d_fullres", "-tr",
                       "nnUNetTrainerAdaptiveFT", "-p", "nnUNetPlans_full_ft", "-f", "5", "6", "-device", "cpu"]
    assert t.evaluate_command({})[1:3] == [str(raw / "labelsTs"), str(t.out)]
    assert not t.done(c.graph)
