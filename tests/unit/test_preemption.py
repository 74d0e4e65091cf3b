"""Graceful stop on SIGUSR1 / SIGUSR2 / SIGTERM (issue 10): the handlers with real signals (to this process, to
forked children, to batchgenerators' workers), and nnUNetTrainerAdaptiveFT's stop at the end of an epoch, driven
in-process through nnU-Net's own hooks (no data)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import RECIPES, build_trainer, make_dataset_json, make_plans, trainer_folders
from test_bookkeeping import end_epoch, start_epoch

from nnunet_transfer.core.preemption import PREEMPTED_EXIT_CODE, GracefulStop
from nnunet_transfer.core.schedules.recipes import RECIPE_ENV_VAR
from nnunet_transfer.errors import TrainingStateError
from nnunet_transfer.trainers.adaptive_ft import LR_TABLE_FILE

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="POSIX signals and fork (Linux)")

SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)


@pytest.fixture(autouse=True)
def _restore_handlers():
    """Whatever a test does, pytest's own handlers are back afterwards."""
    before = {s: signal.getsignal(s) for s in SIGNALS}
    yield
    for s, h in before.items():
        signal.signal(s, h)


# --- helpers ------------------------------------------------------------------------------------------------------
def _fork(body) -> int:
    """Fork a child that runs ``body()`` and leaves with its return value (an int) as exit status, never returning
    into pytest."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = body()
        finally:
            os._exit(code)
    return pid


def _sleeper(stop: GracefulStop | None = None, report: int | None = None) -> int:
    """A forked child's body: sleep (signal handlers run meanwhile) for at most 30 s, then exit 3. With ``stop`` and
    ``report``: write ``r`` to that pipe once running (a signal that arrives while CPython still sets up the forked
    child is dropped with its other pending signals), then ``t`` each time the child's copy of ``stop`` has counted
    another SIGTERM."""
    deadline = time.monotonic() + 30
    seen = 0
    if report is not None:
        os.write(report, b"r")
    while time.monotonic() < deadline:
        time.sleep(0.02)
        if stop is not None and report is not None and stop._child_terms != seen:
            seen = stop._child_terms
            os.write(report, b"t")
    return 3


def _status(pid: int, timeout: float) -> int | None:
    """The wait status of child ``pid`` once it ends (within ``timeout`` s), None if it is still running."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() > deadline:
            return None
        time.sleep(0.02)


def _killed_by(status: int | None, sig: int) -> bool:
    return status is not None and os.WIFSIGNALED(status) and os.WTERMSIG(status) == sig


def _reap(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, ChildProcessError):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


# --- the handlers in the owner ------------------------------------------------------------------------------------
def test_first_signal_is_the_request_and_uninstall_restores_the_previous_handlers():
    def previous(signum, frame):  # a handler of someone else's, there before
        pass

    signal.signal(signal.SIGUSR1, previous)
    stop = GracefulStop()
    assert stop.install() and stop.installed and stop.requested is None
    try:
        before = time.time()
        os.kill(os.getpid(), signal.SIGUSR2)
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)  # the first SIGTERM is a request too, not a kill
        assert stop.requested is not None
        assert stop.requested.signal == "SIGUSR2" and before <= stop.requested.time <= time.time()
        assert stop.requested.describe().startswith("SIGUSR2 (received ")
    finally:
        stop.uninstall()
    assert not stop.installed
    assert signal.getsignal(signal.SIGUSR1) is previous
    assert signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    stop.uninstall()  # twice: nothing happens

    assert stop.install() and stop.requested is None  # a new installation starts without a request
    stop.uninstall()


def test_install_outside_the_main_thread_does_nothing():
    stop = GracefulStop()
    result = []
    thread = threading.Thread(target=lambda: result.append(stop.install()))
    thread.start()
    thread.join()
    assert result == [False] and not stop.installed
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL


def test_second_sigterm_kills_at_once():
    read, write = os.pipe()

    def body() -> int:
        stop = GracefulStop()
        stop.install()
        os.kill(os.getpid(), signal.SIGTERM)
        os.write(write, b"1" if stop.requested and stop.requested.signal == "SIGTERM" else b"x")
        os.kill(os.getpid(), signal.SIGTERM)
        os.write(write, b"2")  # never reached
        return 0

    pid = _fork(body)
    os.close(write)
    try:
        status = _status(pid, 10)
        with os.fdopen(read, "rb") as r:
            assert r.read() == b"1"
        assert _killed_by(status, signal.SIGTERM), status
    finally:
        _reap(pid)


