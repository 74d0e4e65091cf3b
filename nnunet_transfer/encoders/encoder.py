"""The encoder of an nnU-Net network as a feature extractor: stem, stages, and the feature maps asked for.

nnU-Net's encoders (``PlainConvEncoder``, ``ResidualEncoder``) return the list of every stage's output when they sit
in a U-Net (``return_skips=True``) and only the deepest otherwise. :class:`PretrainedEncoder` holds the same stem and
stage modules (the same parameters) as the network it was taken from and returns what was asked for: the deepest
feature map, every stage's, or chosen stages'. Which modules form the encoder is what the network's architecture
spec declares (:attr:`nnunet_transfer.core.architectures.ArchitectureSpec.encoder`), never a guess from names.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from nnunet_transfer.core.architectures import EncoderLayout, architecture_for
from nnunet_transfer.core.modules import unwrap_network
from nnunet_transfer.errors import ArchitectureError

__all__ = ["FeatureSpec", "PretrainedEncoder", "encoder_layout", "resolve_features"]

# "deepest" (one feature map), "all" (every stage's), a stage index (one map) or a sequence of indices (a list)
FeatureSpec = str | int | Sequence[int]


def resolve_features(features: FeatureSpec, num_stages: int) -> tuple[tuple[int, ...], bool]:
    """``(stage indices, single)`` for a feature request: ``"deepest"`` or an int give one map (``single``), ``"all"``
    or a sequence of ints a list; negative indices count from the deepest stage. ValueError names a bad request."""
    if isinstance(features, str):
        if features == "deepest":
            return (num_stages - 1,), True
        if features == "all":
            return tuple(range(num_stages)), False
        raise ValueError(f"features={features!r}: expected 'deepest', 'all', a stage index or a list of indices")
    single = isinstance(features, int)
    wanted = [features] if single else list(features)
    if not wanted or not all(isinstance(i, int) and not isinstance(i, bool) for i in wanted):
        raise ValueError(f"features={features!r}: expected 'deepest', 'all', a stage index or a list of indices")
    out = []
    for i in wanted:
        if not -num_stages <= i < num_stages:
            raise ValueError(f"features={features!r}: stage {i} does not exist (the encoder has {num_stages} stages, "
                             f"0 to {num_stages - 1})")
        out.append(i % num_stages)
    if len(set(out)) != len(out):
        raise ValueError(f"features={features!r}: a stage is asked for twice")
    return tuple(out), single


def encoder_layout(network: nn.Module) -> EncoderLayout:
    """The encoder layout the network's architecture spec declares; ArchitectureError if it declares none."""
    net = unwrap_network(network)
    spec = architecture_for(net)
    layout = spec.encoder(net)
    if layout is None:
        raise ArchitectureError(
            f"{type(net).__name__} (architecture {spec.name!r}): no encoder layout declared, so its encoder cannot be "
            "extracted as a chain of stages; nnU-Net's PlainConvUNet and ResidualEncoderUNet (with the library's own "
            "encoder forward) are supported; for another family register an ArchitectureSpec with encoder=...")
    return layout


