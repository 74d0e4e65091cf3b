r"""Architectures declare themselves: parameter groups, segmentation heads, input projection, positional embedding.

An :class:`ArchitectureSpec` says, for one family of networks, what the loader and the fine-tuning schedules need to
know about it. :func:`architecture_for` finds the spec of a network (DDP / ``torch.compile`` wrappers are unwrapped
first): the registered specs are asked in order, the first whose ``matches`` is true wins, and a generic fallback
(one group ``all``, the first convolution guessed) takes any other network.

Built in, in matching order: ``PlainConvUNet``, ``ResidualEncoderUNet`` (also ``ResidualUNet``), ``Primus`` (and
its subclasses); each matches by class name anywhere in the network's class hierarchy, or by nnU-Net's module layout
(``encoder.stages`` + ``decoder.seg_layers``; ``eva.blocks``). What dynamic_network_architectures networks declare
is used before anything is guessed: ``keys_to_in_proj`` (the input projection), ``key_to_stem`` and
``key_to_encoder`` (the stem and encoder groups, and the encoder's chain of stages), ``key_to_lpe`` (the learnable
positional embedding); a network of this package's own (``EncoderClassifier``) declares its parameter groups
(``parameter_group_patterns``).

Register your own family once, before loading or training (e.g. at the top of your trainer module); no edit to
this package is needed. ``first=True`` (the default) puts it before the built-in specs, so it can also take over a
subclass of a built-in network:

>>> from torch import nn
>>> from nnunet_transfer.core.architectures import (
...     ArchitectureSpec, architecture_for, class_named, register_architecture, unregister_architecture)
>>> class TinySegNet(nn.Module):
...     def __init__(self, in_channels: int = 1, num_classes: int = 2):
...         super().__init__()
...         self.enc = nn.Conv3d(in_channels, 4, 3, padding=1)
...         self.head = nn.Conv3d(4, num_classes, 1)
>>> spec = register_architecture(ArchitectureSpec(
...     name="TinySegNet",
...     matches=class_named("TinySegNet"),
...     group_patterns=lambda net: {"encoder": [r"enc\..+"], "heads": [r"head\..+"]},
...     head_pattern=r"head\.(?:weight|bias)",      # output channels mapped by label name
...     input_projection=lambda net: ["enc"],        # adapted to another input-channel count
... ))
>>> architecture_for(TinySegNet()).name
'TinySegNet'
>>> architecture_for(TinySegNet()).group_patterns(TinySegNet())
{'encoder': ['enc\\..+'], 'heads': ['head\\..+']}
>>> unregister_architecture("TinySegNet").name
'TinySegNet'
>>> architecture_for(TinySegNet()).name
'generic'

A network of yours that declares ``keys_to_in_proj`` (like dynamic_network_architectures' networks do) needs no
``input_projection``: the default reads the declaration.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

from nnunet_transfer.core.modules import module_aliases, unwrap_network
from nnunet_transfer.errors import ArchitectureError

__all__ = [
    "GENERIC",
    "NO_HEADS",
    "PLAIN_CONV_UNET",
    "PRIMUS",
    "PRIMUS_HEAD_PATTERN",
    "RESIDUAL_ENCODER_UNET",
    "SEG_LAYERS_HEAD_PATTERN",
    "ArchitectureSpec",
    "EncoderLayout",
    "SkipFusion",
    "architecture_for",
    "class_named",
    "declared_group_patterns",
    "declared_input_projection",
    "declared_positional_embedding",
    "list_architectures",
    "no_encoder",
    "no_skip_fusions",
    "register_architecture",
    "unregister_architecture",
]

# nnU-Net's segmentation heads: decoder.seg_layers.<i>.weight / .bias (and their aliases)
SEG_LAYERS_HEAD_PATTERN = r"(?:.*\.)?seg_layers\.\d+\.(?:weight|bias)"
# a head pattern that matches no tensor: the family has no head the loader can map by label name
NO_HEADS = r"(?!)"


def declared_input_projection(network: nn.Module) -> list[str]:
    """Module names (every alias) of the input projection: the declared ``keys_to_in_proj``, else a guess.

    The guess is the first non-transposed convolution in registration order, as the loader always did.
    """
    declared = getattr(network, "keys_to_in_proj", None)
    if isinstance(declared, str):
        declared = (declared,)
    if declared:
        return module_aliases(network, declared)
    first = next(
        (n for n, m in network.named_modules() if isinstance(m, _ConvNd) and not isinstance(m, _ConvTransposeNd)),
        None,
    )
    return [] if first is None else module_aliases(network, [first])


def _tensor_at(network: nn.Module, name: str) -> torch.Tensor | None:
    module_name, _, attr = name.rpartition(".")
    try:
        value = getattr(network.get_submodule(module_name), attr, None)
    except AttributeError:
        return None
    return value if isinstance(value, torch.Tensor) else None


def declared_positional_embedding(network: nn.Module) -> str | None:
    """The declared ``key_to_lpe`` (learnable positional embedding) if the network holds that tensor, else None."""
    name = getattr(network, "key_to_lpe", None)
    return name if isinstance(name, str) and _tensor_at(network, name) is not None else None


def declared_group_patterns(network: nn.Module) -> dict[str, list[str]]:
    """The default ``group_patterns``: what the network declares as ``parameter_group_patterns`` (a mapping, or a
    method returning one: ``{group: [regex, ...]}``), else one group ``all``."""
    declared = getattr(network, "parameter_group_patterns", None)
    if callable(declared):
        declared = declared()
    if declared is None:
        return {"all": [r".+"]}
    if not isinstance(declared, dict) or not all(
            isinstance(g, str) and isinstance(p, list | tuple) and all(isinstance(x, str) for x in p)
            for g, p in declared.items()):
        raise ArchitectureError(f"{type(network).__name__}.parameter_group_patterns must be a mapping "
                                f"{{group: [regex, ...]}}, got {declared!r}")
    return {g: list(p) for g, p in declared.items()}


@dataclass(frozen=True)
class EncoderLayout:
    """A network's encoder as a chain of modules: ``stem`` (if any), then ``stages`` in order, each taking the output
    of the one before; the output of stage ``i`` is feature map ``i`` (0 = highest resolution). Stage ``i`` outputs
    ``channels[i]`` channels and divides the size of its input by ``strides[i]`` (one entry per spatial axis).
    :mod:`nnunet_transfer.encoders` builds a feature extractor from it."""

    stages: tuple[str, ...]  # module names, shallowest first
    channels: tuple[int, ...]  # output channels of each stage
    strides: tuple[tuple[int, ...], ...]  # stride of each stage relative to its input, per spatial axis
    stem: str | None = None  # module run before stage 0 (outside the stages), or None

    def __post_init__(self) -> None:
        n = len(self.stages)
        if n == 0 or len(self.channels) != n or len(self.strides) != n:
            raise ArchitectureError(f"EncoderLayout: stages, channels and strides need one entry per stage, got "
                                    f"{n}, {len(self.channels)} and {len(self.strides)}")
        if len({len(s) for s in self.strides}) != 1:
            raise ArchitectureError(f"EncoderLayout: strides {self.strides} differ in their number of axes")


def no_encoder(network: nn.Module) -> EncoderLayout | None:
    """The default ``encoder``: none declared (the network's encoder cannot be extracted as a chain of stages)."""
    return None


@dataclass(frozen=True)
class SkipFusion:
    """A convolution whose input is ``cat((upsampled, skip), dim=1)``: the first ``up_channels`` input channels come
    from the decoder's upsampling path, the rest from a skip connection that the modules named in ``upstream``
    compute (with nothing trainable in between). While every parameter of ``upstream`` is frozen, the skip needs no
    gradient and :mod:`nnunet_transfer.core.schedules.skips` can skip computing it."""

    conv: str  # module name of the convolution (any alias)
    up_channels: int  # leading input channels from the upsampling path; the remaining ones are the skip
    upstream: tuple[str, ...]  # module names whose parameters (all of them) compute the skip


def no_skip_fusions(network: nn.Module) -> list[SkipFusion]:
    """The default ``skip_fusions``: none declared, the frozen-skip optimisation stays off."""
    return []


@dataclass(frozen=True)
class ArchitectureSpec:
    """What the loader and the schedules know about one family of networks. Register it with
    :func:`register_architecture`; only ``name`` and ``matches`` are required."""

    # a unique name (shown in reports, used to unregister)
    name: str
    # whether a network (already unwrapped from DDP / torch.compile) belongs to this family
    matches: Callable[[nn.Module], bool]
    # parameter groups in order: {group: [regex, ...]}, each regex fullmatched against parameter names; every
    # parameter in exactly one group (see nnunet_transfer.core.schedules.groups.derive_groups); default: what the
    # network declares (parameter_group_patterns), else one group "all"
    group_patterns: Callable[[nn.Module], dict[str, list[str]]] = declared_group_patterns
    # regex (fullmatch against every name of a tensor) naming segmentation-head tensors, whose output channels
    # (dim 0) the loader copies by label name; a loader option head_pattern given by the caller wins
    head_pattern: str = SEG_LAYERS_HEAD_PATTERN
    # module names (every alias) of the convolution(s) that see the input image: adapted to another channel count
    input_projection: Callable[[nn.Module], list[str]] = declared_input_projection
    # name of the learnable positional embedding tensor, or None
    positional_embedding: Callable[[nn.Module], str | None] = declared_positional_embedding
    # convolutions over cat(upsampled, skip) and what computes each skip (see SkipFusion); none: feature off
    skip_fusions: Callable[[nn.Module], list[SkipFusion]] = no_skip_fusions
    # the encoder as a chain of stages (see EncoderLayout), or None: the family's encoder cannot be extracted
    encoder: Callable[[nn.Module], EncoderLayout | None] = no_encoder

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ArchitectureError(f"ArchitectureSpec.name must be a non-empty string, got {self.name!r}")
        for field in ("matches", "group_patterns", "input_projection", "positional_embedding", "skip_fusions",
                      "encoder"):
            if not callable(getattr(self, field)):
                raise ArchitectureError(f"ArchitectureSpec {self.name!r}: {field} must be a function of the network")
        try:
            re.compile(self.head_pattern)
        except (re.error, TypeError) as e:
            raise ArchitectureError(f"ArchitectureSpec {self.name!r}: head_pattern {self.head_pattern!r} is no "
                                    f"valid regex ({e})") from None


def class_named(*names: str) -> Callable[[nn.Module], bool]:
    """A ``matches`` function: true if the network's class or any base class has one of these names."""
    wanted = frozenset(names)
    return lambda network: any(c.__name__ in wanted for c in type(network).__mro__)


def _param_names(network: nn.Module) -> list[str]:
    return [n for n, _ in network.named_parameters()]


def _indices(names: Sequence[str], prefix: str) -> list[int]:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for n in names if (m := pat.match(n))})


