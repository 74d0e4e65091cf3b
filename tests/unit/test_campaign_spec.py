"""Campaign files: validated on load (each error names the file and the field), tasks expanded from them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from campaign_helpers import ALPHA, BETA, campaign_dict, make_roots, tree_snapshot, write_campaign
from helpers import assert_clean_error, cli

from nnunet_transfer.campaigns.spec import load_campaign
from nnunet_transfer.errors import CampaignError, TransferError


@pytest.fixture
def roots(tmp_path, monkeypatch) -> dict[str, str]:
    return make_roots(tmp_path, monkeypatch)


def load(tmp_path: Path, **changes):
    return load_campaign(write_campaign(tmp_path / "c.yaml", campaign_dict(**changes)))


def test_tasks_expand_targets_overrides_arms_and_folds(tmp_path, roots):
    c = load(tmp_path)
    assert c.workdir == tmp_path / "unit.campaign"
    assert c.pretrained == tmp_path / "pretrained.pth"
    assert [p.id for p in c.prepare_tasks] == [f"{ALPHA}/nnUNetPlans/prepare", f"{BETA}/nnUNetPlans/prepare"]
    assert [t.id for t in c.train_tasks] == [
        f"{ALPHA}/3d_fullres/finetune/fold_0", f"{ALPHA}/3d_fullres/baseline/fold_0",
        f"{ALPHA}/3d_fullres/finetune/fold_1", f"{ALPHA}/3d_fullres/baseline/fold_1",
        f"{BETA}/3d_fullres/finetune/fold_0", f"{BETA}/3d_fullres/baseline/fold_0",  # folds: [0] on this target
    ]
    ft = c.task(f"{ALPHA}/3d_fullres/finetune/fold_1")
    assert (ft.dataset, ft.dataset_id, ft.trainer, ft.plans, ft.fold, ft.arm) == (
        ALPHA, 911, "nnUNetTrainerAdaptiveFT", "nnUNetPlans", 1, "finetune")
    assert ft.fold_dir == Path(roots["nnUNet_results"]) / ALPHA / "nnUNetTrainerAdaptiveFT__nnUNetPlans__3d_fullres" / "fold_1"
    assert c.task(f"{BETA}/3d_fullres/baseline/fold_0").fold_dir.parent.name == "nnUNetTrainer__nnUNetPlans__3d_fullres"
    assert ft.prepare_id == c.prepare_tasks[0].id
    # run order: each target's prepare, then its folds
    assert [t.id for t in c.tasks][:2] == [c.prepare_tasks[0].id, c.train_tasks[0].id]
    assert c.tasks[5].id == c.prepare_tasks[1].id
    # the trainer's own recipe is checked; no NNUNET_TRANSFER_RECIPE is set for either arm
    assert c.recipes == {"finetune": None, "baseline": None}
    assert c.check_recipe == "default"


def test_per_target_configurations_plans_and_transfer_identifier(tmp_path, roots):
    c = load(tmp_path, baseline=None, targets=[
        {"dataset": ALPHA, "configurations": ["2d", "3d_fullres"], "folds": [3]},
        {"dataset": 912, "plans": "transfer"},
        {"dataset": 911, "plans": "transfer", "plans_identifier": "nnUNetPlans_mine"},
    ])
    assert [(p.id, p.mode, p.configurations) for p in c.prepare_tasks] == [
        (f"{ALPHA}/nnUNetPlans/prepare", "own", ("2d", "3d_fullres")),
        (f"{BETA}/nnUNetPlans_unit/prepare", "transfer", ("3d_fullres",)),
        (f"{ALPHA}/nnUNetPlans_mine/prepare", "transfer", ("3d_fullres",)),
    ]
    ids = [t.id for t in c.train_tasks]
    # Alpha has two plans in this campaign: its ids name the plans
    assert ids == [f"{ALPHA}/nnUNetPlans/2d/finetune/fold_3", f"{ALPHA}/nnUNetPlans/3d_fullres/finetune/fold_3",
                   f"{BETA}/3d_fullres/finetune/fold_0", f"{BETA}/3d_fullres/finetune/fold_1",
                   f"{ALPHA}/nnUNetPlans_mine/3d_fullres/finetune/fold_0",
                   f"{ALPHA}/nnUNetPlans_mine/3d_fullres/finetune/fold_1"]
    assert c.task(ids[2]).fold_dir.parent.name == "nnUNetTrainerAdaptiveFT__nnUNetPlans_unit__3d_fullres"


def test_recipes_resolve_relative_to_the_file(tmp_path, roots):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "mine.yaml").write_text("name: mine\nnum_epochs: 2\n")
    (tmp_path / "recipes" / "scratch.yaml").write_text("name: scratch\npretrained: {required: false}\n")
    c = load(tmp_path, recipe="recipes/mine.yaml",
             baseline={"trainer": "nnUNetTrainerAdaptiveFT_Full", "recipe": "recipes/scratch.yaml"})
    assert c.recipes == {"finetune": str(tmp_path / "recipes" / "mine.yaml"),
                         "baseline": str(tmp_path / "recipes" / "scratch.yaml")}
    assert c.check_recipe == str(tmp_path / "recipes" / "mine.yaml")
    assert load(tmp_path, recipe="quick").recipes["finetune"] == "quick"  # a shipped name stays a name


ERRORS = [
    # (changes to the valid campaign, fragments of the message)
    ({"nmae": "x"}, ["nmae: unknown key"]),
    ({"targets": [{"dataset": 911}, {"dataset": 912, "folds": "zero"}]}, ["targets[1].folds: Input should be a valid list"]),
    ({"targets": [{"dataset": 911, "fold": [0]}]}, ["targets[0].fold: unknown key"]),
    ({"folds": [0, -1]}, ["folds[1]:", "greater than or equal to 0"]),
    ({"folds": [0, 0]}, ["folds: a fold is listed twice"]),
    ({"folds": []}, ["folds:"]),
    ({"targets": []}, ["targets: List should have at least 1 item"]),
    ({"targets": [{"dataset": True}]}, ["targets[0].dataset: Input should be a valid string"]),
    ({"name": "a b"}, ["name:", "letters, digits"]),
    ({"plans": "theirs"}, ["plans:", "'own' or 'transfer'"]),
    ({"device": "tpu"}, ["device:"]),
    ({"executor": {"kind": "cloud"}}, ["executor: unknown kind 'cloud' (the executors: 'local', 'slurm'"]),
    ({"executor": {"gpus": [0]}}, ["executor: kind missing (the executors: 'local', 'slurm'"]),
    ({"executor": {"kind": "local", "gpus": [0, 0]}}, ["executor.gpus: a GPU is listed twice"]),
    ({"executor": {"kind": "local", "gpu": [0]}}, ["executor.gpu: unknown key"]),
    ({"baseline": {"trainer": "nnUNetTrainer", "epochs": 3}}, ["baseline.epochs: unknown key"]),
    ({"targets": [{"dataset": 911}, {"dataset": 999}]}, ["targets[1].dataset:", "'999' not found"]),
    ({"targets": [{"dataset": "Nonsense"}]}, ["targets[0].dataset:", "'Nonsense' not found"]),
    ({"targets": [{"dataset": 911}, {"dataset": ALPHA}]}, ["targets[1].dataset:", "already targets[0]"]),
    ({"pretrained": "missing/checkpoint_final.pth"}, ["pretrained:", "missing/checkpoint_final.pth", "not found"]),
    ({"configurations": ["3d_huge"]}, ["configurations: 3d_huge: not a configuration"]),
    ({"targets": [{"dataset": 911, "configurations": ["3d_huge"]}]}, ["targets[0].configurations: 3d_huge"]),
    ({"plans": "transfer", "plans_identifier": "nnUNetPlans"}, ["plans_identifier:", "own identifier"]),
    ({"trainer": "nnUNetTrainerDoesNotExist"}, ["trainer: trainer 'nnUNetTrainerDoesNotExist': not found"]),
    ({"baseline": {"trainer": "nnUNetTrainerNope"}}, ["baseline.trainer:", "'nnUNetTrainerNope': not found"]),
    ({"baseline": {"trainer": "nnUNetTrainerAdaptiveFT"}}, ["baseline.trainer:", "same results folder"]),
    ({"recipe": "no_such_recipe"}, ["recipe:", "'no_such_recipe' not found"]),
    ({"recipe": "bad.yaml"}, ["recipe:", "bad.yaml", "unknown key"]),
    ({"trainer": "nnUNetTrainer", "recipe": "quick", "baseline": None}, ["recipe: trainer nnUNetTrainer does not read"]),
    ({"baseline": {"trainer": "nnUNetTrainerAdaptiveFT_Full"}}, ["baseline.trainer:", "recipe full_ft", "from scratch"]),
]


@pytest.mark.parametrize(("changes", "fragments"), ERRORS, ids=[str(i) for i in range(len(ERRORS))])
def test_invalid_campaigns_name_file_and_field(tmp_path, roots, changes, fragments):
    (tmp_path / "bad.yaml").write_text("name: bad\nnum_epochs: 2\nsurprise: 1\n")
    with pytest.raises(CampaignError) as e:
        load(tmp_path, **changes)
    message = str(e.value)
    assert message.startswith(f"{tmp_path / 'c.yaml'}: ")
    for f in fragments:
        assert f in message
    assert "\n" not in message
    assert e.value.exit_code == 2 and isinstance(e.value, TransferError)


def test_target_without_raw_data_is_an_error(tmp_path, roots):
    (tmp_path / "preprocessed" / "Dataset913_Gone").mkdir(parents=True)
    with pytest.raises(CampaignError, match=r"targets\[1\]\.dataset: Dataset913_Gone has no raw data"):
        load(tmp_path, targets=[{"dataset": 911}, {"dataset": 913}])


def test_unset_nnunet_folders_are_an_error(tmp_path, roots, monkeypatch):
    monkeypatch.delenv("nnUNet_results")
    with pytest.raises(CampaignError, match="nnUNet_results not set"):
        load(tmp_path)


def test_configurations_are_checked_against_existing_plans(tmp_path, roots):
    plans = tmp_path / "preprocessed" / ALPHA / "nnUNetPlans.json"
    plans.parent.mkdir(parents=True)
    plans.write_text('{"configurations": {"3d_fullres": {}, "3d_custom": {}}}')
    assert load(tmp_path, configurations=["3d_custom"], targets=[{"dataset": 911}]).train_tasks
    with pytest.raises(CampaignError, match=r"configurations: 2d not in .*nnUNetPlans.json \(it has: 3d_custom, "):
        load(tmp_path, configurations=["2d"], targets=[{"dataset": 911}])


@pytest.mark.parametrize(("text", "fragment"), [
    ("name: [unclosed", "not valid YAML"),
    ("- a list", "must be a YAML mapping, found list"),
])
def test_unreadable_files(tmp_path, roots, text, fragment):
    with pytest.raises(CampaignError, match=fragment):
        load_campaign(write_campaign(tmp_path / "c.yaml", text))
    with pytest.raises(CampaignError, match="campaign file not found"):
        load_campaign(tmp_path / "none.yaml")


@pytest.mark.parametrize("action", ["run", "status", "report"])
def test_cli_bad_campaign_exits_2_and_creates_nothing(tmp_path, action):
    env = {**os.environ, **make_roots(tmp_path)}
    path = write_campaign(tmp_path / "c.yaml", campaign_dict(targets=[{"dataset": 911}, {"dataset": 912, "folds": "x"}]))
    before = tree_snapshot(tmp_path)
    proc = cli("campaign", action, path, env=env)
    assert_clean_error(proc, 2, "nnunet-transfer campaign: error:", str(path), "targets[1].folds")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert tree_snapshot(tmp_path) == before
    assert not (tmp_path / "unit.campaign").exists()


def test_cli_missing_checkpoint_run_exits_2_and_creates_nothing(tmp_path):
    env = {**os.environ, **make_roots(tmp_path)}
    (tmp_path / "pretrained.pth").unlink()
    path = write_campaign(tmp_path / "c.yaml", campaign_dict())
    before = tree_snapshot(tmp_path)
    proc = cli("campaign", "run", path, env=env)
    assert_clean_error(proc, 2, "pretrained:", str(tmp_path / "pretrained.pth"), "not found")
    assert tree_snapshot(tmp_path) == before


def test_shipped_example_follows_the_schema_and_is_not_a_recipe():
    from importlib import resources

    import yaml

    from nnunet_transfer.campaigns.spec import CampaignSpec
    from nnunet_transfer.core.schedules.recipes import available_recipes, load_recipe
    from nnunet_transfer.errors import RecipeError

    text = (resources.files("nnunet_transfer") / "configs" / "campaigns" / "example.yaml").read_text()
    spec = CampaignSpec.model_validate(yaml.safe_load(text))
    assert spec.trainer == "nnUNetTrainerAdaptiveFT" and spec.baseline.trainer == "nnUNetTrainer"
    assert [t.dataset for t in spec.targets] == ["902", "Dataset903_Brain"] and spec.targets[1].folds == (0, 1)
    # configs/ holds recipes; the campaigns/ subfolder is neither listed nor loadable as one
    assert "campaigns" not in available_recipes() and "example" not in available_recipes()
    with pytest.raises(RecipeError, match="not found"):
        load_recipe("campaigns/example")
