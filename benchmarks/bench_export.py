"""onnxruntime vs eager PyTorch: inference time of one patch on the CPU, for a network exported by
``nnunet-transfer export``.

The network is the one nnU-Net 2.8's ExperimentPlanner plans for a ``--patch`` patch at 1 mm isotropic spacing
(``get_pool_and_conv_props`` with a minimal feature map edge of 4; features 32 * 2^i up to 320; 2 convolutions per
stage, InstanceNorm, LeakyReLU): a model folder with a fold_0 checkpoint in nnU-Net's format is written to a temporary
folder and exported to ONNX with :func:`nnunet_transfer.export.export_model` (verified as by the CLI). Then the eager
network (eval mode, ``torch.inference_mode``, deep supervision off) and the onnxruntime session (CPUExecutionProvider,
default graph optimisations) each run one batch-1 patch: one warm-up each, then ``--rounds`` rounds that run both,
side by side, in alternating order. Printed: the median and minimum time of each and the ratios onnxruntime /
eager of the medians and of the minima.

    python benchmarks/bench_export.py --patch 64 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path


def planned(patch: list[int], channels: int, classes: int) -> tuple[dict, dict]:
    """(plans, dataset.json) of a 3d_fullres configuration as nnU-Net's ExperimentPlanner builds it for ``patch``."""
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    _, pools, kernels, patch_size, _ = get_pool_and_conv_props([1.0] * len(patch), patch, 4, 999999)
    n = len(pools)
    conf = {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
        "patch_size": [int(p) for p in patch_size], "median_image_size_in_voxels": [float(p) for p in patch_size],
        "spacing": [1.0] * len(patch), "normalization_schemes": ["ZScoreNormalization"] * channels,
        "use_mask_for_norm": [False] * channels,
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {
                "n_stages": n, "features_per_stage": [min(32 * 2**i, 320) for i in range(n)],
                "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": [list(k) for k in kernels],
                "strides": [list(p) for p in pools], "n_conv_per_stage": [2] * n,
                "n_conv_per_stage_decoder": [2] * (n - 1), "conv_bias": True,
                "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
            },
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
        },
        "batch_dice": False,
    }
    plans = {
        "dataset_name": "Dataset999_Bench", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [1.0] * len(patch),
        "original_median_shape_after_transp": [int(p) for p in patch_size], "image_reader_writer": "SimpleITKIO",
        "transpose_forward": list(range(len(patch))), "transpose_backward": list(range(len(patch))),
        "configurations": {"3d_fullres": conf}, "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            str(c): {"max": 1.0, "mean": 0.0, "median": 0.0, "min": -1.0, "percentile_00_5": -1.0,
                     "percentile_99_5": 1.0, "std": 1.0} for c in range(channels)},
    }
    labels = {"background": 0, **{f"class{i}": i for i in range(1, classes)}}
    dataset_json = {"channel_names": {str(c): f"ch{c}" for c in range(channels)}, "labels": labels,
                    "numTraining": 1, "file_ending": ".nii.gz"}
    return plans, dataset_json


def write_model_folder(root: Path, plans: dict, dataset_json: dict) -> Path:
    import torch

    from nnunet_transfer.nnunet.networks import build_network

    folder = root / plans["dataset_name"] / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset_json))
    torch.manual_seed(0)
    net = build_network(plans, "3d_fullres", dataset_json)
    torch.save({"network_weights": net.state_dict(), "current_epoch": 1000, "trainer_name": "nnUNetTrainer",
                "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": 0,
                              "dataset_json": dataset_json},
                "inference_allowed_mirroring_axes": (0, 1, 2)}, folder / "fold_0" / "checkpoint_final.pth")
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patch", type=int, nargs="+", default=[64], help="patch size (one value: a cube)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="intra-op threads of both runtimes")
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--classes", type=int, default=3)
    args = ap.parse_args()
    patch = args.patch * 3 if len(args.patch) == 1 else args.patch

    import onnxruntime as ort
    import torch

    from nnunet_transfer.export import build_fold_network, export_model, read_fold_checkpoint, read_model_folder

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        plans, dataset_json = planned(patch, args.channels, args.classes)
        folder = write_model_folder(Path(tmp), plans, dataset_json)
        start = time.perf_counter()
        result = export_model(folder, 0, "onnx", Path(tmp) / "model.onnx")
        export_time = time.perf_counter() - start
        meta = result.metadata
        kwargs = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
        model_folder = read_model_folder(folder)
        eager = build_fold_network(model_folder, read_fold_checkpoint(model_folder, 0))
        params = sum(p.numel() for p in eager.parameters())
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = ort.InferenceSession(str(result.path), options, providers=["CPUExecutionProvider"])

        x = torch.randn(1, args.channels, *meta["patch_size"], generator=torch.Generator().manual_seed(0))
        feed = {"input": x.numpy()}

        def run_eager() -> None:
            with torch.inference_mode():
                eager(x)

        def run_ort() -> None:
            session.run(None, feed)

        methods = {"eager": run_eager, "onnxruntime": run_ort}
        times: dict[str, list[float]] = {m: [] for m in methods}
        for fn in methods.values():  # warm-up
            fn()
        for r in range(args.rounds):
            order = list(methods) if r % 2 == 0 else list(reversed(methods))
            for name in order:
                t0 = time.perf_counter()
                methods[name]()
                times[name].append(time.perf_counter() - t0)

        print(f"network: PlainConvUNet as nnU-Net plans it for a {'x'.join(map(str, meta['patch_size']))} patch: "
              f"{kwargs['n_stages']} stages, features {kwargs['features_per_stage']}, {params / 1e6:.1f} M parameters")
        print(f"export: {export_time:.1f} s (onnx, verified: max relative difference "
              f"{meta['verification']['max_relative_diff']:.1e}, rtol {meta['verification']['tolerance']['rtol']:g})")
        print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, {args.threads} threads, batch 1, "
              f"{args.rounds} rounds side by side (alternating order) after one warm-up each")
        for name, ts in times.items():
            print(f"  {name:12s} median {statistics.median(ts) * 1000:8.1f} ms   min {min(ts) * 1000:8.1f} ms")
        ratio = statistics.median(times["onnxruntime"]) / statistics.median(times["eager"])
        best = min(times["onnxruntime"]) / min(times["eager"])
        print(f"ratio onnxruntime / eager: median {ratio:.2f}, min {best:.2f} (below 1: onnxruntime is faster; on a "
              "busy machine trust the min)")


if __name__ == "__main__":
    main()
