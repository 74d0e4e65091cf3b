"""Task locks: a lock held by another process makes a task busy; a dead holder's lock is free; a training child
that inherited the lock keeps it after its runner died."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from campaign_helpers import wait_for

from nnunet_transfer.campaigns.locks import TaskLock, lock_holder

HOLDER = textwrap.dedent("""
    import subprocess, sys, time
    from nnunet_transfer.campaigns.locks import TaskLock
    lock = TaskLock(sys.argv[1], "some/task")
    assert lock.try_acquire()
    if sys.argv[2] == "child":  # like the runner: the training child inherits the lock's descriptor
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], pass_fds=(lock.fd,))
        lock.note_child(child.pid)
        print(child.pid, flush=True)
    else:
        print("locked", flush=True)
    time.sleep(120)
""")


@pytest.fixture
def holder(tmp_path):
    """Start a process that takes the lock at ``tmp_path/t.lock`` (``mode`` "child": and passes it to a child)."""
    procs: list[subprocess.Popen] = []

    def start(mode: str = "plain") -> tuple[subprocess.Popen, str]:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        p = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "t.lock"), mode], env=env,
                             stdout=subprocess.PIPE, text=True)
        procs.append(p)
        return p, p.stdout.readline().strip()

    yield start
    for p in procs:
        p.kill()
        p.wait()


def test_lock_held_by_another_process_is_busy_then_free_once_it_is_killed(tmp_path, holder):
    path = tmp_path / "t.lock"
    proc, line = holder()
    assert line == "locked"
    info = lock_holder(path)
    assert info is not None and info.pid == proc.pid and info.task == "some/task"
    assert f"pid {proc.pid} on " in info.describe()
    mine = TaskLock(path, "some/task")
    assert not mine.try_acquire(retries=1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # the kernel released the dead holder's lock: the stale file does not block
    assert lock_holder(path) is None
    assert mine.try_acquire()
    assert lock_holder(path).pid == os.getpid()
    mine.release()
    assert lock_holder(path) is None and path.exists()  # lock files are never deleted


def test_a_training_child_keeps_the_lock_after_its_runner_is_killed(tmp_path, holder):
    path = tmp_path / "t.lock"
    runner, child_pid = holder("child")
    child = int(child_pid)
    assert lock_holder(path).child == child
    runner.send_signal(signal.SIGKILL)  # only the runner (not its group)
    runner.wait()
    info = lock_holder(path)
    assert info is not None and info.child == child  # still held: by the training child
    assert not TaskLock(path, "some/task").try_acquire(retries=0)
    os.kill(child, signal.SIGKILL)
    wait_for(lambda: lock_holder(path) is None, what="the lock to be free after the child died")


def test_probe_creates_nothing_and_acquire_waits_for_the_holder(tmp_path, holder):
    assert lock_holder(tmp_path / "none.lock") is None
    assert not (tmp_path / "none.lock").exists()
    proc, _ = holder()
    waited = []
    lock = TaskLock(tmp_path / "t.lock", "some/task")

    def kill_holder(info):
        waited.append(info.pid)
        proc.kill()

    lock.acquire(poll=0.05, on_wait=kill_holder)
    assert lock.held and waited == [proc.pid]
    lock.release()
    assert not lock.held