def _has_module(network: nn.Module, name: str) -> bool:
    try:
        network.get_submodule(name)
    except AttributeError:
        return False
    return True


def _declared(network: nn.Module, attr: str, default: str) -> str:
    value = getattr(network, attr, None)
    return value if isinstance(value, str) and value else default


# --- nnU-Net's U-Nets -------------------------------------------------------------------------------------------


def _unet_layout(network: nn.Module) -> bool:
    return _has_module(network, "encoder.stages") and _has_module(network, "decoder.seg_layers")


def _unet_groups(network: nn.Module) -> dict[str, list[str]]:
    """encoder.stem (if outside the stages), encoder.stage{i}, decoder.stage{j} with its transposed conv, heads."""
    names = _param_names(network)
    enc = _declared(network, "key_to_encoder", "encoder.stages")
    stem = _declared(network, "key_to_stem", "encoder.stem")
    groups: dict[str, list[str]] = {}
    # PlainConvUNet declares its stem inside stage 0 (encoder.stages.0): then stage 0 holds it
    if stem != enc and not stem.startswith(enc + ".") and any(n.startswith(stem + ".") for n in names):
        groups["encoder.stem"] = [rf"{re.escape(stem)}\..+"]
    for i in _indices(names, enc + "."):
        groups[f"encoder.stage{i}"] = [rf"{re.escape(enc)}\.{i}\..+"]
    for j in sorted(set(_indices(names, "decoder.stages.")) | set(_indices(names, "decoder.transpconvs."))):
        groups[f"decoder.stage{j}"] = [rf"decoder\.stages\.{j}\..+", rf"decoder\.transpconvs\.{j}\..+"]
    if any(n.startswith("decoder.seg_layers.") for n in names):
        groups["heads"] = [r"decoder\.seg_layers\..+"]
    return groups


