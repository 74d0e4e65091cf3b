"""Executors behind one interface: a new one is one module and one ``register_executor`` call, here from this test
file (no edit of the package). Its schema validates the ``executor:`` section; unknown kinds list the known ones."""

from __future__ import annotations

from typing import Literal

import pytest
from campaign_helpers import campaign_dict, finish_fold, make_roots, write_campaign

from nnunet_transfer.campaigns import (
    Campaign,
    ExecutorSpec,
    TaskExecution,
    executor_kinds,
    load_campaign,
    register_executor,
    run_campaign,
)
from nnunet_transfer.campaigns.execute import run_summary
from nnunet_transfer.errors import CampaignError


class RecordSpec(ExecutorSpec):
    """``executor: {kind: record, note: ...}``."""

    kind: Literal["record"]
    note: str = ""


ASKED: list[tuple[str, str, list[str]]] = []  # (note, campaign name, task ids in the order it was asked to run)


def run_recording(campaign: Campaign, echo) -> int:
    """A trivial executor: records what it is asked to run and runs only what is done already (skips), through the
    same TaskExecution every executor uses."""
    assert isinstance(campaign.spec.executor, RecordSpec)
    ASKED.append((campaign.spec.executor.note, campaign.name, [t.id for t in campaign.graph]))
    counts: dict[str, int] = {}
    for task in campaign.graph:
        if task.done(campaign.graph):
            status = TaskExecution(campaign, task.id).run().status
            counts[status] = counts.get(status, 0) + 1
    not_run = len(campaign.graph) - sum(counts.values())
    return run_summary(campaign, counts, len(campaign.graph), 0.0, echo, not_run=not_run, where=" (recorded)")


@pytest.fixture(autouse=True)
def registered():
    register_executor("record", RecordSpec, run_recording)
    ASKED.clear()
    yield


@pytest.fixture
def roots(tmp_path, monkeypatch):
    return make_roots(tmp_path, monkeypatch)


def test_a_registered_executor_runs_a_campaign(tmp_path, roots, capsys):
    from nnunet_transfer.cli import main

    path = write_campaign(tmp_path / "c.yaml", campaign_dict(executor={"kind": "record", "note": "hi"}))
    campaign = load_campaign(path)
    assert isinstance(campaign.spec.executor, RecordSpec) and campaign.spec.executor.note == "hi"
    assert "record" in executor_kinds() and executor_kinds()[:2] == ["local", "slurm"]
    for t in campaign.train_tasks:
        finish_fold(t.fold_dir)
    lines: list[str] = []
    assert run_campaign(campaign, echo=lines.append) == 0  # everything done: the recorder skipped every task
    assert [("hi", "unit", [t.id for t in campaign.graph])] == ASKED
    assert lines[-1] == "campaign unit: 8 tasks in 0:00 (recorded): 8 done (8 already)"
    # through the command line too; and the dry run and status are the executor's business no more than before
    assert main(["campaign", "run", str(path)]) == 0
    assert len(ASKED) == 2
    assert main(["campaign", "run", "--dry-run", str(path)]) == 0
    assert len(ASKED) == 2 and "executor record" in capsys.readouterr().out


def test_a_registered_executor_not_done_exits_75(tmp_path, roots):
    campaign = load_campaign(write_campaign(tmp_path / "c.yaml", campaign_dict(executor={"kind": "record"})))
    lines: list[str] = []
    assert run_campaign(campaign, echo=lines.append) == 75  # nothing done: every task left to another run
    assert "8 not started" in lines[-2]


@pytest.mark.parametrize(("executor", "fragment"), [
    ({"kind": "record", "nots": "x"}, "executor.nots: unknown key"),
    ({"kind": "record", "note": 3}, "executor.note: Input should be a valid string"),
    ({"kind": "recorder"}, "executor: unknown kind 'recorder' (the executors: 'local', 'slurm', "),
    ({"kind": "recorder"}, "'record'"),
])
def test_its_schema_checks_its_section(tmp_path, roots, executor, fragment):
    path = write_campaign(tmp_path / "c.yaml", campaign_dict(executor=executor))
    with pytest.raises(CampaignError) as e:
        load_campaign(path)
    assert str(e.value).startswith(f"{path}: ") and fragment in str(e.value), str(e.value)


def test_a_schema_must_be_an_executor_spec():
    from pydantic import BaseModel

    class Loose(BaseModel):
        kind: str

    with pytest.raises(TypeError, match="spec must be a subclass of ExecutorSpec"):
        register_executor("loose", Loose, run_recording)  # type: ignore[arg-type]


def test_an_executor_from_an_entry_point(tmp_path, roots, monkeypatch):
    """A package that declares ``[project.entry-points."nnunet_transfer.executors"] mine = "its_module"`` is found
    when a campaign names ``kind: mine``: its module registers the executor on import."""
    site = tmp_path / "site"
    (site / "mine_executor-0.1.dist-info").mkdir(parents=True)
    (site / "mine_executor-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: mine-executor\n"
                                                                  "Version: 0.1\n")
    (site / "mine_executor-0.1.dist-info" / "entry_points.txt").write_text(
        "[nnunet_transfer.executors]\nmine = mine_executor\n")
    (site / "mine_executor.py").write_text(
        "from typing import Literal\n"
        "from nnunet_transfer.campaigns import ExecutorSpec, register_executor\n"
        "class MineSpec(ExecutorSpec):\n"
        "    kind: Literal['mine']\n"
        "    queue: str\n"
        "register_executor('mine', MineSpec, lambda campaign, echo: echo(f'mine: {len(campaign.graph)} tasks') or 0)\n")
    monkeypatch.syspath_prepend(str(site))
    assert "mine" in executor_kinds()
    path = write_campaign(tmp_path / "c.yaml", campaign_dict(executor={"kind": "mine"}))
    with pytest.raises(CampaignError, match=r"executor\.queue: Field required"):
        load_campaign(path)
    campaign = load_campaign(write_campaign(path, campaign_dict(executor={"kind": "mine", "queue": "q"})))
    lines: list[str] = []
    assert run_campaign(campaign, echo=lines.append) == 0 and lines == ["mine: 8 tasks"]
