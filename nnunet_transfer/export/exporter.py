"""Export one fold of a trained nnU-Net model to TorchScript or ONNX, verified before anything is written.

Steps: read the model folder and the fold's checkpoint; build the network from the plans with the checkpoint's weights
(deep supervision off, eval mode, verified tensor by tensor); export it into a temporary folder; reload the export
(``torch.jit.load`` / onnxruntime on the CPU); compare its tensors with the checkpoint's (TorchScript: its
``state_dict``; ONNX: its initializers, each named after a network tensor) and its outputs with a second eager
network freshly loaded from the checkpoint, on random inputs of the patch size (batch 1 and 2) and of a second
spatial size when the spatial axes are dynamic. Only when all of it agrees are the export and its JSON moved to
their places; otherwise ExportRefusedError (exit 1) and nothing is written.

The weight comparison is what makes an export with random or another fold's weights impossible: whatever network
object is handed over (:func:`export_network`), the file must hold exactly the chosen fold's tensors.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nnunet_transfer.core.adapters import is_adapter_key
from nnunet_transfer.core.io import write_json_atomic
from nnunet_transfer.core.modules import unwrap_network
from nnunet_transfer.errors import ExportError, ExportRefusedError
from nnunet_transfer.export.metadata import inference_metadata, package_versions, total_stride
from nnunet_transfer.export.model_folder import build_fold_network
from nnunet_transfer.export.verify import (
    DEFAULT_RTOL,
    TOLERANCE_RULE,
    OutputCheck,
    WeightCheck,
    check_outputs,
    compare_weights,
    input_shapes,
)
from nnunet_transfer.nnunet.model_folder import (
    DEFAULT_CHECKPOINT,
    FoldCheckpoint,
    ModelFolder,
    read_fold_checkpoint,
    read_model_folder,
)
from nnunet_transfer.nnunet.networks import disable_deep_supervision

__all__ = ["FORMATS", "ExportResult", "export_model", "export_network", "metadata_path"]

FORMATS = ("torchscript", "onnx")
_SUFFIX = {"torchscript": ".pt", "onnx": ".onnx"}


@dataclass
class ExportResult:
    """The written export, its JSON, and the JSON's content."""

    path: Path
    metadata_path: Path
    metadata: dict[str, Any]


def metadata_path(out: str | Path) -> Path:
    """The JSON beside an export: the export's file name with ``.json`` appended (``model.onnx.json``)."""
    out = Path(out)
    return out.with_name(out.name + ".json")


def _check_request(fmt: str, out: Path, overwrite: bool) -> dict[str, str]:
    if fmt not in FORMATS:
        raise ExportError(f"format {fmt!r}: unknown; choose one of {', '.join(FORMATS)}")
    versions: dict[str, str] = {}
    if fmt == "onnx":
        from nnunet_transfer.export.onnx import require_onnx

        versions = require_onnx()
    for path in (out, metadata_path(out)):
        if path.is_dir():
            raise ExportError(f"output {path}: is a folder; give a file name, e.g. {path / ('model' + _SUFFIX[fmt])}")
        if path.exists() and not overwrite:
            raise ExportError(f"output {path}: exists already; choose another name or pass --overwrite")
    return versions


def _existing_ancestor(path: Path) -> Path:
    path = path.resolve()
    for parent in path.parents:
        if parent.is_dir():
            return parent
    return Path(tempfile.gettempdir())


def _say(echo: Callable[[str], None] | None, text: str) -> None:
    if echo is not None:
        echo(text)


@dataclass
class _Attempt:
    dynamic_spatial: bool
    weights: WeightCheck
    outputs: list[OutputCheck]
    info: dict[str, Any]

    @property
    def passed(self) -> bool:
        return self.weights.passed and all(c.passed for c in self.outputs)

    def only_spatial_failed(self) -> bool:
        """Batch 1 and 2 at the patch size agree; the second spatial size does not."""
        return (self.weights.passed and len(self.outputs) > 2 and all(c.passed for c in self.outputs[:2])
                and not all(c.passed for c in self.outputs[2:]))