def _plain_conv_unet(network: nn.Module) -> bool:
    return class_named("PlainConvUNet")(network) or (
        _unet_layout(network) and not _has_module(network, "encoder.stem")
    )


def _residual_encoder_unet(network: nn.Module) -> bool:
    return class_named("ResidualEncoderUNet", "ResidualUNet")(network) or (
        _unet_layout(network) and _has_module(network, "encoder.stem")
    )


def _forward_of(module: nn.Module, *qualnames: str) -> bool:
    """True if ``module``'s class runs one of these (not overridden) forward methods."""
    return getattr(type(module).forward, "__qualname__", None) in qualnames


def _unet_skip_fusions(network: nn.Module) -> list[SkipFusion]:
    """dynamic_network_architectures' UNetDecoder: decoder stage ``s`` runs ``stages[s](cat((transpconvs[s](x),
    skips[-(s + 2)]), 1))``, and skip ``-(s + 2)`` is the output of encoder stage ``n - 2 - s`` (after the stem, if
    any). Declared only where every forward on that path is the library's own (nothing overridden in between) and
    the first module of ``stages[s]`` is a convolution (ungrouped); anything else: none (feature off)."""
    enc, dec = getattr(network, "encoder", None), getattr(network, "decoder", None)
    if not (_forward_of(network, "PlainConvUNet.forward", "ResidualEncoderUNet.forward")
            and _forward_of(enc, "PlainConvEncoder.forward", "ResidualEncoder.forward")
            and _forward_of(dec, "UNetDecoder.forward") and getattr(dec, "encoder", None) is enc):
        return []
    stem = ["encoder.stem"] if getattr(enc, "stem", None) is not None else []
    n = len(enc.stages)
    fusions = []
    for s, (stage, up) in enumerate(zip(dec.stages, dec.transpconvs, strict=True)):
        blocks = getattr(stage, "convs", None)
        if not (_forward_of(stage, "StackedConvBlocks.forward") and isinstance(blocks, nn.Sequential) and len(blocks)
                and _forward_of(blocks[0], "ConvDropoutNormReLU.forward")):
            return []
        conv, first = getattr(blocks[0], "conv", None), getattr(blocks[0], "all_modules", [None])[0]
        if not (isinstance(conv, nn.Conv1d | nn.Conv2d | nn.Conv3d) and first is conv and conv.groups == 1
                and 0 < up.out_channels < conv.in_channels):
            return []
        fusions.append(SkipFusion(f"decoder.stages.{s}.convs.0.conv", up.out_channels,
                                  (*stem, *(f"encoder.stages.{k}" for k in range(n - 1 - s)))))
    return fusions


