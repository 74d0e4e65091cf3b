"""The GPU check: the trainers on the current CUDA device, measured against nnU-Net's own, in minutes.

``nnunet-transfer gpu-check`` (or ``python benchmarks/bench_gpu.py``) runs :func:`run_gpu_check`.
"""

from nnunet_transfer.gpucheck.check import CONFIGS, RATIOS, RunConfig, format_table, run_gpu_check

__all__ = ["CONFIGS", "RATIOS", "RunConfig", "format_table", "run_gpu_check"]
