"""LoRA against full fine-tuning, the default recipe and the frozen encoder, side by side, on nnU-Net's networks.

For a PlainConvUNet and a ResidualEncoderUNet (nnU-Net's 3d building blocks, 5 stages, widths ``--width`` x
(1, 2, 4, 8, 10)), each configuration runs in its own fresh process (so that peak memory is its own), alternating over
``--rounds`` rounds: the network is built, adapters injected where the recipe has them, the fine-tuning engine
(:class:`~nnunet_transfer.core.schedules.engine.FineTuneEngine`) built as the trainer builds it, and ``--iters``
training steps (forward, nnU-Net-like deep-supervision loss, backward, optimizer step) run on a random batch. Step
times come from one more process that holds every configuration and interleaves their steps (``--iters`` x
``--rounds`` each), so that the machine's load weighs on all alike.
Printed per network: trainable parameters, optimizer state bytes, median step time and training-step peak memory
(CUDA: ``max_memory_allocated``; CPU: the process's peak RSS minus its RSS before the first step), each also as a
ratio to full fine-tuning; and the size of a fold's adapter file (peft's format, what ``nnunet-transfer adapters
extract`` writes) against the full checkpoint's network weights.

Configurations: ``full_ft`` (everything trains, encoder at 0.1x), ``default@0`` / ``default@end`` (the default recipe
at its first epoch: encoder frozen; at its last: everything trains), ``frozen_encoder`` (decoder_only), ``lora_r4``,
``lora_r8``, ``lora_r16`` (the lora recipe at ranks 4, 8, 16).

    python benchmarks/bench_lora.py --patch 32 --width 8 --iters 4 --rounds 1      # small, CPU, about a minute
    python benchmarks/bench_lora.py --patch 128 --width 32 --batch 2 --iters 20 --rounds 3 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = ("full_ft", "default@0", "default@end", "frozen_encoder", "lora_r4", "lora_r8", "lora_r16")
NETWORKS = ("PlainConvUNet", "ResidualEncoderUNet")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _network(name: str, width: int):
    import torch
    from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
    from torch import nn

    features = [width * f for f in (1, 2, 4, 8, 10)]
    common = dict(input_channels=1, n_stages=5, features_per_stage=features, conv_op=nn.Conv3d,
                  kernel_sizes=[[3, 3, 3]] * 5, strides=[[1, 1, 1]] + [[2, 2, 2]] * 4, num_classes=3,
                  n_conv_per_stage_decoder=[2] * 4, conv_bias=True, norm_op=nn.InstanceNorm3d,
                  norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU,
                  nonlin_kwargs={"inplace": True}, deep_supervision=True)
    torch.manual_seed(0)
    if name == "PlainConvUNet":
        return PlainConvUNet(n_conv_per_stage=[2] * 5, **common)
    return ResidualEncoderUNet(n_blocks_per_stage=[1, 3, 4, 6, 6], **common)


def _recipe(config: str):
    from nnunet_transfer.core.schedules.recipes import Adapters, load_recipe

    if config.startswith("lora_r"):
        rank = int(config.removeprefix("lora_r"))
        return load_recipe("lora").model_copy(update={"adapters": Adapters(rank=rank, alpha=2.0 * rank)})
    return load_recipe({"full_ft": "full_ft", "frozen_encoder": "decoder_only"}.get(config, "default"))


def _setup(network_name: str, config: str, args: argparse.Namespace):
    """The network, its engine in the configuration's state, and one training step on a fixed random batch."""
    import torch

    from nnunet_transfer.core.adapters import inject_adapters
    from nnunet_transfer.core.schedules.engine import FineTuneEngine

    device = torch.device(args.device)
    net = _network(network_name, args.width)
    recipe = _recipe(config)
    if recipe.adapters is not None:
        inject_adapters(net, recipe.adapters)
    net.to(device)
    engine = FineTuneEngine(net, recipe, 1000, 0.01, 3e-5, lead_group_first=True)
    engine.set_trainable(999 if config == "default@end" else 0)
    net.train()
    engine.norms_to_eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 1, *[args.patch] * 3, generator=g).to(device)
    targets = [torch.randn(args.batch, 3, *[args.patch // 2**k] * 3, generator=g).to(device) for k in range(5)]

    def step() -> None:
        engine.optimizer.zero_grad(set_to_none=True)
        outs = net(x)
        loss = sum(((o - t) ** 2).mean() / 2**k for k, (o, t) in enumerate(zip(outs, targets, strict=False)))
        loss.backward()
        engine.optimizer.step()

    return net, engine, step


def timing_worker(network_name: str, args: argparse.Namespace) -> dict[str, float]:
    """Median step time of every configuration in one process, interleaved step by step (each round in another
    order), so that the machine's load weighs on all alike."""
    import torch

    torch.set_num_threads(args.threads)
    steps = {c: _setup(network_name, c, args)[2] for c in CONFIGS}
    for step in steps.values():
        step()  # warm-up
    times: dict[str, list[float]] = {c: [] for c in CONFIGS}
    for i in range(args.iters * args.rounds):
        for c in (CONFIGS if i % 2 == 0 else CONFIGS[::-1]):
            t0 = time.perf_counter()
            steps[c]()
            if args.device == "cuda":
                torch.cuda.synchronize()
            times[c].append(time.perf_counter() - t0)
    return {c: statistics.median(t) for c, t in times.items()}


def worker(network_name: str, config: str, args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    net, engine, step = _setup(network_name, config, args)

    # peak memory of training from here (optimizer state, gradients, activations): CUDA's allocator peak, or the
    # process's peak RSS (ru_maxrss, the kernel's own maximum) above the RSS before the first step
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_mb()
    for _ in range(args.iters + 1):  # the first creates the optimizer state
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    peak = ((torch.cuda.max_memory_allocated() - base) / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base)
    state_bytes = sum(t.numel() * t.element_size() for s in engine.optimizer.state.values() for t in s.values()
                      if torch.is_tensor(t))
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    return {"peak_mb": peak, "optimizer_bytes": state_bytes,
            "trainable": trainable, "total": sum(p.numel() for p in net.parameters())}


def file_sizes(network_name: str, width: int) -> dict[str, int]:
    """Bytes of a full checkpoint's network weights and of a rank-8 adapter folder of the same fold."""
    import torch

    from nnunet_transfer.core.adapters import inject_adapters, save_adapters
    from nnunet_transfer.core.schedules.recipes import load_recipe

    net = _network(network_name, width)
    adapters = load_recipe("lora").adapters
    inject_adapters(net, adapters)
    state = net.state_dict()
    base_keys = {k for k in state if k.endswith(".base_layer.weight")}
    with tempfile.TemporaryDirectory() as tmp:
        torch.save({"network_weights": state}, Path(tmp) / "full.pth")
        folder = save_adapters(Path(tmp) / "adapters", state, adapters, base_keys, {"base_checkpoint_sha256": "-"})
        return {"full_checkpoint": (Path(tmp) / "full.pth").stat().st_size,
                "adapter_files": sum(p.stat().st_size for p in folder.iterdir())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--patch", type=int, default=32)
    p.add_argument("--width", type=int, default=8, help="features of stage 0 (nnU-Net: 32)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--iters", type=int, default=4)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--worker", nargs=2, metavar=("NETWORK", "CONFIG"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        network_name, config = args.worker
        result = timing_worker(network_name, args) if config == "timing" else worker(network_name, config, args)
        print("RESULT " + json.dumps(result))
        return
    passthrough = [f"--{k}={getattr(args, k)}" for k in ("patch", "width", "batch", "iters", "threads", "device")]
    for network_name in NETWORKS:
        def run_worker(config: str, network_name: str = network_name) -> dict:
            out = subprocess.run([sys.executable, __file__, *passthrough, f"--rounds={args.rounds}", "--worker",
                                  network_name, config], capture_output=True, text=True, check=True,
                                 env={**os.environ})
            return json.loads(next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT "))[7:])

        runs: dict[str, list[dict]] = {c: [] for c in CONFIGS}
        for r in range(args.rounds):
            for config in (CONFIGS if r % 2 == 0 else CONFIGS[::-1]):
                runs[config].append(run_worker(config))
        times = run_worker("timing")
        rows = {c: {"time": times[c], "peak_mb": statistics.median(r["peak_mb"] for r in rs),
                    **{k: rs[0][k] for k in ("optimizer_bytes", "trainable", "total")}} for c, rs in runs.items()}
        ref = rows["full_ft"]
        print(f"\n{network_name} ({ref['total'] / 1e6:.2f} M parameters; patch {args.patch}^3, batch {args.batch}, "
              f"width {args.width}, {args.device}, {args.iters} steps x {args.rounds} rounds)")
        print(f"{'config':<15}{'trainable':>12}{'ratio':>8}{'optim MB':>10}{'ratio':>8}{'step s':>9}{'ratio':>8}"
              f"{'peak MB':>9}{'ratio':>8}")
        for c, row in rows.items():
            optim = row["optimizer_bytes"]
            print(f"{c:<15}{row['trainable']:>12,}{row['trainable'] / ref['trainable']:>8.3f}"
                  f"{optim / 2**20:>10.2f}{optim / max(ref['optimizer_bytes'], 1):>8.3f}"
                  f"{row['time']:>9.3f}{row['time'] / ref['time']:>8.3f}"
                  f"{row['peak_mb']:>9.1f}{row['peak_mb'] / max(ref['peak_mb'], 1e-9):>8.3f}")
        sizes = file_sizes(network_name, args.width)
        print(f"files: full checkpoint weights {sizes['full_checkpoint'] / 2**20:.2f} MB, rank-8 adapter folder "
              f"{sizes['adapter_files'] / 2**20:.2f} MB (ratio {sizes['adapter_files'] / sizes['full_checkpoint']:.3f}"
              "; the adapter file also holds the fully trained decoder and heads)")


if __name__ == "__main__":
    main()
