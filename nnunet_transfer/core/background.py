"""One background thread for bookkeeping jobs that need not hold up a training loop (drawing a plot)."""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
import traceback
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["LatestJobWorker"]

EXIT_WAIT_SECONDS = 30.0  # at interpreter exit, the job under way may finish (an atomic write leaves no temp file)


class LatestJobWorker:
    """Runs submitted jobs one at a time in a daemon thread (started on the first submission). A job submitted while
    an earlier one has not started replaces it: the latest wins. A job's exception never reaches the submitting
    thread; its traceback is kept until :meth:`wait` hands it over, so that the owner reports it.

    ``nice``: on Linux (where nice values are per thread) the thread's nice value is raised by this much, so that
    on busy cores the jobs take the time the training threads leave (a job still running when the owner waits for
    it then runs while the owner waits)."""

    def __init__(self, name: str, nice: int = 0) -> None:
        self.name = name
        self.nice = nice
        self._cond = threading.Condition()
        self._pending: tuple[Callable[..., Any], tuple[Any, ...]] | None = None
        self._busy = False
        self._closing = False
        self._failures: list[str] = []
        self._thread: threading.Thread | None = None
        self.replaced = 0  # jobs dropped before they started because a newer one came
        atexit.register(_wait_at_exit, weakref.ref(self))

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` in the background, after the job under way (if any), instead of any job still waiting."""
        with self._cond:
            if self._pending is not None:
                self.replaced += 1
            self._pending = (fn, args)
            if self._thread is None:
                self._closing = False
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def _run(self) -> None:
        if self.nice > 0 and sys.platform.startswith("linux"):
            with contextlib.suppress(OSError):  # best effort: a lower priority only
                tid = threading.get_native_id()
                os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + self.nice))
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or self._closing)
                if self._pending is None:
                    self._thread = None  # under the lock: a submission from now on starts a new thread
                    return
                (fn, args), self._pending = self._pending, None
                self._busy = True
            failure = None
            try:
                fn(*args)
            except Exception:
                failure = traceback.format_exc()
            with self._cond:
                self._busy = False
                if failure is not None:
                    self._failures.append(failure)
                self._cond.notify_all()

    def wait(self, timeout: float | None = None) -> list[str]:
        """Wait until no job is under way or waiting (at most ``timeout`` seconds); returns the tracebacks of the
        jobs that failed since the last call (each reported once)."""
        with self._cond:
            self._cond.wait_for(lambda: self._pending is None and not self._busy, timeout)
            failures, self._failures = self._failures, []
        return failures

    def close(self, timeout: float | None = None) -> list[str]:
        """:meth:`wait`, then end the thread (a later :meth:`submit` starts a new one); returns the failures."""
        failures = self.wait(timeout)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        return failures


def _wait_at_exit(ref: weakref.ref[LatestJobWorker]) -> None:
    worker = ref()
    if worker is not None:
        worker.wait(EXIT_WAIT_SECONDS)