def _unet_encoder(network: nn.Module) -> EncoderLayout | None:
    """dynamic_network_architectures' PlainConvEncoder / ResidualEncoder: the module that holds the declared
    ``key_to_encoder`` (``encoder.stages``) runs its stem (``key_to_stem`` when outside the stages; PlainConvUNet's is
    stage 0), then every stage; each stage's output is one skip. Declared only where that encoder's forward is the
    library's own, so that the chain computes exactly what the network computes; channels and strides are the ones
    the encoder keeps (``output_channels``, ``strides``)."""
    enc = _declared(network, "key_to_encoder", "encoder.stages")
    owner_name = enc.rpartition(".")[0]
    try:
        owner, stages = network.get_submodule(owner_name), network.get_submodule(enc)
    except AttributeError:
        return None
    if not (_forward_of(owner, "PlainConvEncoder.forward", "ResidualEncoder.forward")
            and getattr(owner, "stages", None) is stages and isinstance(stages, nn.Sequential) and len(stages)):
        return None
    channels, strides = getattr(owner, "output_channels", None), getattr(owner, "strides", None)
    if not (isinstance(channels, list | tuple) and isinstance(strides, list | tuple)
            and len(channels) == len(strides) == len(stages)):
        return None
    stem_module = getattr(owner, "stem", None)  # ResidualEncoder runs it before the stages; PlainConvEncoder has none
    stem = _declared(network, "key_to_stem", f"{owner_name}.stem")
    if stem == enc or stem.startswith(enc + "."):  # PlainConvUNet: the declared stem is stage 0
        stem = None
    if stem_module is None:
        stem = None
    elif stem is None or not _has_module(network, stem) or network.get_submodule(stem) is not stem_module:
        return None  # the encoder runs a stem the declaration does not name: not the library's layout
    return EncoderLayout(stages=tuple(f"{enc}.{i}" for i in range(len(stages))),
                         channels=tuple(int(c) for c in channels),
                         strides=tuple(tuple(int(x) for x in s) for s in strides),
                         stem=stem)


