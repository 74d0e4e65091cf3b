"""The campaign's optional find-best step: validated like the other fields, one task per target after its folds,
``--npz`` on the folds it ensembles, the stock ``nnUNetv2_find_best_configuration`` command, its state."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from campaign_helpers import ALPHA, BETA, campaign_dict, finish_fold, make_roots, write_campaign

from nnunet_transfer.campaigns.execute import describe_task
from nnunet_transfer.campaigns.spec import load_campaign
from nnunet_transfer.campaigns.state import train_state
from nnunet_transfer.errors import CampaignError


@pytest.fixture
def roots(tmp_path, monkeypatch) -> dict[str, str]:
    return make_roots(tmp_path, monkeypatch)


def load(tmp_path: Path, **changes):
    return load_campaign(write_campaign(tmp_path / "c.yaml", campaign_dict(**changes)))


def test_find_best_expands_one_task_per_target_after_its_folds(tmp_path, roots):
    c = load(tmp_path, configurations=["2d", "3d_fullres"], find_best={})
    assert [f.id for f in c.find_best_tasks] == [f"{ALPHA}/nnUNetPlans/find_best", f"{BETA}/nnUNetPlans/find_best"]
    alpha = c.find_best_tasks[0]
    assert alpha.trainers == ("nnUNetTrainerAdaptiveFT",) and alpha.ensembling
    assert alpha.train_ids == tuple(t.id for t in c.train_tasks if t.dataset == ALPHA and t.arm == "finetune")
    assert len(alpha.train_ids) == 4 and alpha.folds == (0, 1) and alpha.configurations == ("2d", "3d_fullres")
    assert alpha.result == Path(roots["nnUNet_results"]) / ALPHA / "inference_information.json"
    ids = [t.id for t in c.tasks]  # run order: prepare, folds, find-best, per target
    assert ids.index(alpha.id) == ids.index(c.prepare_tasks[1].id) - 1
    assert c.task(alpha.id) is alpha
    assert alpha.command({"nnUNet_def_n_proc": "2"})[1:] == [
        "911", "-c", "2d", "3d_fullres", "-tr", "nnUNetTrainerAdaptiveFT", "-p", "nnUNetPlans", "-f", "0", "1",
        "-np", "2"]
    # the fine-tune folds are trained with --npz (their validation probabilities are ensembled), the baseline not
    ft, base = (next(t for t in c.train_tasks if t.dataset == ALPHA and t.arm == a) for a in ("finetune", "baseline"))
    assert "--npz" in ft.command(train_state(ft), "cpu")
    assert "--npz" not in base.command(train_state(base), "cpu")


def test_find_best_over_both_arms_and_without_ensembling(tmp_path, roots):
    c = load(tmp_path, find_best={"arms": ["finetune", "baseline"]})
    assert c.find_best_tasks[0].trainers == ("nnUNetTrainerAdaptiveFT", "nnUNetTrainer")
    assert len(c.find_best_tasks[0].train_ids) == 4 and c.find_best_tasks[0].ensembling
    c = load(tmp_path, find_best={"ensembling": False})
    assert c.find_best_tasks[0].command({})[-1] == "--disable_ensembling"
    assert not any("--npz" in t.command(train_state(t), "cpu") for t in c.train_tasks)
    # one configuration and one arm: nothing to ensemble, so no --npz either
    c = load(tmp_path, baseline=None, find_best={})
    assert not c.find_best_tasks[0].ensembling
    assert not any("--npz" in t.command(train_state(t), "cpu") for t in c.train_tasks)
    assert load(tmp_path).find_best_tasks == []  # the step is optional


@pytest.mark.parametrize(("changes", "fragment"), [
    ({"find_best": {"ensemble": True}}, "find_best.ensemble: unknown key"),
    ({"find_best": {"ensembling": "maybe"}}, "find_best.ensembling: Input should be a valid boolean"),
    ({"find_best": {"arms": []}}, "find_best.arms: List should have at least 1 item"),
    ({"find_best": {"arms": ["finetune", "finetune"]}}, "find_best.arms: an arm is listed twice"),
    ({"find_best": {"arms": ["baseline"]}, "baseline": None}, "find_best.arms: baseline: the campaign has no such arm"),
])
def test_invalid_find_best_names_file_and_field(tmp_path, roots, changes, fragment):
    with pytest.raises(CampaignError) as e:
        load(tmp_path, **changes)
    assert str(e.value).startswith(f"{tmp_path / 'c.yaml'}: ") and fragment in str(e.value)


def test_find_best_state_follows_the_folds_and_nnunets_file(tmp_path, roots):
    c = load(tmp_path, baseline=None, targets=[{"dataset": 911}], find_best={})
    task = c.find_best_tasks[0]
    view = describe_task(c, task)
    assert (view.state, view.detail) == ("waiting", "for 2 fold(s) to finish")
    assert view.commands and "nnUNetv2_find_best_configuration 911" in view.commands[0]
    for t in c.train_tasks:
        finish_fold(t.fold_dir)
    assert describe_task(c, task).state == "to run" and not task.done(c.graph)
    task.result.write_text(json.dumps({"best_model_or_ensemble": {}}))
    assert task.done(c.graph) and describe_task(c, task).state == "done"
    later = time.time() + 10  # a fold trained again after find-best ran: it is to run again
    os.utime(c.train_tasks[0].fold_dir / "checkpoint_final.pth", (later, later))
    assert not task.done(c.graph)
