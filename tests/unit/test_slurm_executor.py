"""The SLURM executor section: submitit's own parameter names, checked against submitit itself."""

from __future__ import annotations

import pytest
import submitit
from pydantic import ValidationError

from nnunet_transfer.campaigns.slurm import SlurmExecutorSpec, submitit_parameters


def _error(**section) -> str:
    with pytest.raises(ValidationError) as info:
        SlurmExecutorSpec.model_validate({"kind": "slurm", **section})
    return "; ".join(e["msg"] for e in info.value.errors())


def test_submitit_names_and_values_pass():
    spec = SlurmExecutorSpec.model_validate({
        "kind": "slurm", "folder": "jobs", "timeout_min": "120", "cpus_per_task": 8, "gpus_per_node": 1,
        "mem_gb": 32, "slurm_partition": "gpu", "slurm_array_parallelism": 4, "slurm_max_num_timeout": 5,
        "slurm_additional_parameters": {"requeue": True}, "slurm_setup": ["module load cuda"]})
    assert spec.folder == "jobs"
    params = spec.parameters
    assert params["timeout_min"] == 120 and isinstance(params["timeout_min"], int)  # as AutoExecutor asserts
    assert params["slurm_partition"] == "gpu"
    assert params["slurm_additional_parameters"] == {"requeue": True}
    assert "kind" not in params and "folder" not in params


def test_a_typo_is_an_error_naming_the_key():
    message = _error(slurm_partiton="gpu", timeout_min=60)
    assert "slurm_partiton: not a parameter of submitit's SLURM executor (did you mean slurm_partition" in message
    assert "timeout_min" not in message  # the valid key is not blamed
    assert "partition: not a parameter of submitit's SLURM executor (did you mean slurm_partition?)" in _error(
        partition="gpu")
    message = _error(walltime=60)
    assert "walltime: not a parameter" in message and "timeout_min" in message and "partition" in message


def test_a_wrong_type_is_an_error_naming_the_key():
    message = _error(timeout_min="two hours")
    assert "timeout_min: Input should be a valid integer" in message
    assert "slurm_setup" in _error(slurm_setup="module load cuda")


def test_what_the_campaign_sets_itself_is_refused():
    assert "name: set by the campaign" in _error(name="mine")
    assert "tasks_per_node: must be 1" in _error(tasks_per_node=4)
    assert "slurm_ntasks_per_node: must be 1" in _error(slurm_ntasks_per_node=2)


def test_the_names_are_submitits(tmp_path):
    """Every name we accept passes submitit's own check (AutoExecutor.update_parameters), and a typo fails both."""
    names = submitit_parameters()
    assert {"timeout_min", "mem_gb", "gpus_per_node", "cpus_per_task", "nodes", "tasks_per_node",
            "slurm_partition", "slurm_array_parallelism", "slurm_additional_parameters", "slurm_qos",
            "slurm_signal_delay_s", "slurm_max_num_timeout"} <= set(names)
    ex = submitit.AutoExecutor(tmp_path, cluster="local")  # its check covers the slurm_ names too
    constructor = {"slurm_max_num_timeout", "slurm_max_pickle_size_gb", "slurm_python"}
    for name in sorted(set(names) - constructor - {"name"}):
        ex.update_parameters(**{name: None})  # None: checked by name, not set
    with pytest.raises(NameError):
        ex.update_parameters(slurm_partiton="gpu")


def test_a_campaign_file_with_a_typo_in_its_slurm_section(tmp_path, monkeypatch):
    """Through the campaign loader: one line naming the file, the section and the key; nothing created."""
    from campaign_helpers import campaign_dict, make_roots, write_campaign

    from nnunet_transfer.campaigns.spec import load_campaign
    from nnunet_transfer.errors import CampaignError

    make_roots(tmp_path, monkeypatch)
    path = write_campaign(tmp_path / "c.yaml", campaign_dict(
        executor={"kind": "slurm", "timeout_min": 60, "slurm_partiton": "gpu"}))
    with pytest.raises(CampaignError) as info:
        load_campaign(path)
    assert str(info.value).startswith(f"{path}: executor: slurm_partiton: not a parameter of submitit's SLURM "
                                      "executor (did you mean slurm_partition"), str(info.value)
    assert not (tmp_path / "unit.campaign").exists()
    good = write_campaign(tmp_path / "c.yaml", campaign_dict(
        executor={"kind": "slurm", "timeout_min": 60, "slurm_partition": "gpu", "folder": "jobs"}))
    assert load_campaign(good).spec.executor.parameters == {"timeout_min": 60, "slurm_partition": "gpu"}