def _alias_groups(network: nn.Module) -> dict[str, tuple[str, ...]]:
    """name -> every name under which the network's state dict holds the same tensor."""
    by_id: dict[int, list[str]] = {}
    for name, t in network.state_dict(keep_vars=True).items():
        by_id.setdefault(id(t), []).append(name)
    return {n: tuple(names) for names in by_id.values() for n in names}


def _torchscript_attempt(network: nn.Module, reference: nn.Module, ckpt: FoldCheckpoint, example: torch.Tensor,
                         path: Path, shapes: list[tuple[int, ...]], rtol: float, dynamic: bool) -> _Attempt:
    from nnunet_transfer.export.torchscript import export_torchscript, load_torchscript, torchscript_weights

    export_torchscript(network, example, path)
    module = load_torchscript(path)
    weights = compare_weights(torchscript_weights(module), ckpt.state_dict, "TorchScript state_dict")

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return module(x)

    outputs = check_outputs(run, reference, shapes, rtol) if weights.passed else []
    info = {"input_name": None, "output_name": None, "method": "torch.jit.trace (not frozen)"}
    return _Attempt(dynamic, weights, outputs, info)


def _onnx_attempt(network: nn.Module, reference: nn.Module, ckpt: FoldCheckpoint, example: torch.Tensor,
                  path: Path, shapes: list[tuple[int, ...]], rtol: float, stride: list[int] | None) -> _Attempt:
    from nnunet_transfer.export.onnx import INPUT_NAME, OUTPUT_NAME, export_onnx, onnx_initializers, onnx_runner

    exported = export_onnx(network, example, path, stride)
    initializers = onnx_initializers(path)
    groups = _alias_groups(network)
    # the tensors the forward pass uses (unknown: every floating-point tensor must be there)
    used = exported.used if exported.used is not None else {k for k, t in ckpt.state_dict.items()
                                                             if t.is_floating_point()}
    required = sorted({groups.get(n, (n,)) for n in used})
    not_used = sorted({g[0] for g in groups.values()} - {g[0] for g in required})
    weights = compare_weights(initializers, ckpt.state_dict, "ONNX initializers", required=required,
                              strict_names=False, not_used=not_used)
    outputs = check_outputs(onnx_runner(path), reference, shapes, rtol) if weights.passed else []
    info = {"input_name": INPUT_NAME, "output_name": OUTPUT_NAME, "input_dims": exported.input_dims,
            "output_dims": exported.output_dims, "opset": exported.opset,
            "method": "torch.onnx.export(dynamo=True, optimize=False)",
            "initializers": len(initializers)}
    return _Attempt(stride is not None, weights, outputs, info)