# --- the handlers in forked children ------------------------------------------------------------------------------
def test_forked_children_outlive_stop_signals_until_released():
    stop = GracefulStop()
    assert stop.install()
    pids = []
    handled, report = os.pipe()
    try:
        pids = [_fork(_sleeper), _fork(_sleeper), _fork(lambda: _sleeper(stop, report))]
        first, fresh, twice = pids
        ready, _, _ = select.select([handled], [], [], 30)
        assert ready and os.read(handled, 1) == b"r", "the child never started"
        for s in SIGNALS:
            os.kill(first, s)
        os.kill(twice, signal.SIGTERM)
        # Python runs a handler once for signals that arrive before it runs: wait for the child's to have run
        ready, _, _ = select.select([handled], [], [], 10)
        assert ready and os.read(handled, 1) == b"t", "the child never handled its first SIGTERM"
        assert _status(first, 0.5) is None, "a worker died of a stop signal while its owner is alive"
        assert _status(twice, 0.1) is None
        assert stop.requested is None  # the children's signals are theirs

        os.kill(twice, signal.SIGTERM)  # a second SIGTERM kills a child too
        assert _killed_by(_status(twice, 5), signal.SIGTERM)

        stop.release_children()  # before a shutdown: multiprocessing's terminate() sends SIGTERM
        os.kill(fresh, signal.SIGTERM)
        assert _killed_by(_status(fresh, 5), signal.SIGTERM)
        os.kill(first, signal.SIGUSR1)  # still ignored
        assert _status(first, 0.3) is None
    finally:
        stop.uninstall()
        for pid in pids:
            _reap(pid)
        os.close(handled)
        os.close(report)


def test_orphaned_child_dies_on_sigterm():
    """The owner is gone (killed): its forked worker is re-parented and must not outlive a SIGTERM."""
    read, write = os.pipe()

    def helper() -> int:  # adopts the orphan (child subreaper), so that it can be waited for
        if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
            return 10

        def owner() -> int:
            stop = GracefulStop()
            stop.install()
            worker = _fork(_sleeper)
            os.write(write, f"{worker}\n".encode())
            return 0  # dies without shutting its worker down

        owner_pid = _fork(owner)
        os.waitpid(owner_pid, 0)
        worker = int(os.read(read, 64))
        os.kill(worker, signal.SIGTERM)
        status = _status(worker, 5)
        if status is None:
            _reap(worker)
            return 11
        return 0 if _killed_by(status, signal.SIGTERM) else 12

    pid = _fork(helper)
    status = _status(pid, 20)
    _reap(pid)
    assert status is not None and os.WIFEXITED(status)
    code = os.WEXITSTATUS(status)
    if code == 10:
        pytest.skip("prctl(PR_SET_CHILD_SUBREAPER) not available")
    assert code == 0, {11: "the orphan ignored SIGTERM", 12: "the orphan died otherwise"}.get(code, code)


# --- batchgenerators' workers -------------------------------------------------------------------------------------
class _Batches:
    """A data loader for batchgenerators' augmenters: endless small batches, or (``stuck``) one that never comes."""

    def __init__(self, stuck: bool = False) -> None:
        self.stuck = stuck

    def set_thread_id(self, thread_id: int) -> None:
        pass

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self.stuck:
            time.sleep(60)
        return {"data": np.zeros((2, 1, 4, 4, 4), dtype=np.float32)}


def test_augmenter_workers_survive_sigterm_during_training_and_shut_down_afterwards():
    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter

    stop = GracefulStop()
    assert stop.install()
    aug = NonDetMultiThreadedAugmenter(_Batches(), None, 2, num_cached=2)
    try:
        next(aug)  # starts the workers (forked now: they inherit the handlers)
        workers = list(aug._processes)
        for p in workers:
            os.kill(p.pid, signal.SIGTERM)  # as a scheduler signals every process of the job
        time.sleep(0.5)
        assert all(p.is_alive() for p in workers)
        for _ in range(5):
            assert next(aug)["data"].shape == (2, 1, 4, 4, 4)
        stop.release_children()
        t0 = time.monotonic()
        aug._finish()
        assert not any(p.is_alive() for p in workers) and time.monotonic() - t0 < 5
    finally:
        aug._finish(timeout=1)
        stop.uninstall()