def test_run_slurm_where_there_is_no_slurm(tmp_path, monkeypatch):
    """No srun on PATH: a SlurmError (exit 2) saying so, before any line of progress or any file."""
    from campaign_helpers import campaign_dict, make_roots, write_campaign

    from nnunet_transfer.campaigns.slurm import SlurmError, run_slurm
    from nnunet_transfer.campaigns.spec import load_campaign

    make_roots(tmp_path, monkeypatch)
    campaign = load_campaign(write_campaign(tmp_path / "c.yaml", campaign_dict(executor={"kind": "slurm"})))
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    lines: list[str] = []
    with pytest.raises(SlurmError) as info:
        run_slurm(campaign, lines.append)
    assert info.value.exit_code == 2
    assert "executor: kind slurm, but SLURM is not usable here" in str(info.value)
    assert "use executor: {kind: local}" in str(info.value)
    assert lines == [] and not campaign.workdir.exists()


# --- submitit: its private names, isolated in one module -----------------------------------------------------------
def _private_names():
    from nnunet_transfer.campaigns._submitit import PRIVATE_NAMES

    return [pytest.param(owner, name, id=f"{getattr(owner, '__name__', owner)}.{name}") for owner, name in PRIVATE_NAMES]


@pytest.mark.parametrize(("owner", "name"), _private_names())
def test_submitit_private_names(owner, name):
    """Each private name of submitit that _submitit.py reads is still there and callable: a submitit release that
    renames or drops one fails here, naming it."""
    assert callable(getattr(owner, name, None)), f"submitit {submitit.__version__} has no {owner.__name__}.{name}"


def test_only_submitit_py_reads_submitits_private_names():
    """Everything else of the campaigns uses submitit's public API (grep of the installed sources)."""
    import re
    from pathlib import Path

    import nnunet_transfer.campaigns as pkg
    from nnunet_transfer.campaigns._submitit import PRIVATE_NAMES

    private = {name for _, name in PRIVATE_NAMES} | {"_usr_sig", "_job_class"}
    for path in Path(pkg.__file__).parent.glob("*.py"):
        if path.name == "_submitit.py":
            continue
        found = [n for n in private if re.search(rf"\.{n}\b", path.read_text())]
        assert not found, f"{path.name} uses submitit's private {found}"


def test_the_preemption_signal_is_submitits():
    import signal

    from submitit.core.job_environment import JobEnvironment

    from nnunet_transfer.campaigns._submitit import preemption_signal

    assert preemption_signal() == signal.SIGUSR2 == getattr(signal, f"SIG{JobEnvironment.USR_SIG}")


def test_task_job_is_a_plain_checkpointable_that_pickles_by_name(tmp_path, monkeypatch):
    """Defined as a class like any other (no class made at run time): the jobs unpickle it by its name, and its
    checkpoint hands submitit the same task again."""
    import pickle

    from campaign_helpers import campaign_dict, make_roots, write_campaign
    from submitit.core.utils import DelayedSubmission
    from submitit.helpers import Checkpointable

    from nnunet_transfer.campaigns import slurm
    from nnunet_transfer.campaigns.spec import load_campaign

    make_roots(tmp_path, monkeypatch)
    campaign = load_campaign(write_campaign(tmp_path / "c.yaml", campaign_dict(executor={"kind": "slurm"})))
    task = campaign.prepare_tasks[0]
    job = slurm.TaskJob(campaign, task.id, 30.0)
    assert isinstance(job, Checkpointable) and slurm.CheckpointableTaskJob is slurm.TaskJob
    again = pickle.loads(pickle.dumps(job))
    assert type(again) is slurm.TaskJob and again.task_id == task.id and again.campaign.graph.task(task.id) == task
    import signal

    previous = signal.getsignal(signal.SIGTERM)
    try:
        delayed = job.checkpoint()  # (it ignores SIGTERM from then on, as a job about to be requeued does)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert isinstance(delayed, DelayedSubmission) and isinstance(delayed.function, slurm.TaskJob)
    assert delayed.function.task_id == task.id
