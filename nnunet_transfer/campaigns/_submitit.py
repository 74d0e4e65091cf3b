"""The one place that reads submitit's private names (submitit has no public list of its SLURM parameters).

:data:`PRIVATE_NAMES` lists each; ``tests/unit/test_slurm_executor.py::test_submitit_private_names`` checks every one
by name, so that a submitit release that renames or drops one fails there, in seconds, naming it. Everything else the
SLURM executor uses of submitit is public (``AutoExecutor``, ``helpers.Checkpointable``, ``DelayedSubmission``,
``SlurmJob``, ``JobEnvironment.USR_SIG``).
"""

from __future__ import annotations

import functools
import inspect
import signal
from typing import Any

from submitit import AutoExecutor
from submitit.core.job_environment import JobEnvironment
from submitit.slurm import slurm

__all__ = ["PRIVATE_NAMES", "constructor_parameters", "preemption_signal", "submitit_parameters"]

#: (object, attribute) of every private name used below
PRIVATE_NAMES: tuple[tuple[Any, str], ...] = (
    (AutoExecutor, "_typed_parameters"),  # the generic parameters with their types (timeout_min: int...)
    (slurm.SlurmExecutor, "_valid_parameters"),  # the names SlurmExecutor.update_parameters takes
    (slurm, "_make_sbatch_string"),  # their declared types (its keyword arguments)
)


@functools.cache
def submitit_parameters() -> dict[str, Any]:
    """The keys an ``executor: {kind: slurm}`` section may hold, each with the type submitit declares for it:
    AutoExecutor's generic parameters (``timeout_min``...), and ``slurm_`` + each parameter of submitit's
    SlurmExecutor (its ``update_parameters`` and its constructor: ``slurm_partition``, ``slurm_max_num_timeout``...)."""
    generic: dict[str, Any] = dict(AutoExecutor._typed_parameters())
    names: dict[str, Any] = dict(generic)
    sbatch = inspect.signature(slurm._make_sbatch_string).parameters
    for name in slurm.SlurmExecutor._valid_parameters():
        names[f"slurm_{name}"] = sbatch[name].annotation if name in sbatch else Any
    for name, kind in generic.items():  # AutoExecutor: slurm_<generic> overrides the generic one on SLURM
        names.setdefault(f"slurm_{name}", kind)
    names.update({f"slurm_{n}": kind for n, kind in _constructor().items()})
    return names


def constructor_parameters() -> set[str]:
    """The ``slurm_`` keys that go to SlurmExecutor's constructor, not to ``update_parameters``."""
    return {f"slurm_{n}" for n in _constructor()}


def _constructor() -> dict[str, Any]:
    return {name: p.annotation for name, p in inspect.signature(slurm.SlurmExecutor.__init__).parameters.items()
            if name not in ("self", "folder")}


def preemption_signal() -> signal.Signals:
    """The signal submitit's job handler takes as a preemption or a time limit near (SIGUSR2 unless
    ``SUBMITIT_PREEMPT_SIGNAL`` says otherwise)."""
    return signal.Signals[f"SIG{JobEnvironment.USR_SIG}"]