PLAIN_CONV_UNET = ArchitectureSpec("PlainConvUNet", _plain_conv_unet, _unet_groups, skip_fusions=_unet_skip_fusions,
                                   encoder=_unet_encoder)
RESIDUAL_ENCODER_UNET = ArchitectureSpec("ResidualEncoderUNet", _residual_encoder_unet, _unet_groups,
                                         skip_fusions=_unet_skip_fusions, encoder=_unet_encoder)


# --- Primus (patch embedding, EVA ViT, patch decoder) -------------------------------------------------------------


def _primus_groups(network: nn.Module) -> dict[str, list[str]]:
    """encoder.stem (patch embedding, EVA's non-block parameters, register tokens), encoder.stage{i} (block i; the
    last also holds the final norm), heads (the patch decoder)."""
    names = _param_names(network)
    encoder = _declared(network, "key_to_encoder", "eva")
    enc, stem = re.escape(encoder), re.escape(_declared(network, "key_to_stem", "down_projection"))
    blocks = _indices(names, encoder + ".blocks.")
    groups = {"encoder.stem": [rf"{stem}\..+", rf"{enc}\.(?!blocks\.|norm\.).+", r"register_tokens"]}
    for i in blocks:
        groups[f"encoder.stage{i}"] = [rf"{enc}\.blocks\.{i}\..+"] + ([rf"{enc}\.norm\..+"] if i == blocks[-1] else [])
    groups["heads"] = [r"up_projection\..+"]
    return groups


def _primus(network: nn.Module) -> bool:
    return class_named("Primus")(network) or _has_module(network, "eva.blocks")


def _primus_positional_embedding(network: nn.Module) -> str | None:
    declared = declared_positional_embedding(network)
    if declared is not None:
        return declared
    return "eva.pos_embed" if _tensor_at(network, "eva.pos_embed") is not None else None


# The patch decoder ends in a transposed convolution straight under ``decode`` (its earlier stages are Sequentials:
# ``decode.0.0.weight``): that last layer is the segmentation head, its output channels (dim 1 of a transposed
# convolution's weight) mapped by label name as seg_layers' are.
PRIMUS_HEAD_PATTERN = r"(?:.*\.)?up_projection\.decode\.\d+\.(?:weight|bias)"
PRIMUS = ArchitectureSpec("Primus", _primus, _primus_groups, PRIMUS_HEAD_PATTERN,
                          positional_embedding=_primus_positional_embedding)

# Any other network: the groups it declares (parameter_group_patterns) or one group, the first convolution guessed (or
# keys_to_in_proj if declared), seg_layers heads, no encoder layout.
GENERIC = ArchitectureSpec("generic", lambda network: True)

_REGISTRY: list[ArchitectureSpec] = [PLAIN_CONV_UNET, RESIDUAL_ENCODER_UNET, PRIMUS]


def register_architecture(spec: ArchitectureSpec, *, first: bool = True) -> ArchitectureSpec:
    """Add ``spec`` to the registry: before every other spec (``first=True``) or after them (but always before the
    generic fallback). Returns ``spec``. A name already registered is an error (unregister it first)."""
    if not isinstance(spec, ArchitectureSpec):
        raise ArchitectureError(f"register_architecture takes an ArchitectureSpec, got {type(spec).__name__}")
    if spec.name in list_architectures():
        raise ArchitectureError(f"an architecture named {spec.name!r} is already registered; call "
                                f"unregister_architecture({spec.name!r}) first or choose another name")
    _REGISTRY.insert(0 if first else len(_REGISTRY), spec)
    return spec


def unregister_architecture(name: str) -> ArchitectureSpec:
    """Remove the spec called ``name`` from the registry and return it (the generic fallback cannot be removed)."""
    for i, spec in enumerate(_REGISTRY):
        if spec.name == name:
            return _REGISTRY.pop(i)
    raise ArchitectureError(f"no removable architecture named {name!r}; registered: {list_architectures()}")


def list_architectures() -> list[str]:
    """Names of the registered specs in matching order, the generic fallback last."""
    return [s.name for s in _REGISTRY] + [GENERIC.name]


def architecture_for(network: nn.Module) -> ArchitectureSpec:
    """The spec of ``network`` (unwrapped from DDP / DataParallel / torch.compile): the first registered spec that
    matches it, else :data:`GENERIC`."""
    mod = unwrap_network(network)
    return next((s for s in _REGISTRY if s.matches(mod)), GENERIC)
