"""Graceful stop on a signal: finish the epoch, write ``checkpoint_latest.pth``, exit with a status executors know.

(Skeleton: the handler lands with the preemption work of issue 10.)
"""

from __future__ import annotations

__all__ = ["PREEMPTED_EXIT_CODE"]

#: exit status of a training that stopped on request (SIGUSR1, SIGUSR2, SIGTERM) after writing checkpoint_latest.pth:
#: EX_TEMPFAIL of sysexits.h, "try again later"; ``nnUNetv2_train ... --c`` continues it from the next epoch
PREEMPTED_EXIT_CODE = 75
