"""The SLURM executor, through submitit. (Skeleton: the executor lands with issue 10.)"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

__all__ = ["SlurmExecutorSpec"]


class SlurmExecutorSpec(BaseModel):
    """``executor: {kind: slurm, ...}``: submitit's own parameter names (``slurm_partition``, ``timeout_min``...)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    kind: Literal["slurm"]
    folder: str | None = None
