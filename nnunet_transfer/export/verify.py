"""What makes an export trustworthy: its weights equal the checkpoint's, tensor by tensor, and its outputs equal an
eager network's (freshly loaded from the checkpoint) within a stated tolerance.

Tolerance rule (per input): ``max|export - eager| <= rtol * max|eager|`` (the largest difference relative to the
scale of the eager output, the logits); default ``rtol`` :data:`DEFAULT_RTOL`. NaN anywhere fails.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "DEFAULT_RTOL",
    "TOLERANCE_RULE",
    "OutputCheck",
    "WeightCheck",
    "check_outputs",
    "compare_weights",
    "input_shapes",
    "second_spatial_size",
]

DEFAULT_RTOL = 1e-4
TOLERANCE_RULE = "max|export - eager| <= rtol * max|eager| for each input"


def _as_tensor(value: Any) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else torch.from_numpy(np.array(value, copy=True))


def _equal(actual: Any, expected: torch.Tensor) -> bool:
    a = _as_tensor(actual)
    if tuple(a.shape) != tuple(expected.shape):
        return False
    if a.dtype != expected.dtype:
        if not (a.is_floating_point() and expected.is_floating_point()):
            return False
        expected = expected.to(a.dtype)  # e.g. a float16 checkpoint in a float32 network: the upcast is exact
    return bool(torch.equal(a.detach().cpu(), expected.detach().cpu()))


@dataclass
class WeightCheck:
    """The tensors of an export (or a network) compared one by one with the checkpoint's."""

    source: str  # what was compared: "TorchScript state_dict", "ONNX initializers", "the loaded network"
    compared: int = 0
    mismatched: list[str] = field(default_factory=list)  # same name, other values (or shape)
    missing: list[str] = field(default_factory=list)  # required, absent from the export
    unexpected: list[str] = field(default_factory=list)  # in the export, not in the checkpoint
    not_used: list[str] = field(default_factory=list)  # absent by design: the forward pass does not use them

    @property
    def passed(self) -> bool:
        return self.compared > 0 and not (self.mismatched or self.missing or self.unexpected)

    def describe(self) -> str:
        """One line: what agrees, or the first offending key of each kind."""
        if self.passed:
            return f"{self.source}: {self.compared} tensors equal the checkpoint's (bit-identical)"
        parts = [f"{self.source}: {self.compared} tensors compared"]
        if self.compared == 0:
            parts.append("none of them named after the checkpoint's tensors")
        for what, items in (("differ from the checkpoint's", self.mismatched), ("missing", self.missing),
                            ("not in the checkpoint", self.unexpected)):
            if items:
                parts.append(f"{len(items)} {what} (first: {items[0]})")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["passed"] = self.passed
        return out


def compare_weights(actual: Mapping[str, Any], expected: Mapping[str, torch.Tensor], source: str,
                    required: Iterable[Sequence[str]] | None = None, strict_names: bool = True,
                    not_used: Iterable[str] = ()) -> WeightCheck:
    """Compare ``actual`` (tensors or NumPy arrays by name) with the checkpoint's ``expected`` tensors, exactly.

    ``required``: groups of alias names (nnU-Net's networks reach one tensor under several names), each of which must
    be present in ``actual`` under at least one alias; default: every key of ``expected`` on its own.
    ``strict_names``: names of ``actual`` that are not checkpoint keys count as unexpected (False: they are
    constants of the exporter and are ignored).
    """
    check = WeightCheck(source, not_used=sorted(not_used))
    for name, value in actual.items():
        if name not in expected:
            if strict_names:
                check.unexpected.append(name)
            continue
        check.compared += 1
        if not _equal(value, expected[name]):
            check.mismatched.append(name)
    groups = [(k,) for k in expected] if required is None else [tuple(g) for g in required]
    check.missing = [g[0] for g in groups if not any(n in actual for n in g)]
    return check


@dataclass
class OutputCheck:
    """The export's output against the eager network's for one random input."""

    input_shape: list[int]
    max_abs_diff: float
    output_scale: float  # max|eager|
    relative_diff: float  # max_abs_diff / output_scale
    passed: bool
    error: str = ""  # the export could not run on this input (or gave another shape)

    def describe(self) -> str:
        shape = "x".join(map(str, self.input_shape))
        if self.error:
            return f"input {shape}: {self.error}"
        verdict = "ok" if self.passed else "TOO LARGE"
        return (f"input {shape}: max abs diff {self.max_abs_diff:.2e}, output scale {self.output_scale:.3g}, "
                f"relative {self.relative_diff:.2e} {verdict}")


def second_spatial_size(patch_size: Sequence[int], stride: Sequence[int]) -> list[int]:
    """Another size the network must accept when its spatial axes are dynamic: one total stride less than the patch
    along even axes (more if that leaves less than one stride), one more along odd axes."""
    out = []
    for i, (p, s) in enumerate(zip(patch_size, stride, strict=True)):
        out.append(p - s if i % 2 == 0 and p - s >= s else p + s)
    return out


def input_shapes(channels: int, patch_size: Sequence[int], stride: Sequence[int] | None,
                 dynamic_spatial: bool) -> list[tuple[int, ...]]:
    """The inputs an export is checked on: the patch with batch 1 and 2, and a second spatial size if dynamic."""
    shapes = [(1, channels, *patch_size), (2, channels, *patch_size)]
    if dynamic_spatial and stride is not None:
        shapes.append((1, channels, *second_spatial_size(patch_size, stride)))
    return shapes


def check_outputs(run: Callable[[torch.Tensor], Any], reference: nn.Module, shapes: Iterable[Sequence[int]],
                  rtol: float = DEFAULT_RTOL, seed: int = 0) -> list[OutputCheck]:
    """Run ``run`` (the reloaded export) and ``reference`` (eager, eval mode) on standard-normal inputs of each shape
    (a fixed seed) and compare by :data:`TOLERANCE_RULE`. A failure to run becomes a failed check with its error."""
    gen = torch.Generator().manual_seed(seed)
    checks = []
    for shape in shapes:
        shape = [int(s) for s in shape]
        x = torch.randn(shape, generator=gen)
        with torch.inference_mode():
            expected = reference(x)
        if not isinstance(expected, torch.Tensor):
            raise TypeError(f"the eager network returns a {type(expected).__name__}, not one tensor (deep supervision "
                            "still on?)")
        try:
            got = _as_tensor(run(x.clone())).float()
        except Exception as e:  # the export could not run at this size: part of the verdict, not a crash
            msg = str(e).strip().splitlines()[-1][:300] if str(e).strip() else type(e).__name__
            checks.append(OutputCheck(shape, float("nan"), float("nan"), float("nan"), False,
                                      f"the export fails to run: {type(e).__name__}: {msg}"))
            continue
        if tuple(got.shape) != tuple(expected.shape):
            checks.append(OutputCheck(shape, float("nan"), float("nan"), float("nan"), False,
                                      f"output shape {tuple(got.shape)}, eager {tuple(expected.shape)}"))
            continue
        expected = expected.float()
        diff = float((got - expected).abs().max())
        scale = float(expected.abs().max())
        rel = diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))
        checks.append(OutputCheck(shape, diff, scale, rel, bool(rel <= rtol)))  # NaN compares False: fails
    return checks
