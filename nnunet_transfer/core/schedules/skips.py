"""Frozen skips: no input gradient for the skip half of a decoder convolution over ``cat((upsampled, skip), 1)``.

With the encoder frozen, a U-Net decoder stage's first convolution still computes, in the backward pass, the
gradient of its whole input, and autograd throws the skip half of it away: nothing upstream of the skip trains. While
every parameter upstream of a skip is frozen, :func:`update_skip_split` makes that convolution's backward pass
compute the input gradient of the upsampled channels only (a convolution's backward-data with the weight's slice
``W[:, :c]``), the skip channels' gradient being zero, and the weight and bias gradients as before, over the whole
input. The forward pass is the stock convolution (bit for bit), and so are the weight and bias gradients; the
upsampled input's gradient differs only by float rounding.

Measured on CPU at 48^3 (one thread, CPU time of one fused convolution with its backward): this costs as little as a
convolution that never saw the concatenation. Splitting the forward into ``conv(x[:, :c], W[:, :c]) +
conv(x[:, c:].detach(), W[:, c:])`` instead loses most of the gain at the highest resolution to slicing the
concatenated input and to the full-size zero-filled gradient of the slice's backward.

The convolution stays the same object: its class is swapped to a subclass of its own (:class:`SplitSkipConv3d`
etc.), which keeps its parameters, every alias (``.conv`` / ``.all_modules.0``), the state-dict keys, optimizer state
and checkpoints. The custom backward runs only while gradients are recorded (``torch.is_grad_enabled()`` and the
input requires grad); evaluation and prediction run the stock forward. Once a skip's upstream trains again
(progressive unfreezing), its convolution gets its own class back; :func:`disable_skip_split` restores every one.

Where the skips are comes from the architecture registry (``ArchitectureSpec.skip_fusions``); architectures that do
not declare them are left alone, and so are convolutions of another class than ``nn.Conv1d/2d/3d``, with string
padding or a padding mode other than zeros. Call :func:`update_skip_split` after every change of ``requires_grad``
(under ``torch.compile`` the class change makes dynamo recompile). A gradient with respect to the network's *input*
(``input.requires_grad``) does not flow back through split skips: turn the feature off for that.
"""

from __future__ import annotations

import torch
from torch import nn

from nnunet_transfer.core.architectures import ArchitectureSpec, SkipFusion, architecture_for
from nnunet_transfer.core.modules import unwrap_network
from nnunet_transfer.errors import ArchitectureError

__all__ = [
    "SplitSkipConv1d",
    "SplitSkipConv2d",
    "SplitSkipConv3d",
    "disable_skip_split",
    "split_skip_convs",
    "update_skip_split",
]


