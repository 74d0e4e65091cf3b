"""The GPU check as a benchmark: ``nnunet-transfer gpu-check`` with the same options (see
``nnunet_transfer/gpucheck/check.py``): stock nnU-Net vs AdaptiveFT per-epoch time, frozen vs nothing frozen with and
without split skips (time, peak GPU memory), compiled and eager, load coverage, predict and a verified ONNX export, on
the current CUDA device, within ``--budget-s`` (default 300 s).

    python benchmarks/bench_gpu.py                       # on a GPU: about 5 minutes
    python benchmarks/bench_gpu.py --device cpu --tiny   # the smoke run (the test suite runs it)
"""

import sys

from nnunet_transfer.cli import main

if __name__ == "__main__":
    sys.exit(main(["gpu-check", *sys.argv[1:]]))
