"""Adaptive load vs plain ``torch.load(mmap=True, weights_only=True)`` + ``load_state_dict(strict=False)``.

A checkpoint of at least ``--size-gb`` (default 1.0) in nnU-Net's format is generated once; then each method runs in
its own fresh process (so that peak RSS is its own), alternating A/B for ``--rounds`` rounds after one warm-up round
each (page cache). Printed: median load time and peak RSS of each, and the ratios adaptive/plain.
Targets (issue #2): time ratio <= 1.10, peak-RSS ratio <= 1.10.

    python benchmarks/bench_load.py --size-gb 1.0 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def build_network(width: int):
    import torch
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from torch import nn

    torch.manual_seed(0)
    features = [32, 64, 128, 256, width, width, width]
    return PlainConvUNet(
        input_channels=1, n_stages=len(features), features_per_stage=features, conv_op=nn.Conv3d,
        kernel_sizes=[[3, 3, 3]] * len(features), strides=[[1, 1, 1]] + [[2, 2, 2]] * (len(features) - 1),
        n_conv_per_stage=[2] * len(features), num_classes=3, n_conv_per_stage_decoder=[2] * (len(features) - 1),
        conv_bias=True, norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=True,
    )


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def worker(method: str, ckpt: str, width: int) -> None:
    import torch

    from nnunet_transfer import load_pretrained

    net = build_network(width)
    labels = {"background": 0, "organ": 1, "lesion": 2}

    def load() -> None:
        if method == "plain":
            sd = torch.load(ckpt, mmap=True, weights_only=True, map_location="cpu")
            net.load_state_dict(sd["network_weights"], strict=False)
        else:
            report = load_pretrained(net, ckpt, labels)
            assert report.coverage == 1.0

    measure(load)


def measure(load) -> None:
    """Run ``load()`` once and print its time, the peak RSS and the RSS before it (one JSON line)."""
    rss_before = _rss_mb()
    start = time.perf_counter()
    load()
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"time": elapsed, "peak_rss_mb": peak, "rss_before_mb": rss_before}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gb", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--worker", choices=["plain", "adaptive"], help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", help=argparse.SUPPRESS)
    ap.add_argument("--width", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.ckpt, args.width)
        return

    import torch

    width = 320
    while True:  # smallest width (multiple of 32) giving a checkpoint of at least --size-gb
        net = build_network(width)
        distinct = {id(t): t for t in net.state_dict(keep_vars=True).values()}
        nbytes = sum(t.numel() * t.element_size() for t in distinct.values())
        if nbytes >= args.size_gb * 2**30:
            break
        width += 32
    tmp = tempfile.TemporaryDirectory(dir=args.workdir)
    ckpt = Path(tmp.name) / "checkpoint_final.pth"
    torch.save({"network_weights": net.state_dict(), "current_epoch": 1000, "trainer_name": "nnUNetTrainer",
                "init_args": {"dataset_json": {"labels": {"background": 0, "organ": 1, "lesion": 2}}}}, ckpt)
    del net
    size = ckpt.stat().st_size
    print(f"checkpoint: {size / 2**30:.2f} GiB ({len(distinct)} distinct tensors, width {width})")
    compare(__file__, ["--ckpt", str(ckpt), "--width", str(width)], args.rounds)
    tmp.cleanup()


def compare(script: str, worker_args: list[str], rounds: int, show_rounds: bool = False) -> None:
    """Run ``script --worker plain|adaptive WORKER_ARGS`` in fresh processes, alternating A/B for ``rounds`` rounds
    after a warm-up round (page cache); print the medians of time and peak RSS and the ratios adaptive/plain."""
    results: dict[str, list[dict]] = {"plain": [], "adaptive": []}
    order = ["plain", "adaptive"]
    for r in range(rounds + 1):
        for method in order if r % 2 == 0 else order[::-1]:
            out = subprocess.run([sys.executable, script, "--worker", method, *worker_args],
                                 capture_output=True, text=True, check=True)
            res = json.loads(out.stdout.strip().splitlines()[-1])
            if r > 0:  # round 0 warms the page cache
                results[method].append(res)
        if r > 0 and show_rounds:
            print(f"round {r}: plain {results['plain'][-1]['time']:.3f} s, adaptive "
                  f"{results['adaptive'][-1]['time']:.3f} s")
    med = {m: {k: statistics.median(x[k] for x in v) for k in ("time", "peak_rss_mb", "rss_before_mb")}
           for m, v in results.items()}
    for m in order:
        print(f"{m:9s} load time {med[m]['time']:.3f} s   peak RSS {med[m]['peak_rss_mb']:.0f} MiB "
              f"(network built: {med[m]['rss_before_mb']:.0f} MiB)")
    t_ratio = med["adaptive"]["time"] / med["plain"]["time"]
    m_ratio = med["adaptive"]["peak_rss_mb"] / med["plain"]["peak_rss_mb"]
    print(f"time ratio adaptive/plain: {t_ratio:.3f} (target <= 1.10)")
    print(f"peak-RSS ratio adaptive/plain: {m_ratio:.3f} (target <= 1.10)")


if __name__ == "__main__":
    main()