class _SkipFrozenConv(torch.autograd.Function):
    """A convolution (ungrouped, zero padding) whose input channels ``c:`` get a zero gradient, never computed."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, up_channels: int,
                stride: tuple[int, ...], padding: tuple[int, ...], dilation: tuple[int, ...]) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.conf = (up_channels, stride, padding, dilation, bias is not None)
        return torch.convolution(x, weight, bias, stride, padding, dilation, False, [0] * len(stride), 1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        c, stride, padding, dilation, has_bias = ctx.conf
        zeros = [0] * len(stride)
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        _, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad, x, weight, [weight.shape[0]] if has_bias else None, stride, padding, dilation, False, zeros, 1,
            [False, need_w, need_b and has_bias])
        grad_x = None
        if need_x:
            grad_up = torch.ops.aten.convolution_backward(
                grad, x[:, :c], weight[:, :c].contiguous(), None, stride, padding, dilation, False, zeros, 1,
                [True, False, False])[0]
            grad_x = torch.cat((grad_up, x.new_zeros(()).expand(x.shape[0], x.shape[1] - c, *x.shape[2:])), 1)
        return grad_x, grad_w, grad_b, None, None, None, None


class _SplitSkip:
    """Mixed into a convolution class: the forward of a convolution whose trailing input channels (the skip) need no
    gradient. ``_skip_up_channels`` (set by :func:`update_skip_split`) is the number of leading (upsampled) ones."""

    _skip_up_channels: int

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (torch.is_grad_enabled() and input.requires_grad):
            return super().forward(input)  # type: ignore[misc]
        weight, bias = self.weight, self.bias  # type: ignore[attr-defined]
        device = input.device.type
        if torch.is_autocast_enabled(device):  # cast as autocast casts a convolution's arguments (AMP on CUDA)
            dtype = torch.get_autocast_dtype(device)
            input, weight = input.to(dtype), weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        return _SkipFrozenConv.apply(input, weight, bias, self._skip_up_channels,
                                     self.stride, self.padding, self.dilation)  # type: ignore[attr-defined]


class SplitSkipConv1d(_SplitSkip, nn.Conv1d):
    """``nn.Conv1d`` whose skip input channels get no gradient (see the module docstring)."""


class SplitSkipConv2d(_SplitSkip, nn.Conv2d):
    """``nn.Conv2d`` whose skip input channels get no gradient (see the module docstring)."""


class SplitSkipConv3d(_SplitSkip, nn.Conv3d):
    """``nn.Conv3d`` whose skip input channels get no gradient (see the module docstring)."""


_SPLIT: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv1d: SplitSkipConv1d, nn.Conv2d: SplitSkipConv2d, nn.Conv3d: SplitSkipConv3d}
_PLAIN: dict[type[nn.Module], type[nn.Module]] = {v: k for k, v in _SPLIT.items()}


def _unsplit(conv: nn.Module) -> None:
    conv.__class__ = _PLAIN[type(conv)]
    del conv._skip_up_channels


def _conv_of(network: nn.Module, fusion: SkipFusion, spec: ArchitectureSpec) -> nn.Module:
    try:
        conv = network.get_submodule(fusion.conv)
    except AttributeError:
        raise ArchitectureError(f"architecture {spec.name!r} declares a skip fusion at {fusion.conv!r}, which is no "
                                f"submodule of {type(network).__name__}") from None
    if not isinstance(conv, nn.Conv1d | nn.Conv2d | nn.Conv3d) or conv.groups != 1 \
            or not 0 < fusion.up_channels < conv.in_channels:
        raise ArchitectureError(f"architecture {spec.name!r}: skip fusion {fusion.conv!r} must be an ungrouped "
                                f"Conv1d/2d/3d with more than up_channels={fusion.up_channels} (> 0) input channels, "
                                f"found {conv!r}")
    return conv


def _upstream_frozen(network: nn.Module, fusion: SkipFusion, spec: ArchitectureSpec) -> bool:
    params = []
    for name in fusion.upstream:
        try:
            params.extend(network.get_submodule(name).parameters())
        except AttributeError:
            raise ArchitectureError(f"architecture {spec.name!r}: skip fusion {fusion.conv!r} names {name!r} "
                                    f"upstream, which is no submodule of {type(network).__name__}") from None
    return bool(params) and not any(p.requires_grad for p in params)


def update_skip_split(network: nn.Module, spec: ArchitectureSpec | None = None) -> int:
    """Split each declared skip fusion of ``network`` (unwrapped from DDP / ``torch.compile``) whose upstream
    parameters are all frozen, and give the others their own class back. ``spec``: the network's architecture spec
    (default: :func:`~nnunet_transfer.core.architectures.architecture_for`). Returns the number of split
    convolutions. Call it after every freeze change. Convolutions of a class other than ``nn.Conv1d/2d/3d`` (a
    subclass of your own) are never split; a fusion naming a missing or unfit module raises
    :class:`~nnunet_transfer.errors.ArchitectureError`."""
    mod = unwrap_network(network)
    spec = spec or architecture_for(mod)
    count = 0
    for fusion in spec.skip_fusions(mod):
        conv = _conv_of(mod, fusion, spec)
        split = type(conv) in _PLAIN
        if split and conv._skip_up_channels != fusion.up_channels:
            _unsplit(conv)
            split = False
        supported = split or (type(conv) in _SPLIT and conv.padding_mode == "zeros"
                              and not isinstance(conv.padding, str))
        if _upstream_frozen(mod, fusion, spec) and supported:
            if not split:
                conv._skip_up_channels = fusion.up_channels
                conv.__class__ = _SPLIT[type(conv)]
            count += 1
        elif split:
            _unsplit(conv)
    return count


def split_skip_convs(network: nn.Module) -> list[str]:
    """Names (first alias) of the convolutions of ``network`` that are split now."""
    return [n for n, m in unwrap_network(network).named_modules() if type(m) in _PLAIN]


def disable_skip_split(network: nn.Module) -> int:
    """Give every split convolution of ``network`` its own class back. Returns how many there were."""
    convs = [m for m in unwrap_network(network).modules() if type(m) in _PLAIN]
    for conv in convs:
        _unsplit(conv)
    return len(convs)
