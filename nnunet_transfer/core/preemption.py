"""Graceful stop on a signal: finish the epoch, write ``checkpoint_latest.pth``, exit with a status executors know.

:class:`GracefulStop` turns SIGUSR1, SIGUSR2 (submitit's preemption / time-limit signal) and SIGTERM (SLURM's
``scancel``, ``scontrol requeue``, a time limit) into a request that the training loop reads at the end of an
epoch; a second SIGTERM kills the process at once. The handlers are Python handlers, so processes forked after
:meth:`GracefulStop.install` (nnU-Net's data-augmentation workers) inherit them. There they keep the workers
alive through a stop request so that the epoch can finish: SIGUSR1 and SIGUSR2 are ignored, and so is the first
SIGTERM while the process that forked them is alive (a scheduler signals every process of a job); a worker dies on
SIGTERM (the default action) once the owner has released its workers for shutdown
(:meth:`GracefulStop.release_children`, :meth:`GracefulStop.uninstall`), once it is orphaned, or on its second
SIGTERM.
"""

from __future__ import annotations

import mmap
import os
import signal
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from types import FrameType
from typing import Any

__all__ = ["PREEMPTED_EXIT_CODE", "STOP_SIGNALS", "GracefulStop", "StopRequest"]

#: exit status of a training that stopped on request (SIGUSR1, SIGUSR2, SIGTERM) after writing checkpoint_latest.pth:
#: EX_TEMPFAIL of sysexits.h, "try again later"; ``nnUNetv2_train ... --c`` continues it from the next epoch
PREEMPTED_EXIT_CODE = 75

#: the signals that ask for a graceful stop
STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)

# the pid of the process that forked this one, recorded in the parent just before every os.fork (multiprocessing's
# fork start method included): a child whose getppid() differs from it has lost its parent
_forker: int | None = None
_fork_hook_registered = False


def _remember_forker() -> None:
    global _forker
    _forker = os.getpid()


def _register_fork_hook() -> None:
    global _fork_hook_registered
    if not _fork_hook_registered:
        os.register_at_fork(before=_remember_forker)
        _fork_hook_registered = True


def _parent_alive() -> bool:
    """False when the process that forked this one is gone (this one was re-parented)."""
    return _forker is not None and os.getppid() == _forker


def _die_of(signum: int) -> None:
    """Take the default action of ``signum`` now (terminate)."""
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


@dataclass(frozen=True)
class StopRequest:
    """The first stop signal received: its name (``"SIGUSR1"``) and when (``time.time()``)."""

    signal: str
    time: float

    def describe(self) -> str:
        """``"SIGUSR1 (received 12:34:56)"``."""
        return f"{self.signal} (received {time.strftime('%H:%M:%S', time.localtime(self.time))})"


class GracefulStop:
    """Stop signals as a request the training loop polls (:attr:`requested`), for the process that installs it.

    ``install()`` only works in the main thread (where Python runs signal handlers): elsewhere it does nothing and
    returns False. ``uninstall()`` restores the handlers found at installation."""

    def __init__(self, signals: Iterable[int] = STOP_SIGNALS) -> None:
        self.signals = tuple(signal.Signals(s) for s in signals)
        self._owner: int | None = None
        self._previous: dict[signal.Signals, Any] = {}
        self._requested: StopRequest | None = None
        self._terms = 0  # SIGTERMs received by the owner
        self._child_terms = 0  # SIGTERMs received by a forked child (its own copy after the fork)
        self._shared: mmap.mmap | None = None  # one shared byte: 1 = forked children obey SIGTERM again

    @property
    def installed(self) -> bool:
        """True while this process's handlers are installed."""
        return self._owner is not None and self._owner == os.getpid()

    @property
    def requested(self) -> StopRequest | None:
        """The first stop signal received since installation, or None."""
        return self._requested

    def install(self) -> bool:
        """Install the handlers (clearing any earlier request); True when they are in force (also when they were
        already), False when called outside the main thread (nothing changes)."""
        if self.installed:
            return True
        if threading.current_thread() is not threading.main_thread():
            return False
        _register_fork_hook()
        self._shared = mmap.mmap(-1, 1)  # anonymous and shared: a write here is seen by the processes forked later
        self._requested = None
        self._terms = self._child_terms = 0
        self._previous = {}
        for s in self.signals:
            self._previous[s] = signal.signal(s, self._handle)
        self._owner = os.getpid()
        return True

    def uninstall(self) -> None:
        """Restore the handlers found at installation and release the forked children (see
        :meth:`release_children`). No-op when not installed, or outside the main thread."""
        if not self.installed or threading.current_thread() is not threading.main_thread():
            return
        self.release_children()
        for s, previous in self._previous.items():
            signal.signal(s, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}
        self._owner = None

    def release_children(self) -> None:
        """From now on the processes forked after installation die on SIGTERM (call before shutting them down:
        ``multiprocessing``'s ``terminate()`` sends SIGTERM)."""
        if self._shared is not None and self.installed:
            self._shared[0] = 1

    def _released(self) -> bool:
        return self._shared is not None and self._shared[0] == 1

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._owner:
            self._handle_in_child(signum)
            return
        if signum == signal.SIGTERM:
            self._terms += 1
            if self._terms > 1:  # the second SIGTERM: kill at once, and let the children follow
                self.release_children()
                _die_of(signum)
                return
        if self._requested is None:
            self._requested = StopRequest(signal.Signals(signum).name, time.time())

    def _handle_in_child(self, signum: int) -> None:
        """A forked child (data-augmentation worker): the owner decides when to stop; stay alive meanwhile."""
        if signum != signal.SIGTERM:
            return
        self._child_terms += 1
        if self._released() or not _parent_alive() or self._child_terms > 1:
            _die_of(signum)
