"""Does the Primus token order matter for the fine-tuned result? Faithful order (PrimusHWD) vs today's (Primus).

A synthetic task with a strong positional prior: every volume holds a few identical bright balls in noise; a ball is
foreground only if its centre lies in the lower half of the first spatial axis (``w``). Intensity says nothing about
the class: only position does, and along one of the two axes the token orders swap.

1. Pretraining (a proxy for nnssl's EvaMAE, same token order ``(h w d)``): a PrimusHWD learns the task on
   ``--pretrain-cases`` volumes for ``--pretrain-steps`` steps; its weights are saved as an nnssl checkpoint
   (``network_weights``, ``nnssl_adaptation_plan`` naming Primus, ``trainer_name`` BaseEvaMAETrainer). The
   pretraining is supervised here (an MAE of this size learns little position in minutes); what it provides is what
   matters for the question: positional and attention weights learned in one token order.
2. Fine-tuning, for each order with the same data, seeds and step count: the network ``plans --from`` builds for the
   checkpoint (PrimusHWD, faithful) and the stock Primus with the same plans otherwise (today's order), both loaded by
   :func:`nnunet_transfer.load_pretrained` (patch decoder fresh), ``--finetune-steps`` steps of AdamW on
   ``--finetune-cases`` volumes.
3. Dice of the foreground on ``--test-cases`` held-out volumes, per seed; also before fine-tuning (step 0, decoder
   fresh: chance) and the pretrained network itself (upper reference).

Printed: a table per order (mean and per-seed Dice), and a JSON line. A small CPU run (a few minutes on 2 cores):

    python benchmarks/bench_nnssl_token_order.py --size 32 --pretrain-steps 300 --finetune-steps 60 --seeds 3

On a GPU add ``--device cuda`` and raise the sizes. Measured once (that command, CPU, 2 shared cores, 456 s):
pretrained network Dice 0.792; fine-tuned faithful (PrimusHWD) 0.154 (seeds 0.199, 0.180, 0.085), today's (Primus)
0.116 (0.136, 0.156, 0.056); 0.01 for both before fine-tuning.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

PRIMUS = {"embed_dim": 48, "patch_embed_size": [4, 4, 4], "eva_depth": 2, "eva_numheads": 2, "init_values": 0.1,
          "scale_attn_inner": True}


def make_cases(n: int, size: int, seed: int, balls: int = 4, radius: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` volumes ``[n, 1, S, S, S]`` and their labels ``[n, S, S, S]`` (1 = ball centred in the lower half of w)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(size)] * 3, indexing="ij"))
    images = rng.normal(0, 0.2, (n, 1, size, size, size)).astype(np.float32)
    labels = np.zeros((n, size, size, size), dtype=np.int64)
    for i in range(n):
        for _ in range(balls):
            c = rng.integers(radius, size - radius, 3)
            ball = ((grid - c[:, None, None, None]) ** 2).sum(0) <= radius ** 2
            images[i, 0][ball] += 1.0
            if c[0] < size // 2:
                labels[i][ball] = 1
    return torch.from_numpy(images), torch.from_numpy(labels)


def dice(network: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, device: str) -> float:
    network.eval()
    inter = total = 0.0
    with torch.no_grad():
        for i in range(len(images)):
            pred = network(images[i:i + 1].to(device)).argmax(1).cpu()[0]
            inter += float(((pred == 1) & (labels[i] == 1)).sum())
            total += float((pred == 1).sum() + (labels[i] == 1).sum())
    return 2 * inter / total if total else 1.0


def train(network: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int, seed: int, lr: float,
          device: str, batch: int = 2) -> None:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(network.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.05)
    weight = torch.tensor([1.0, 3.0], device=device)  # foreground is rare
    network.train()
    for _ in range(steps):
        idx = torch.randint(len(images), (batch,), generator=g)
        out = network(images[idx].to(device))
        loss = F.cross_entropy(out, labels[idx].to(device), weight=weight)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0)
        opt.step()


def build(class_name: str, size: int, seed: int) -> torch.nn.Module:
    import pydoc

    torch.manual_seed(seed)
    return pydoc.locate(class_name)(input_channels=1, num_classes=2, input_shape=(size,) * 3, **PRIMUS)


def save_checkpoint(network: torch.nn.Module, path: Path, size: int) -> Path:
    """The pretrained network as nnssl's trainer saves it (its decoder then stays fresh in every fine-tune)."""
    plan = {"architecture_plans": {"arch_class_name": "Primus", "arch_kwargs": dict(PRIMUS),
                                   "arch_kwargs_requiring_import": []},
            "pretrain_plan": {"dataset_name": "Dataset999_TokenOrder", "plans_name": "nnsslPlans",
                              "configurations": {"onemmiso": {"spacing": [1.0, 1.0, 1.0],
                                                              "patch_size": [size] * 3}}},
            "pretrain_num_input_channels": 1, "recommended_downstream_patchsize": [size] * 3,
            "key_to_encoder": "eva", "key_to_stem": "down_projection", "keys_to_in_proj": ["down_projection.proj"],
            "key_to_lpe": "eva.pos_embed"}
    torch.save({"network_weights": {k: v.cpu() for k, v in network.state_dict().items()},
                "init_args": {"device": torch.device("cpu")}, "trainer_name": "BaseEvaMAETrainer",
                "nnssl_adaptation_plan": plan}, path)
    return path


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--pretrain-cases", type=int, default=64)
    ap.add_argument("--pretrain-steps", type=int, default=300)
    ap.add_argument("--finetune-cases", type=int, default=8)
    ap.add_argument("--finetune-steps", type=int, default=60)
    ap.add_argument("--test-cases", type=int, default=16)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from nnunet_transfer import load_pretrained, read_checkpoint
    from nnunet_transfer.core.primus import PRIMUS_HWD
    from nnunet_transfer.nnunet.plans.nnssl import nnunet_plans

    start = time.perf_counter()
    pre_x, pre_y = make_cases(args.pretrain_cases, args.size, seed=1000)
    ft_x, ft_y = make_cases(args.finetune_cases, args.size, seed=2000)
    te_x, te_y = make_cases(args.test_cases, args.size, seed=3000)
    pretrained = build(PRIMUS_HWD, args.size, seed=0).to(args.device)
    train(pretrained, pre_x, pre_y, args.pretrain_steps, 0, 1e-3, args.device)
    upper = dice(pretrained, te_x, te_y, args.device)
    folder = Path(tempfile.mkdtemp(prefix="token_order_"))
    ckpt = save_checkpoint(pretrained, folder / "checkpoint_final.pth", args.size)
    nnssl = read_checkpoint(ckpt).nnssl
    faithful = nnunet_plans(nnssl.plan, token_order=nnssl.token_order)["configurations"]["3d_fullres"]
    assert faithful["architecture"]["network_class_name"] == PRIMUS_HWD, faithful["architecture"]
    today = nnunet_plans(nnssl.plan, token_order="whd")["configurations"]["3d_fullres"]
    orders = {"faithful (PrimusHWD)": faithful["architecture"]["network_class_name"],
              "today (Primus)": today["architecture"]["network_class_name"]}
    results: dict[str, dict[str, list[float]]] = {}
    for label, class_name in orders.items():
        results[label] = {"step0": [], "finetuned": []}
        for seed in range(args.seeds):
            net = build(class_name, args.size, seed=100 + seed)
            load_pretrained(net, ckpt)
            net.to(args.device)
            results[label]["step0"].append(dice(net, te_x, te_y, args.device))
            train(net, ft_x, ft_y, args.finetune_steps, seed, args.lr, args.device)
            results[label]["finetuned"].append(dice(net, te_x, te_y, args.device))
    seconds = time.perf_counter() - start

    print(f"synthetic positional task, {args.size}^3, pretraining {args.pretrain_steps} steps on "
          f"{args.pretrain_cases} cases (tokens (h w d)); fine-tuning {args.finetune_steps} steps on "
          f"{args.finetune_cases} cases, {args.seeds} seeds; Dice on {args.test_cases} held-out cases; "
          f"device {args.device}; {seconds:.0f} s")
    print(f"  pretrained network itself (upper reference): Dice {upper:.3f}")
    for label, r in results.items():
        per_seed = ", ".join(f"{d:.3f}" for d in r["finetuned"])
        print(f"  {label:22s} fine-tuned Dice {np.mean(r['finetuned']):.3f} (seeds: {per_seed}); "
              f"before fine-tuning {np.mean(r['step0']):.3f}")
    out = {"args": vars(args), "upper": upper, "results": results, "seconds": seconds}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
