"""One task graph, built once from the campaign file, drives every executor: the local run's order (a task starts
once the tasks it needs have ended) and the SLURM jobs (each after the jobs of the tasks it needs) come from the same
graph object, in the same order."""

from __future__ import annotations

import pytest
from campaign_helpers import ALPHA, BETA, campaign_dict, finish_fold, make_roots, write_campaign

from nnunet_transfer.campaigns.local import _LocalRunner
from nnunet_transfer.campaigns.slurm import _SlurmRun, plan_jobs
from nnunet_transfer.campaigns.spec import load_campaign
from nnunet_transfer.campaigns.tasks import FindBestTask, PrepareTask, TaskGraph, TrainTask


@pytest.fixture
def roots(tmp_path, monkeypatch):
    return make_roots(tmp_path, monkeypatch)


def load(tmp_path, **changes):
    return load_campaign(write_campaign(tmp_path / "c.yaml", campaign_dict(**changes)))


def local_order(graph: TaskGraph) -> list[str]:
    """The order one local worker starts the tasks in (every task ends at once)."""
    pending, ended, order = list(graph), set(), []
    while pending:
        task = graph.ready(pending, ended)
        assert task is not None, f"nothing can start; left: {[t.id for t in pending]}"
        pending.remove(task)
        ended.add(task.id)
        order.append(task.id)
    return order


@pytest.mark.parametrize("executor", [{"kind": "local"}, {"kind": "slurm", "timeout_min": 60}])
def test_one_graph_drives_the_local_and_the_slurm_executor(tmp_path, roots, executor):
    c = load(tmp_path, find_best={"arms": ["finetune", "baseline"]}, executor=executor)
    graph = c.graph
    ids = [t.id for t in graph]
    # the graph: per target its prepare, its folds (configuration, fold, arm), its find-best after them
    assert ids == [f"{ALPHA}/nnUNetPlans/prepare",
                   *(f"{ALPHA}/3d_fullres/{arm}/fold_{f}" for f in (0, 1) for arm in ("finetune", "baseline")),
                   f"{ALPHA}/nnUNetPlans/find_best",
                   f"{BETA}/nnUNetPlans/prepare",
                   *(f"{BETA}/3d_fullres/{arm}/fold_0" for arm in ("finetune", "baseline")),
                   f"{BETA}/nnUNetPlans/find_best"]
    for t in graph.of_type(TrainTask):
        assert [n.id for n in graph.needs(t)] == [t.prepare_id]
    best = graph.of_type(FindBestTask)[0]
    assert [n.id for n in graph.needs(best)] == ids[1:5]
    assert graph.dependents(graph.of_type(PrepareTask)[0]) == graph.of_type(TrainTask)[:4]
    assert graph.counts() == "2 prepare, 6 train, 2 find-best"

    # the local executor walks the campaign's own graph, in its order
    runner = _LocalRunner(c, lambda line: None)
    assert runner.graph is graph and [t.id for t in runner.pending] == ids
    assert local_order(graph) == ids
    # SLURM submits the same graph in the same order, each job after the jobs of what its tasks need
    if executor["kind"] == "slurm":
        assert _SlurmRun(c, lambda line: None).graph is graph
    batches = plan_jobs(graph)
    assert [t.id for b in batches for t in b.tasks] == ids
    for b in batches:
        assert set(b.after) == {n for t in b.tasks for n in t.needs}
    assert [(b.tasks[0].kind, len(b.tasks)) for b in batches] == [
        ("prepare", 1), ("train", 4), ("find_best", 1), ("prepare", 1), ("train", 2), ("find_best", 1)]


def test_what_is_done_or_queued_is_not_submitted_again(tmp_path, roots):
    c = load(tmp_path, find_best={}, baseline=None)
    graph = c.graph
    alpha_folds = [t for t in graph.of_type(TrainTask) if t.dataset == ALPHA]
    beta_fold = next(t for t in graph.of_type(TrainTask) if t.dataset == BETA)
    finish_fold(alpha_folds[0].fold_dir)
    finish_fold(beta_fold.fold_dir)
    batches = plan_jobs(graph)
    # Alpha: its prepare and its one fold left, its find-best after that fold only; Beta: every fold done, so no
    # prepare, and its find-best alone (nothing to wait for)
    assert [([t.id for t in b.tasks], b.after) for b in batches] == [
        ([f"{ALPHA}/nnUNetPlans/prepare"], ()),
        ([alpha_folds[1].id], (f"{ALPHA}/nnUNetPlans/prepare",)),
        ([f"{ALPHA}/nnUNetPlans/find_best"], (alpha_folds[1].id,)),
        ([f"{BETA}/nnUNetPlans/find_best"], ()),
    ]
    # Alpha's fold queued by an earlier run: no prepare for it (it served that job), the find-best waits for the job
    batches = plan_jobs(graph, queued={alpha_folds[1].id})
    assert [([t.id for t in b.tasks], b.after) for b in batches] == [
        ([f"{ALPHA}/nnUNetPlans/find_best"], (alpha_folds[1].id,)),
        ([f"{BETA}/nnUNetPlans/find_best"], ()),
    ]
    # the local executor takes the same graph: what is done is skipped by the task itself when it runs
    assert local_order(graph) == [t.id for t in graph]


def test_a_graph_refuses_a_task_before_what_it_needs(tmp_path, roots):
    c = load(tmp_path)
    tasks = list(c.graph)
    with pytest.raises(ValueError, match=r"needs '.*prepare', which does not come before it"):
        TaskGraph([tasks[1], tasks[0]])
    with pytest.raises(ValueError, match="is in the graph twice"):
        TaskGraph([tasks[0], tasks[0]])
