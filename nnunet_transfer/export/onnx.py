"""ONNX export through ``torch.onnx.export(dynamo=True)`` and its reload with onnxruntime (CPU).

The graph is saved without the exporter's optimisation pass (``optimize=False``): that pass folds BatchNorm into the
preceding convolution and deduplicates equal tensors, after which the file's initializers no longer equal the
checkpoint's. Unoptimised, every tensor the forward pass uses is an initializer named after the network's parameter
(one of its aliases), bit-identical to the checkpoint's, so the weights can be verified one by one; onnxruntime still
applies its own graph optimisations when it loads the file.

Dynamic axes: the batch, and each spatial axis as a multiple of the network's total stride along it
(``torch.export.Dim``); in the file they read ``batch`` and ``4*spatial0``...

The packages (onnx, onnxruntime, onnxscript) are the optional extra ``nnunet-transfer[onnx]``.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nnunet_transfer.errors import MissingExtraError

__all__ = ["ONNX_PACKAGES", "OnnxExport", "export_onnx", "onnx_initializers", "onnx_runner", "require_onnx"]

ONNX_PACKAGES = ("onnx", "onnxruntime", "onnxscript")
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def require_onnx() -> dict[str, str]:
    """The versions of the ONNX packages; MissingExtraError (exit 2) naming the extra when one is missing."""
    major, minor = (int(p) for p in torch.__version__.split(".")[:2])
    if (major, minor) < (2, 6):
        raise MissingExtraError(f"the ONNX export needs PyTorch >= 2.6 (torch.onnx.export(dynamo=True)); this is "
                                f"torch {torch.__version__}: upgrade torch or export with --format torchscript")
    versions, missing = {}, []
    for name in ONNX_PACKAGES:
        try:
            versions[name] = str(getattr(importlib.import_module(name), "__version__", "unknown"))
        except ImportError:
            missing.append(name)
    if missing:
        raise MissingExtraError(f"the ONNX export needs the optional packages {', '.join(ONNX_PACKAGES)} (missing: "
                                f"{', '.join(missing)}); install them with: pip install 'nnunet-transfer[onnx]'")
    return versions


@dataclass
class OnnxExport:
    """What the exporter did: the opset, the graph's input/output dimensions, and the network tensors that the
    forward pass uses (torch.export's graph; None if it could not be read)."""

    opset: int
    input_dims: list[str | int]
    output_dims: list[str | int]
    used: set[str] | None


def _used_tensors(program: Any) -> set[str] | None:
    ep = getattr(program, "exported_program", None)
    if ep is None:
        return None
    sig = ep.graph_signature
    lookup = {**sig.inputs_to_parameters, **sig.inputs_to_buffers}
    return {lookup[n.name] for n in ep.graph.nodes if n.op == "placeholder" and n.name in lookup and n.users}


def _dims(value_info: Any) -> list[str | int]:
    return [d.dim_param or int(d.dim_value) for d in value_info.type.tensor_type.shape.dim]


def _constant_zero(producers: dict[str, Any], value: str, depth: int = 0) -> bool:
    from onnx import helper, numpy_helper

    node = producers.get(value)
    if node is None or depth > 6:
        return False
    if node.op_type == "Constant":
        for attr in node.attribute:
            if attr.name == "value":
                arr = numpy_helper.to_array(attr.t)
            elif attr.name in ("value_float", "value_int", "value_floats", "value_ints"):
                arr = np.asarray(helper.get_attribute_value(attr))
            else:
                continue
            return arr.size > 0 and not np.any(arr)
        return False
    if node.op_type in ("Expand", "Cast", "CastLike", "Identity"):
        return _constant_zero(producers, node.input[0], depth + 1)
    return False


def _drop_synthesised_zero_biases(model: Any) -> int:
    """Remove the bias input of Conv/ConvTranspose nodes whose bias the exporter computes as zeros (a network layer
    without bias). The unoptimised graph of onnxscript 0.7 builds it with a wrong shape, (C_out, 2), which onnxruntime
    rejects; a missing bias is the same zero. Initializers (the network's own biases) are never touched. Nodes left
    without a use are removed. Returns the number of biases dropped."""
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    dropped = 0
    for node in graph.node:
        if node.op_type in ("Conv", "ConvTranspose") and len(node.input) == 3 and node.input[2] in producers \
                and _constant_zero(producers, node.input[2]):
            del node.input[2]
            dropped += 1
    while dropped:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    return dropped


def export_onnx(network: nn.Module, example: torch.Tensor, path: str | Path,
                stride: Sequence[int] | None) -> OnnxExport:
    """Export ``network`` (eval mode) to ``path`` as one ONNX file: dynamic batch, and spatial axes dynamic in
    multiples of ``stride`` when given (None: the example's spatial size only). Raises what the exporter raises."""
    import onnx
    from torch.export import Dim

    network.eval()
    dims: dict[int, Any] = {0: Dim("batch", min=1)}
    for i, s in enumerate(stride or ()):
        d = Dim(f"spatial{i}", min=1)
        dims[2 + i] = d * int(s) if int(s) > 1 else d
    log = io.StringIO()
    with contextlib.redirect_stdout(log), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(network, (example,), None, dynamo=True, input_names=[INPUT_NAME],
                                    output_names=[OUTPUT_NAME], dynamic_shapes=(dims,), optimize=False,
                                    verbose=False)
    model = program.model_proto
    if _drop_synthesised_zero_biases(model):
        onnx.save_model(model, str(path))
    else:
        program.save(str(path), external_data=False)
    model = onnx.load(str(path), load_external_data=False)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return OnnxExport(int(opset), _dims(model.graph.input[0]), _dims(model.graph.output[0]), _used_tensors(program))


def onnx_initializers(path: str | Path) -> dict[str, np.ndarray]:
    """The initializers of an ONNX file by name, after ``onnx.checker`` has accepted the model."""
    import onnx
    from onnx import numpy_helper

    onnx.checker.check_model(str(path))
    model = onnx.load(str(path))
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def onnx_runner(path: str | Path) -> Callable[[torch.Tensor], np.ndarray]:
    """Run the ONNX file with onnxruntime on the CPU: a function of an input tensor returning the output array."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # fatal only: a failing run raises, with its message
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> np.ndarray:
        return session.run(None, {name: x.detach().cpu().numpy().astype(np.float32, copy=False)})[0]

    return run