def export_network(network: nn.Module, folder: ModelFolder, checkpoint: FoldCheckpoint, fmt: str, out: str | Path,
                   *, overwrite: bool = False, rtol: float = DEFAULT_RTOL,
                   echo: Callable[[str], None] | None = None, trainer: str | type | None = None) -> ExportResult:
    """Export ``network`` as fold ``checkpoint.fold`` of ``folder``: refused (ExportRefusedError, exit 1, nothing
    written) unless the written file holds exactly that checkpoint's tensors and computes what an eager network
    freshly loaded from it computes (:data:`~nnunet_transfer.export.verify.TOLERANCE_RULE`).

    ``network`` is unwrapped (DDP, torch.compile), put in eval mode and its deep supervision switched off.
    ExportError (exit 2) for an unknown format, a missing ONNX extra, or an existing output without ``overwrite``.
    The reference network is built by ``trainer`` (default: the checkpoint's, see :func:`build_fold_network`).
    """
    out = Path(out)
    extra_versions = _check_request(fmt, out, overwrite)
    facts = folder.facts()
    network = unwrap_network(network)
    disable_deep_supervision(network)
    network.eval()
    before = compare_weights(network.state_dict(), checkpoint.state_dict, "the network to export")
    if not before.passed:
        raise ExportRefusedError(f"refused: the network to export does not hold the weights of {checkpoint.path} "
                                 f"(fold {checkpoint.fold}): {before.describe()}; nothing written")
    reference = build_fold_network(folder, checkpoint, trainer)  # independent of ``network``: the outputs' yardstick
    stride = total_stride(facts.configuration)
    patch = facts.patch_size
    can_be_dynamic = stride is not None and all(p % s == 0 and p >= s for p, s in zip(patch, stride, strict=True))
    example = torch.randn(2, facts.num_input_channels, *patch, generator=torch.Generator().manual_seed(1))
    try:
        with torch.inference_mode():
            probe = network(example[:1])
    except Exception as e:
        msg = (str(e).strip().splitlines() or [""])[-1][:300]
        raise ExportError(f"the network of {folder.path.name} cannot run on an input of the plans' patch size "
                          f"{tuple(example[:1].shape)}: {type(e).__name__}: {msg}") from None
    if not isinstance(probe, torch.Tensor):
        raise ExportRefusedError(f"refused: the network returns a {type(probe).__name__}, not one tensor (its deep "
                                 "supervision cannot be switched off through decoder.deep_supervision)")

    workdir = Path(tempfile.mkdtemp(prefix=".nnunet-transfer-export-", dir=_existing_ancestor(out)))
    try:
        tmp = workdir / ("export" + _SUFFIX[fmt])
        attempt: _Attempt | None = None
        for dynamic in ([True, False] if can_be_dynamic else [False]):
            shapes = input_shapes(facts.num_input_channels, patch, stride, dynamic)
            try:
                if fmt == "torchscript":
                    attempt = _torchscript_attempt(network, reference, checkpoint, example, tmp, shapes, rtol, dynamic)
                else:
                    attempt = _onnx_attempt(network, reference, checkpoint, example, tmp, shapes, rtol,
                                            stride if dynamic else None)
            except Exception as e:
                if dynamic:  # e.g. torch.export cannot prove the spatial constraints: try the patch size only
                    continue
                msg = (str(e).strip().splitlines() or [""])[-1][:400]
                raise ExportRefusedError(f"refused: the {fmt} exporter failed: {type(e).__name__}: {msg}; "
                                         "nothing written") from None
            if attempt.passed or not attempt.only_spatial_failed():
                break
        assert attempt is not None
        if not attempt.weights.passed:
            raise ExportRefusedError(f"refused: the {fmt} export does not hold the weights of {checkpoint.path} "
                                     f"(fold {checkpoint.fold}): {attempt.weights.describe()}; nothing written")
        failed = [c for c in attempt.outputs if not c.passed]
        if failed:
            raise ExportRefusedError(f"refused: the {fmt} export's output differs from the eager network's "
                                     f"({TOLERANCE_RULE}, rtol {rtol:g}): {failed[0].describe()}; nothing written")

        _say(echo, attempt.weights.describe())
        _say(echo, f"outputs against the eager network ({TOLERANCE_RULE}, rtol {rtol:g}):")
        for c in attempt.outputs:
            _say(echo, "  " + c.describe())
        verification = {
            "tolerance": {"rule": TOLERANCE_RULE, "rtol": rtol},
            "outputs": [c.__dict__ for c in attempt.outputs],
            "max_relative_diff": max(c.relative_diff for c in attempt.outputs),
            "weights": attempt.weights.to_dict(),
            "reference": "an eager network built from plans.json and freshly loaded from the checkpoint, eval mode",
        }
        versions = {**package_versions(), **extra_versions}
        metadata = inference_metadata(folder, checkpoint, network, fmt=fmt, file_name=out.name,
                                      dynamic_spatial=attempt.dynamic_spatial, stride=stride,
                                      export_info=attempt.info, verification=verification, versions=versions,
                                      built_by=_trainer_name(trainer))
        write_json_atomic(workdir / "metadata.json", metadata)
        out.parent.mkdir(parents=True, exist_ok=True)
        json_out = metadata_path(out)
        os.replace(tmp, out)
        try:
            os.replace(workdir / "metadata.json", json_out)
        except BaseException:
            out.unlink(missing_ok=True)
            raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return ExportResult(out, json_out, metadata)


