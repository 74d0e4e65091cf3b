"""Loading an nnssl ResEnc-L checkpoint (about 100 M parameters): adaptive vs plain, side by side.

An nnssl checkpoint in released form (``network_weights`` of a ResEnc-L MAE network, its ``nnssl_adaptation_plan``
naming the ``ResEncL`` preset, ``citations``) is written once. The target is the ResEnc-L that
``nnunet-transfer plans --from`` writes plans for (3 segmentation outputs). Each method runs in its own fresh process
(peak RSS its own), alternating A/B for ``--rounds`` rounds after one warm-up round each (page cache):

* plain: ``torch.load(mmap=True, weights_only=True)`` + ``load_state_dict(strict=False)`` of the same tensors the
  adaptive load takes (stem and encoder);
* adaptive: :func:`nnunet_transfer.load_pretrained` (format and plan validation, key mapping by the declared stem and
  encoder, the report and the guard).

Printed: median load time and peak RSS of each, and the ratios adaptive/plain (goal <= 1.10 each).

    python benchmarks/bench_nnssl_load.py --rounds 5
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench_load import compare, measure  # the side-by-side runner of the generic load benchmark


def build_resenc_l(num_classes: int):
    import pydoc

    import torch

    from nnunet_transfer.core.nnssl import PRESETS

    class_name, kwargs, imports = PRESETS["ResEncL"]
    kwargs = dict(kwargs)
    for k in imports:
        kwargs[k] = pydoc.locate(kwargs[k]) if kwargs[k] else None
    torch.manual_seed(0)
    return pydoc.locate(class_name)(input_channels=1, num_classes=num_classes, deep_supervision=True, **kwargs)


def worker(method: str, ckpt: str) -> None:
    import torch

    from nnunet_transfer import load_pretrained

    net = build_resenc_l(3)

    def load() -> None:
        if method == "plain":
            sd = torch.load(ckpt, mmap=True, weights_only=True, map_location="cpu")["network_weights"]
            net.load_state_dict({k: v for k, v in sd.items() if k.startswith("encoder.")}, strict=False)
        else:
            report = load_pretrained(net, ckpt)
            assert report.coverage == 1.0, report.summary()

    measure(load)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--worker", choices=["plain", "adaptive"], help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.ckpt)
        return

    import torch

    net = build_resenc_l(1)  # the MAE reconstructs one channel
    n_params = sum(p.numel() for p in net.parameters())
    plan = {
        "architecture_plans": {"arch_class_name": "ResEncL", "arch_kwargs": None,
                               "arch_kwargs_requiring_import": None},
        "pretrain_plan": {"configurations": {"onemmiso": {"spacing": [1, 1, 1], "patch_size": [160, 160, 160],
                                                          "normalization_schemes": ["ZScoreNormalization"]}}},
        "pretrain_num_input_channels": 1, "recommended_downstream_patchsize": [160, 160, 160],
        "key_to_encoder": "encoder.stages", "key_to_stem": "encoder.stem",
        "keys_to_in_proj": ["encoder.stem.convs.0.conv", "encoder.stem.convs.0.all_modules.0"], "key_to_lpe": None,
    }
    tmp = tempfile.TemporaryDirectory(dir=args.workdir)
    ckpt = Path(tmp.name) / "checkpoint_final.pth"
    torch.save({"network_weights": net.state_dict(), "init_args": {}, "trainer_name": "BaseMAETrainer",
                "nnssl_adaptation_plan": plan, "citations": [{"title": "benchmark"}]}, ckpt)
    del net
    print(f"checkpoint: {ckpt.stat().st_size / 2**20:.0f} MiB, ResEnc-L MAE network of {n_params / 1e6:.1f} M "
          "parameters")
    compare(__file__, ["--ckpt", str(ckpt)], args.rounds, show_rounds=True)
    tmp.cleanup()


if __name__ == "__main__":
    main()