def test_straggling_augmenter_worker_obeys_terminate_once_released():
    """batchgenerators' ``_finish`` sets its abort event, waits ``timeout`` s, then terminates stragglers (SIGTERM)."""
    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter

    stop = GracefulStop()
    assert stop.install()
    aug = NonDetMultiThreadedAugmenter(_Batches(stuck=True), None, 1)
    try:
        aug._start()
        (worker,) = aug._processes
        time.sleep(0.3)  # in its 60 s batch
        stop.release_children()
        t0 = time.monotonic()
        aug._finish(timeout=1)
        assert not worker.is_alive() and time.monotonic() - t0 < 5
        assert worker.exitcode == -signal.SIGTERM
    finally:
        stop.uninstall()
        with contextlib.suppress(Exception):
            worker.kill()


# --- the trainer --------------------------------------------------------------------------------------------------
def _epoch(trainer) -> None:
    """One epoch through nnU-Net's hooks, without data (test_bookkeeping's helpers: the losses of a made-up run)."""
    start_epoch(trainer)
    end_epoch(trainer)


def _table(trainer) -> list[dict]:
    import json

    rows = json.loads((Path(trainer.output_folder) / LR_TABLE_FILE).read_text())
    return [{k: r[k] for k in ("epoch", "lr", "trainable")} for r in rows]


def _recipe(tmp_path: Path, save_every: int | None) -> Path:
    text = (RECIPES / "preempt.yaml").read_text()
    path = tmp_path / "preempt.yaml"
    path.write_text(text + (f"save_every: {save_every}\n" if save_every else ""))
    return path


@pytest.mark.parametrize("save_every", [None, 2], ids=["own_save", "periodic_save_at_that_epoch"])
def test_trainer_stops_at_the_end_of_the_epoch_and_resumes_at_the_next(tmp_path, monkeypatch, save_every):
    monkeypatch.setenv(RECIPE_ENV_VAR, str(_recipe(tmp_path, save_every)))
    trainer = build_trainer(tmp_path / "stopped", monkeypatch)
    latest = Path(trainer.output_folder) / "checkpoint_latest.pth"
    assert trainer._graceful.install()
    try:
        _epoch(trainer)
        assert not latest.exists()  # no periodic save at epoch 0 in either case
        with pytest.raises(SystemExit) as exit_info:
            trainer.on_epoch_start()
            trainer.on_train_epoch_start()
            os.kill(os.getpid(), signal.SIGUSR1)  # during epoch 1
            trainer.logger.log("train_losses", 0.8, 1)
            trainer.logger.log("val_losses", 0.85, 1)
            trainer.logger.log("dice_per_class_or_region", [0.1, 0.05], 1)
            trainer.logger.log("mean_fg_dice", 0.075, 1)
            trainer.on_epoch_end()
    finally:
        trainer._graceful.uninstall()
    assert exit_info.value.code == PREEMPTED_EXIT_CODE
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # the stop uninstalled the handlers
    assert trainer.current_epoch == 2  # nnU-Net's on_epoch_end ran in full
    assert torch.load(latest, map_location="cpu", weights_only=False)["current_epoch"] == 2
    assert not (Path(trainer.output_folder) / "checkpoint_final.pth").exists()
    assert not list(Path(trainer.output_folder).glob(".checkpoint_*"))  # no temporary files left
    log = next(Path(trainer.output_folder).glob("training_log_*.txt")).read_text()
    line = next(x for x in log.splitlines() if "Training stopped on SIGUSR1" in x)
    assert "at the end of epoch 1; checkpoint_latest.pth holds the state to continue from epoch 2" in line
    assert ("nnUNetv2_train Dataset990_Unit 3d_fullres 0 -tr nnUNetTrainerAdaptiveFT -p nnUNetPlans -device cpu --c "
            f"(exit status {PREEMPTED_EXIT_CODE})") in line
    assert [r["epoch"] for r in _table(trainer)] == [0, 1]

    resumed = build_trainer(tmp_path / "stopped", monkeypatch, continue_training=True)
    resumed.load_checkpoint(str(latest))
    assert resumed.current_epoch == 2
    while resumed.current_epoch < resumed.num_epochs:
        _epoch(resumed)

    full = build_trainer(tmp_path / "full", monkeypatch)
    while full.current_epoch < full.num_epochs:
        _epoch(full)
    assert [r["epoch"] for r in _table(full)] == [0, 1, 2, 3]
    assert _table(resumed) == _table(full)


