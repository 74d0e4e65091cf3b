"""One lock file per task (``<workdir>/locks/<task>.lock``): two runs of a campaign never work on the same task.

The lock is ``fcntl.flock(LOCK_EX)`` on the file; the holder writes its pid, host and task into it (for ``campaign
status`` and busy messages). The kernel releases a flock when the last descriptor of it closes, so a lock of a dead
process never blocks, and lock files are never deleted (deleting one would let two processes lock two different
files of the same name). The runner passes the descriptor to the ``nnUNetv2_train`` child (``pass_fds``): the lock
stays held while a training outlives its runner.

A train task takes a second lock, keyed on its fold folder (:func:`fold_lock_path`, under ``nnUNet_results``): two
campaign files that share a fold (two studies with one scratch arm) never train it twice at once.

Locks live on the local file system of the machines that run the tasks (flock over NFS is not reliable everywhere).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LockInfo", "TaskLock", "fold_lock_path", "lock_holder"]

#: under nnUNet_results: the locks of fold folders (a hidden folder: nnU-Net lists only Dataset* folders there)
FOLD_LOCKS = ".nnunet_transfer/locks"


def fold_lock_path(fold_dir: Path) -> Path:
    """The lock of an nnU-Net fold folder ``<results>/<dataset>/<trainer>__<plans>__<conf>/fold_N``, keyed on that
    folder and kept outside it: ``<results>/.nnunet_transfer/locks/<dataset>.<trainer>__<plans>__<conf>.fold_N.lock``.
    Every campaign file that names the fold takes this lock before it trains it."""
    fold_dir = Path(fold_dir)
    model, dataset, results = fold_dir.parent, fold_dir.parent.parent, fold_dir.parent.parent.parent
    return results / FOLD_LOCKS / f"{dataset.name}.{model.name}.{fold_dir.name}.lock"


@dataclass(frozen=True)
class LockInfo:
    """What the holder of a lock wrote into it."""

    pid: int | None = None
    host: str = "?"
    task: str = ""
    since: str = ""
    child: int | None = None  # the command it runs (nnUNetv2_train...), which holds the lock too

    def describe(self) -> str:
        """``pid 1240 (nnUNetv2_train...; runner pid 1234) on host since 12:03``."""
        who = f"pid {self.child} (runner pid {self.pid})" if self.child else f"pid {self.pid}"
        return f"{who} on {self.host}" + (f" since {self.since}" if self.since else "")

    @classmethod
    def read(cls, path: Path) -> LockInfo:
        try:
            data = json.loads(path.read_text() or "{}")
        except (OSError, ValueError):
            return cls()
        if not isinstance(data, dict):
            return cls()
        return cls(pid=data.get("pid"), host=str(data.get("host", "?")), task=str(data.get("task", "")),
                   since=str(data.get("since", "")), child=data.get("child"))


def _locked(fd: int, operation: int) -> bool:
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise


def lock_holder(path: Path) -> LockInfo | None:
    """Who holds the lock at ``path`` now, or None when nobody does (reads only: creates no file)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        if _locked(fd, fcntl.LOCK_SH):  # free: release the probe at once
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        return LockInfo.read(path)
    finally:
        os.close(fd)


class TaskLock:
    """The lock of one task. ``fd`` is the descriptor to pass to child processes while it is held."""

    def __init__(self, path: Path, task_id: str):
        self.path = Path(path)
        self.task_id = task_id
        self.fd: int | None = None
        self._info: dict[str, object] = {}

    @property
    def held(self) -> bool:
        return self.fd is not None

    def _open(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)

    def try_acquire(self, retries: int = 3, interval: float = 0.05) -> bool:
        """Take the lock if it is free (a few quick retries: ``campaign status`` probes locks for an instant)."""
        if self.fd is not None:
            return True
        fd = self._open()
        for attempt in range(retries + 1):
            if _locked(fd, fcntl.LOCK_EX):
                self.fd = fd
                self._write(pid=os.getpid(), host=socket.gethostname(), task=self.task_id,
                            since=time.strftime("%Y-%m-%d %H:%M:%S"))
                return True
            if attempt < retries:
                time.sleep(interval)
        os.close(fd)
        return False

    def acquire(self, poll: float = 0.5, on_wait: Callable[[LockInfo], None] | None = None) -> None:
        """Take the lock, waiting for its holder to finish; ``on_wait(holder)`` is called once if it has to wait."""
        told = False
        while not self.try_acquire(retries=0):
            if not told and on_wait is not None:
                on_wait(LockInfo.read(self.path))
                told = True
            time.sleep(poll)

    def holder(self) -> LockInfo:
        """What another process wrote into the lock (for busy messages)."""
        return LockInfo.read(self.path)

    def note_child(self, pid: int | None) -> None:
        """Record (or clear) the pid of the command that runs under the lock."""
        if self.fd is not None:
            self._write(child=pid)

    def _write(self, **fields: object) -> None:
        if self.fd is None:
            return
        self._info.update(fields)
        data = json.dumps(self._info).encode() + b"\n"
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)

    def release(self) -> None:
        """Release the lock (also for a child still holding a copy of the descriptor) and close it."""
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> TaskLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