class PretrainedEncoder(nn.Module):
    """A network's encoder: ``stem`` (if any) and ``stages`` run in order; returns the feature maps of ``features``.

    ``channels[i]`` and ``strides[i]`` are stage ``i``'s output channels and its cumulative stride (how much smaller
    than the input its feature map is, per spatial axis): for an input whose size is divisible by
    ``strides[-1]``, stage ``i``'s map is ``input_size / strides[i]``. ``ndim`` is the number of spatial axes the
    encoder takes (2 for nnU-Net's 2d configuration, 3 for the 3d ones); the input is ``(batch, in_channels,
    *spatial)``. Use :meth:`from_network` (it shares the network's modules and parameters).
    """

    def __init__(self, stages: Sequence[nn.Module], channels: Sequence[int], stage_strides: Sequence[Sequence[int]],
                 stem: nn.Module | None = None, features: FeatureSpec = "deepest", in_channels: int | None = None,
                 source_names: dict[str, str] | None = None):
        super().__init__()
        if not (len(stages) == len(channels) == len(stage_strides)) or not stages:
            raise ValueError(f"PretrainedEncoder: {len(stages)} stages, {len(channels)} channel counts and "
                             f"{len(stage_strides)} strides; one each per stage")
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.channels: tuple[int, ...] = tuple(int(c) for c in channels)
        self.stage_strides: tuple[tuple[int, ...], ...] = tuple(tuple(int(x) for x in s) for s in stage_strides)
        cumulative, current = [], [1] * len(self.stage_strides[0])
        for s in self.stage_strides:
            current = [a * b for a, b in zip(current, s, strict=True)]
            cumulative.append(tuple(current))
        self.strides: tuple[tuple[int, ...], ...] = tuple(cumulative)
        self.in_channels = in_channels
        # names of the stem and stages in the network they were taken from ({"stages.0": "encoder.stages.0", ...})
        self.source_names: dict[str, str] = dict(source_names or {})
        self.features: tuple[int, ...] = ()
        self.single = True
        self.select(features)

    @classmethod
    def from_network(cls, network: nn.Module, features: FeatureSpec = "deepest",
                     layout: EncoderLayout | None = None) -> PretrainedEncoder:
        """The encoder of ``network`` (unwrapped from DDP / torch.compile) as its architecture spec declares it
        (or as ``layout`` says). The modules are shared, not copied: copy.deepcopy the result for an independent one."""
        net = unwrap_network(network)
        layout = layout or encoder_layout(net)
        stem = net.get_submodule(layout.stem) if layout.stem else None
        stages = [net.get_submodule(name) for name in layout.stages]
        names = {f"stages.{i}": name for i, name in enumerate(layout.stages)}
        if layout.stem:
            names = {"stem": layout.stem, **names}
        in_proj = architecture_for(net).input_projection(net)  # the declared input convolution
        in_channels = getattr(net.get_submodule(in_proj[0]), "in_channels", None) if in_proj else None
        return cls(stages, layout.channels, layout.strides, stem, features, in_channels=in_channels,
                   source_names=names)

    def select(self, features: FeatureSpec) -> PretrainedEncoder:
        """Choose what :meth:`forward` returns (see :func:`resolve_features`); returns self."""
        self.features, self.single = resolve_features(features, len(self.stages))
        return self

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def ndim(self) -> int:
        """Number of spatial axes of the input (2 or 3)."""
        return len(self.stage_strides[0])

    @property
    def out_channels(self) -> tuple[int, ...]:
        """Channels of the feature maps :meth:`forward` returns, in order."""
        return tuple(self.channels[i] for i in self.features)

    def source_name(self, name: str) -> str:
        """The name in the source network of this module's parameter or buffer ``name`` (``stages.0.0.convs.0.conv
        .weight`` -> ``encoder.stages.0.0.convs.0.conv.weight``)."""
        for mine, theirs in sorted(self.source_names.items(), key=lambda kv: -len(kv[0])):
            if name == mine or name.startswith(mine + "."):
                return theirs + name[len(mine):]
        raise KeyError(f"{name!r} is not a parameter or buffer name of this encoder")

    def feature_shapes(self, input_size: Sequence[int]) -> list[tuple[int, ...]]:
        """``(channels, *spatial)`` of every selected feature map for an input of spatial size ``input_size``
        (exact for sizes divisible by the deepest cumulative stride; nnU-Net's patch sizes are)."""
        if len(input_size) != self.ndim:
            raise ValueError(f"input_size {tuple(input_size)}: the encoder takes {self.ndim} spatial axes")
        return [(self.channels[i], *(math.ceil(n / s) for n, s in zip(input_size, self.strides[i], strict=True)))
                for i in self.features]

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != self.ndim + 2 or (self.in_channels is not None and x.shape[1] != self.in_channels):
            want = "x".join(["batch", str(self.in_channels or "channels"), *["size"] * self.ndim])
            raise ValueError(f"the encoder takes input of shape {want} ({self.ndim}d), got {tuple(x.shape)}")

    def forward_stages(self, x: torch.Tensor, stages: Sequence[int]) -> list[torch.Tensor]:
        """The feature maps of ``stages`` (indices, in the order given); runs only as deep as needed."""
        self._check_input(x)
        if self.stem is not None:
            x = self.stem(x)
        wanted = {i: None for i in stages}
        deepest = max(wanted)
        out: dict[int, torch.Tensor] = {}
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in wanted:
                out[i] = x
            if i == deepest:
                break
        return [out[i] for i in stages]

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """The selected feature map (``features`` "deepest" or an index) or list of maps ("all", a list)."""
        feats = self.forward_stages(x, self.features)
        return feats[0] if self.single else feats

    def extra_repr(self) -> str:
        return (f"ndim={self.ndim}, in_channels={self.in_channels}, channels={self.channels}, "
                f"strides={[list(s) for s in self.strides]}, features={list(self.features)}")