def test_trainer_stopped_on_its_last_epoch_leaves_nothing_to_train(tmp_path, monkeypatch):
    monkeypatch.setenv(RECIPE_ENV_VAR, str(RECIPES / "preempt.yaml"))
    trainer = build_trainer(tmp_path, monkeypatch)
    assert trainer._graceful.install()
    try:
        for _ in range(trainer.num_epochs - 1):
            _epoch(trainer)
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(SystemExit) as exit_info:
            _epoch(trainer)
    finally:
        trainer._graceful.uninstall()
    assert exit_info.value.code == PREEMPTED_EXIT_CODE
    ckpt = torch.load(Path(trainer.output_folder) / "checkpoint_latest.pth", map_location="cpu", weights_only=False)
    assert ckpt["current_epoch"] == trainer.num_epochs  # --c runs no epoch, writes checkpoint_final.pth, validates


def test_failed_checkpoint_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv(RECIPE_ENV_VAR, str(RECIPES / "preempt.yaml"))
    trainer = build_trainer(tmp_path, monkeypatch)
    path = Path(trainer.output_folder) / "checkpoint_latest.pth"
    trainer.save_checkpoint(str(path))
    before = path.read_bytes()
    trainer.current_epoch = 1
    trainer.my_init_kwargs["unpicklable"] = lambda: None  # torch.save fails part-way through the file
    with pytest.raises(Exception, match="pickle"):
        trainer.save_checkpoint(str(path))
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir() if "checkpoint" in p.name) == ["checkpoint_latest.pth"]


def test_handlers_are_removed_when_training_fails_to_start(tmp_path, monkeypatch):
    monkeypatch.setenv(RECIPE_ENV_VAR, str(RECIPES / "preempt.yaml"))
    trainer = build_trainer(tmp_path, monkeypatch)
    monkeypatch.setattr(sys, "argv", ["nnUNetv2_train", "990", "3d_fullres", "0", "-pretrained_weights", "/x.pth"])
    with pytest.raises(TrainingStateError):
        trainer.on_train_start()
    assert not trainer._graceful.installed
    assert all(signal.getsignal(s) is signal.SIG_DFL for s in SIGNALS)


def _ddp_rank(rank: int, world: int, store: str, env: dict, signalled: int, out: str) -> None:
    """One rank of a CPU process group: epoch 0, then a stop signal to rank ``signalled`` only during epoch 1."""
    import json

    import torch.distributed as dist

    from nnunet_transfer.trainers.adaptive_ft import nnUNetTrainerAdaptiveFT

    os.environ.update(env)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    result: dict = {"code": None}
    try:
        plans = make_plans()
        plans["continue_training"] = False
        trainer = nnUNetTrainerAdaptiveFT(plans, "3d_fullres", 0, make_dataset_json(), torch.device("cpu"))
        trainer.initialize()
        assert trainer._graceful.install()
        try:
            _epoch(trainer)
            if rank == signalled:
                os.kill(os.getpid(), signal.SIGUSR1)
            while trainer.current_epoch < trainer.num_epochs:
                _epoch(trainer)
        except SystemExit as e:
            result["code"] = e.code
        result["epoch"] = trainer.current_epoch
    finally:
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))
        dist.destroy_process_group()


def test_every_rank_stops_at_the_epoch_one_rank_was_signalled_in(tmp_path):
    """Under DDP a stop signal may reach one rank only: all of them leave at the end of the same epoch, after rank
    0 wrote the checkpoint."""
    import json

    import torch.multiprocessing as mp

    env = {**trainer_folders(tmp_path, make_plans()), RECIPE_ENV_VAR: str(RECIPES / "preempt.yaml"),
           "OMP_NUM_THREADS": "1"}
    ctx = mp.start_processes(_ddp_rank, args=(2, str(tmp_path / "store"), env, 1, str(tmp_path)), nprocs=2,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + 120  # without the agreement, the rank that goes on waits for the other forever
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the ranks did not finish")
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert results == [{"code": PREEMPTED_EXIT_CODE, "epoch": 2}] * 2
    fold = tmp_path / "results" / "Dataset990_Unit" / "nnUNetTrainerAdaptiveFT__nnUNetPlans__3d_fullres" / "fold_0"
    assert torch.load(fold / "checkpoint_latest.pth", map_location="cpu", weights_only=False)["current_epoch"] == 2
    log = next(fold.glob("training_log_*.txt")).read_text()
    assert "Training stopped on a stop request of another rank at the end of epoch 1" in log  # rank 0 logs
    assert "-num_gpus 2 --c" in log