def _trainer_name(trainer: str | type | None) -> str | None:
    return trainer if trainer is None or isinstance(trainer, str) else trainer.__name__


def _merged(folder: ModelFolder, checkpoint: FoldCheckpoint, trainer: str | type | None
            ) -> tuple[FoldCheckpoint, str | type]:
    """A LoRA fold's checkpoint with its adapters merged (the recipe in the plans gives their scale), and the trainer
    that builds the plain network: ``trainer`` if given, else the nnU-Net trainer whose network ours builds."""
    from nnunet_transfer.core.adapters import merge_trained_adapters
    from nnunet_transfer.export.share import stock_trainer_for

    weights = merge_trained_adapters(checkpoint.state_dict, folder.plans, checkpoint.path)
    return (replace(checkpoint, state_dict=weights),
            trainer if trainer is not None else stock_trainer_for(checkpoint.trainer_name))


def export_model(model_folder: str | Path, fold: int | str, fmt: str, out: str | Path, *,
                 checkpoint_name: str = DEFAULT_CHECKPOINT, overwrite: bool = False, rtol: float = DEFAULT_RTOL,
                 echo: Callable[[str], None] | None = None, trainer: str | type | None = None) -> ExportResult:
    """``nnunet-transfer export``: fold ``fold`` of the ``Trainer__Plans__Configuration`` folder to ``out``
    (``"torchscript"`` or ``"onnx"``), with the JSON at :func:`metadata_path`. See :func:`export_network`.

    The network is built by the checkpoint's trainer class, as nnU-Net's predictor builds it; where that class is not
    installed here (a model trained with someone's own trainer), ``trainer`` names an installed one that builds the
    same network (e.g. ``"nnUNetTrainer"``): the weights are still checked tensor by tensor."""
    out = Path(out)
    _check_request(fmt, out, overwrite)  # before the (slow) reading: bad requests fail at once
    folder = read_model_folder(model_folder)
    checkpoint = read_fold_checkpoint(folder, fold, checkpoint_name)
    _say(echo, f"model: {folder.path} fold {checkpoint.fold} ({checkpoint.path.name}, epoch {checkpoint.epoch}, "
               f"trainer {checkpoint.trainer_name}, sha256 {checkpoint.sha256[:12]}...)")
    if trainer is not None:
        _say(echo, f"note: the network is built by {_trainer_name(trainer)} (--trainer), not by the checkpoint's "
                   f"{checkpoint.trainer_name}")
    elif checkpoint.trainer_name != folder.trainer:
        _say(echo, f"note: the checkpoint was written by {checkpoint.trainer_name}, the folder is named after "
                   f"{folder.trainer}; the network is built by {checkpoint.trainer_name} (as nnU-Net's predictor does)")
    if any(is_adapter_key(k) for k in checkpoint.state_dict):
        checkpoint, trainer = _merged(folder, checkpoint, trainer)
        _say(echo, f"LoRA adapters merged into the weights: the export is the plain network "
                   f"{_trainer_name(trainer)} builds, with no adapter layers")
    network = build_fold_network(folder, checkpoint, trainer)
    result = export_network(network, folder, checkpoint, fmt, out, overwrite=overwrite, rtol=rtol, echo=echo,
                            trainer=trainer)
    md = result.metadata["export"]
    spatial = (f"spatial axes dynamic in multiples of {md['spatial_multiple_of']}" if md["dynamic_spatial"]
               else f"spatial size fixed to the patch {result.metadata['patch_size']}")
    _say(echo, f"wrote {result.path} ({fmt}; dynamic batch, {spatial}) and {result.metadata_path}")
    return result
