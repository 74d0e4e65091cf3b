"""Adaptive pretrained loading: match checkpoint tensors to a network by name, adapt shapes, report, guard.

The load is planned completely before anything is written: a checkpoint with NaN/Inf weights, or one that would
cover less than ``min_coverage`` of the network, leaves the network untouched. Tensors are copied in place, so
parameter identity (and with it the optimizer's references, DDP's buckets, torch.compile's graph) is preserved.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

from nnunet_transfer.core.adapters import is_adapter_key, plain_key
from nnunet_transfer.core.architectures import SEG_LAYERS_HEAD_PATTERN, architecture_for
from nnunet_transfer.core.loading.adapt import (
    adapt_conv_kernel,
    adapt_input_channels,
    adapt_transposed_kernel,
    infer_token_grid,
    resample_positional_embedding,
)
from nnunet_transfer.core.loading.checkpoint import SourceCheckpoint, read_checkpoint
from nnunet_transfer.core.loading.heads import HeadChannels, head_channels, match_channels
from nnunet_transfer.core.loading.keys import KeyMap, normalize_keys, storage_id
from nnunet_transfer.core.loading.nnssl_map import NnsslFormat
from nnunet_transfer.core.loading.options import LoadOptions
from nnunet_transfer.core.loading.report import LabelMatch, LoadReport, ReasonCode, TensorRecord
from nnunet_transfer.core.loading.rules import (
    Decision,
    LoadContext,
    TensorCase,
    TensorRule,
    decide,
    format_for,
    rules_for,
)
from nnunet_transfer.core.modules import unwrap_network
from nnunet_transfer.errors import LoadGuardError, NonFiniteWeightsError

__all__ = ["DEFAULT_HEAD_PATTERN", "FORMATS", "TENSOR_RULES", "LoadOptions", "load_pretrained", "plan_load",
           "unwrap_network"]

#: the checkpoint formats shipped (registered with :func:`~nnunet_transfer.core.loading.rules.register_load_format`)
FORMATS = (NnsslFormat,)

# used when LoadOptions.head_pattern is None ("as the architecture declares")
DEFAULT_HEAD_PATTERN = SEG_LAYERS_HEAD_PATTERN  # nnU-Net's U-Nets; the registry gives every family its own


def _shape(t: torch.Tensor) -> list[int]:
    return list(t.shape)


def _fmt(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


@dataclass
class _Target:
    names: list[str]
    tensor: torch.Tensor
    owner: nn.Module | None


def _target_tensors(mod: nn.Module) -> list[_Target]:
    """Each distinct tensor of the state dict once, with all its names (first = canonical, in registration order).
    A layer wrapped by LoRA (``x.base_layer.weight``) is also known by its plain name (``x.weight``), the one a
    checkpoint of the plain network has."""
    modules = dict(mod.named_modules(remove_duplicate=False))
    groups: dict[int, _Target] = {}
    for name, t in mod.state_dict(keep_vars=True).items():
        g = groups.get(id(t))
        if g is None:
            owner = modules.get(name.rpartition(".")[0])
            groups[id(t)] = g = _Target([name], t, owner)
        else:
            g.names.append(name)
        if (plain := plain_key(name)) != name and plain not in g.names:
            g.names.append(plain)
    return list(groups.values())


def _is_finite(t: torch.Tensor) -> bool:
    """No NaN/Inf in ``t``, in one fast streaming pass for the usual case.

    A finite sum proves every element finite (NaN and Inf propagate; +Inf and -Inf give NaN). Only when the sum is
    not finite (a real NaN/Inf, or an overflow of large finite values) is the exact element-wise test run.
    """
    if not t.is_floating_point():
        return True
    if math.isfinite(float(t.sum())):
        return True
    return bool(torch.isfinite(t).all())


def _map_heads(
    src: torch.Tensor, tgt: torch.Tensor, src_ch: HeadChannels | None, tgt_ch: HeadChannels | None,
    out_dim: int = 0,
) -> tuple[str, ReasonCode, str, torch.Tensor | None, list[LabelMatch]]:
    """(status, code, reason, value, mapping) for one segmentation-head tensor whose output channels lie along
    ``out_dim`` (1 for a transposed convolution's weight, as Primus's last layer)."""
    if out_dim:
        status, code, reason, value, mapping = _map_heads(src.movedim(out_dim, 0), tgt.movedim(out_dim, 0), src_ch,
                                                          tgt_ch)
        return status, code, reason, None if value is None else value.movedim(0, out_dim), mapping
    if src.shape[1:] != tgt.shape[1:]:
        return ("skipped", ReasonCode.HEAD_SHAPE_DIFFERS,
                f"head input shape differs: {_fmt(src.shape)} vs {_fmt(tgt.shape)}; fresh init", None, [])
    if src_ch is None or tgt_ch is None:
        if src.shape == tgt.shape and src_ch is None and tgt_ch is None:
            return "loaded", ReasonCode.HEAD_SAME_SHAPE, "head: same shape, no label names to compare", src, []
        missing = "checkpoint" if src_ch is None else "target"
        return ("skipped", ReasonCode.HEAD_LABELS_UNKNOWN,
                f"head: label names of the {missing} unknown; fresh init (pass labels to map)", None, [])
    if len(src_ch.names) != src.shape[0] or len(tgt_ch.names) != tgt.shape[0]:
        return ("skipped", ReasonCode.HEAD_LABEL_COUNT,
                "head: label count does not match the head's output channels; fresh init", None, [])
    mapping = match_channels(src_ch, tgt_ch)
    copied = [m for m in mapping if m.source_index is not None]
    if not copied and src_ch.regions != tgt_ch.regions:
        why = (f"head: source uses {src_ch.kind()}, target {tgt_ch.kind()}, no region with the same name and label "
               "set; fresh init")
        return "skipped", ReasonCode.HEAD_KIND_DIFFERS, why, None, mapping
    if not copied:
        return "skipped", ReasonCode.HEAD_NO_SHARED_LABELS, "head: no shared label names; fresh init", None, mapping
    identical = all(m.source_index == m.target_index for m in mapping)
    if len(copied) == len(mapping) and src.shape == tgt.shape and identical:
        return "loaded", ReasonCode.HEAD_SAME_LABELS, "head: same labels", src, mapping
    value = tgt.detach().to("cpu", copy=True)
    for m in copied:
        value[m.target_index] = src[m.source_index]
    names = ", ".join(f"{m.target_name}<-{m.source_name}" for m in copied)
    by = "label name" if not (src_ch.regions or tgt_ch.regions) else "name and label set"
    fresh = [m.target_name for m in mapping if m.source_index is None]
    why = (f"head: copied {len(copied)} of {len(mapping)} channels by {by} ({names})"
           + (f"; fresh: {', '.join(fresh)}" if fresh and by != "label name" else ""))
    return "adapted", ReasonCode.HEAD_MAPPED, why, value, mapping


def _nonfinite_rule(ctx: LoadContext, case: TensorCase) -> Decision | None:
    if _is_finite(case.source):
        return None
    bad = int((~torch.isfinite(case.source)).sum())
    ctx.nonfinite.append(f"{case.source_key} ({bad} of {case.source.numel()} values NaN/Inf)")
    return Decision("skipped", ReasonCode.NONFINITE.value, f"{bad} NaN/Inf values")


def _head_rule(ctx: LoadContext, case: TensorCase) -> Decision | None:
    if not case.is_head:
        return None
    if not ctx.options.map_heads:
        return Decision("skipped", ReasonCode.HEAD_OFF.value, "head: map_heads is off; fresh init")
    out_dim = 1 if isinstance(case.owner, _ConvTransposeNd) and case.target.ndim > 2 else 0
    status, code, reason, value, mapping = _map_heads(case.source, case.target, ctx.source_channels,
                                                      ctx.target_channels, out_dim)
    return Decision(status, code.value, reason, value, mapping)


def _exact_rule(ctx: LoadContext, case: TensorCase) -> Decision | None:
    if case.source.shape != case.target.shape:
        return None
    return Decision("loaded", ReasonCode.EXACT.value, "exact", case.source)


def _positional_embedding_rule(ctx: LoadContext, case: TensorCase) -> Decision | None:
    if ctx.positional_embedding is None or ctx.positional_embedding not in case.names:
        return None
    return Decision(*_adapt_pos_embed(case.source, case.target, case.owner, ctx))


def _adapt_rule(ctx: LoadContext, case: TensorCase) -> Decision:
    return Decision(*_adapt(case.key, case.source, case.target, case.owner, case.key in ctx.first_conv,
                            ctx.options))


#: the loader's own rules, asked after those of the format and the family (see :mod:`.rules`); the last always answers
TENSOR_RULES: tuple[TensorRule, ...] = (_nonfinite_rule, _head_rule, _exact_rule, _positional_embedding_rule,
                                        _adapt_rule)


def _context(mod: nn.Module, source: SourceCheckpoint, targets: list[_Target], options: LoadOptions,
             target_labels: Mapping[str, Any] | Sequence[str] | None,
             source_labels: Mapping[str, Any] | Sequence[str] | None) -> LoadContext:
    spec = architecture_for(mod)  # a head pattern the caller gave wins over the one the architecture declares
    in_proj = {f"{m}.weight" for m in spec.input_projection(mod)}  # every alias of the input projection
    if source_labels is None and source.dataset_json is not None:
        source_labels = source.dataset_json.get("labels")
    ctx = LoadContext(
        network=mod, source=source, options=options, spec=spec,
        head_re=re.compile(options.head_pattern or spec.head_pattern),
        positional_embedding=spec.positional_embedding(mod),
        target_names=frozenset(n for t in targets for n in t.names),
        first_conv=frozenset(t.names[0] for t in targets if in_proj.intersection(t.names)),
        source_channels=head_channels(source_labels), target_channels=head_channels(target_labels))
    format_for(ctx)
    return ctx


def plan_load(
    network: nn.Module,
    source: SourceCheckpoint,
    target_labels: Mapping[str, Any] | Sequence[str] | None = None,
    options: LoadOptions | None = None,
    source_labels: Mapping[str, Any] | Sequence[str] | None = None,
) -> tuple[LoadReport, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Decide what to load where, without touching the network. Returns the report and (target, value) pairs.

    Each target tensor with a checkpoint tensor of its name is decided by the first rule that answers (the
    checkpoint format's, the architecture family's, then :data:`TENSOR_RULES`; see :mod:`.rules`)."""
    options = options or LoadOptions()
    mod = unwrap_network(network)
    targets = _target_tensors(mod)
    ctx = _context(mod, source, targets, options, target_labels, source_labels)
    fmt = ctx.format
    own_map = fmt.key_map()
    key_map = options.key_map if own_map is None else own_map if options.key_map is None else _chain(
        options.key_map, own_map)
    mapping = normalize_keys(list(source.state_dict), [n for t in targets for n in t.names], options.rename, key_map)
    by_name: dict[str, str] = {}
    for raw, norm in mapping.names.items():
        by_name.setdefault(norm, raw)
    rules = rules_for(ctx, TENSOR_RULES)

    records: list[TensorRecord] = []
    plan: list[tuple[torch.Tensor, torch.Tensor]] = []
    used: set[str] = set()
    label_mapping: list[LabelMatch] = []
    for t in targets:
        tgt = t.tensor
        is_head = any(ctx.head_re.fullmatch(n) for n in t.names)
        if is_adapter_key(t.names[0]):  # LoRA: new, starts as a no-op; not part of the pretrained coverage
            records.append(TensorRecord(t.names[0], "new", ReasonCode.ADAPTER.value,
                                        "LoRA adapter: new (zero update at first)", None, None, _shape(tgt),
                                        tgt.numel(), isinstance(tgt, nn.Parameter), False, t.names[1:],
                                        in_coverage=False))
            continue
        hits = [n for n in t.names if n in by_name]
        for n in hits:
            used.add(by_name[n])
        rec = TensorRecord(t.names[0], "missing", ReasonCode.MISSING.value,
                           "missing: no tensor of this name in the checkpoint", None, None, _shape(tgt), tgt.numel(),
                           isinstance(tgt, nn.Parameter), is_head, t.names[1:])
        records.append(rec)
        if not hits:
            continue
        src_key = by_name[hits[0]]
        src = source.state_dict[src_key]
        rec.source_key, rec.source_shape = src_key, _shape(src)
        d = decide(rules, ctx, TensorCase(t.names, tgt, t.owner, src_key, src, is_head))
        rec.status, rec.code, rec.reason = d.status, d.code, d.reason
        label_mapping = label_mapping or d.label_mapping
        if d.value is not None:
            plan.append((tgt, d.value))
    if ctx.nonfinite:
        nonfinite = ctx.nonfinite
        raise NonFiniteWeightsError(
            f"{source.path}: NaN/Inf values in tensors that would be loaded: {'; '.join(nonfinite[:5])}"
            f"{f' (+{len(nonfinite) - 5} more)' if len(nonfinite) > 5 else ''}. Nothing was loaded."
        )
    seen = {storage_id(source.state_dict[k]) for k in used}  # each checkpoint tensor once, aliases too
    dropped = set(mapping.dropped)
    unused = []
    for k in source.state_dict:
        sid = storage_id(source.state_dict[k])
        if k not in used and k not in dropped and sid not in seen:
            unused.append(k)
            seen.add(sid)
    own_dropped = fmt.dropped()  # the format's drops are said in its own note
    mapping.dropped = [k for k in mapping.dropped if k not in own_dropped]
    notes = fmt.finish(records, mapping)
    if mapping.dropped:
        notes.append(f"{len(mapping.dropped)} checkpoint keys dropped by key_map: {mapping.dropped[:5]}")
    if source.ignored_entries:
        notes.append(f"non-tensor entries in the weights container ignored: {source.ignored_entries[:5]}")
    report = LoadReport(
        checkpoint=str(source.path),
        format=source.format,
        container=source.container,
        key_rules=mapping.describe(),
        tensors=records,
        unused_source_keys=unused,
        min_coverage=options.min_coverage,
        label_mapping=label_mapping,
        notes=notes,
        mismatch=fmt.mismatch(),
    )
    return report, plan


def _chain(first: KeyMap, second: KeyMap) -> KeyMap:
    """The user's key map first (it sees the raw keys), then the format's."""
    def key_map(key: str) -> str | None:
        out = first(key)
        return None if out is None else second(out)

    return key_map


def _prefix_tokens(state_dict: Mapping[str, torch.Tensor]) -> int:
    """Prefix (register / class) tokens a checkpoint's positional embedding holds before its grid."""
    n = 0
    for key, value in state_dict.items():
        if key.rsplit(".", 1)[-1] == "register_tokens" and value.ndim == 3:
            n += int(value.shape[1])
        elif key.rsplit(".", 1)[-1] == "cls_token":
            n += 1
    return n


def _adapt_pos_embed(src: torch.Tensor, tgt: torch.Tensor, owner: nn.Module | None, ctx: LoadContext
                     ) -> tuple[str, str, str, torch.Tensor | None]:
    """Resample a positional embedding ``[1, prefix + tokens, C]`` to the target's grid (prefix tokens apart)."""
    shapes = f"{_fmt(src.shape)} vs target {_fmt(tgt.shape)}"
    if src.ndim != 3 or tgt.ndim != 3 or src.shape[0] != 1 or tgt.shape[0] != 1 or src.shape[2] != tgt.shape[2]:
        return "skipped", ReasonCode.WIDTH_MISMATCH.value, f"positional embedding widths differ: {shapes}", None
    src_prefix = _prefix_tokens(ctx.source.state_dict)
    tgt_prefix = int(getattr(owner, "num_prefix_tokens", 0) or 0)
    src_hints = ctx.format.token_grid_hints()
    rope = getattr(owner, "rope", None)
    tgt_hints = [list(rope.feat_shape)] if getattr(rope, "feat_shape", None) is not None else []
    src_grid = infer_token_grid(src.shape[1] - src_prefix, src_hints)
    tgt_grid = infer_token_grid(tgt.shape[1] - tgt_prefix, tgt_hints)
    if src_grid is None or tgt_grid is None:
        which = "checkpoint's" if src_grid is None else "target's"
        return ("skipped", ReasonCode.POS_EMBED_GRID.value,
                f"positional embedding: the {which} token grid cannot be inferred from its token count: {shapes}",
                None)
    value = resample_positional_embedding(src, src_grid, tgt_grid, src_prefix)
    if src_prefix != tgt_prefix:  # the target's own prefix tokens stay fresh
        value = torch.cat([tgt.detach().to("cpu")[:, :tgt_prefix], value[:, src_prefix:]], dim=1)
    why = (f"positional embedding resampled (trilinear) from a {_fmt(src_grid)} to a {_fmt(tgt_grid)} token grid"
           + (f"; {src_prefix} prefix tokens kept apart" if src_prefix else ""))
    return "adapted", ReasonCode.POS_EMBED.value, why, value


def _adapt(
    key: str, src: torch.Tensor, tgt: torch.Tensor, owner: nn.Module | None, is_first_conv: bool, options: LoadOptions
) -> tuple[str, str, str, torch.Tensor | None]:
    """Adapt a tensor whose shape differs; (status, code, reason, value or None).

    The code of an adapted tensor joins the adaptations applied with ``+`` (``input_channels+kernel``).
    """
    shapes = f"{_fmt(src.shape)} vs target {_fmt(tgt.shape)}"
    if src.ndim != tgt.ndim:
        return "skipped", ReasonCode.NDIM_MISMATCH.value, f"dimensionality differs: {shapes}", None
    if not (isinstance(owner, _ConvNd) and key.endswith("weight") and tgt.ndim >= 3):
        return "skipped", ReasonCode.WIDTH_MISMATCH.value, f"shape differs (channel widths): {shapes}", None
    transposed = isinstance(owner, _ConvTransposeNd)
    in_dim, out_dim = (0, 1) if transposed else (1, 0)
    if src.shape[out_dim] != tgt.shape[out_dim]:
        return "skipped", ReasonCode.WIDTH_MISMATCH.value, f"channel widths differ: {shapes}", None
    w, codes, reasons = src, [], []
    if src.shape[in_dim] != tgt.shape[in_dim]:
        if not is_first_conv:
            return "skipped", ReasonCode.WIDTH_MISMATCH.value, f"channel widths differ: {shapes}", None
        if not options.adapt_input_channels:
            return ("skipped", ReasonCode.INPUT_CHANNELS_OFF.value,
                    f"input channels differ and adapt_input_channels is off: {shapes}", None)
        w = adapt_input_channels(w, tgt.shape[in_dim], dim=in_dim)
        codes.append(ReasonCode.INPUT_CHANNELS.value)
        reasons.append(f"input channels {src.shape[in_dim]}->{tgt.shape[in_dim]} (sum over channels kept)")
    kernel_t = tuple(tgt.shape[2:])
    if tuple(w.shape[2:]) != kernel_t:
        if not options.adapt_kernels:
            return ("skipped", ReasonCode.KERNEL_ADAPT_OFF.value,
                    f"kernel size differs and kernel adaptation is off: {shapes}", None)
        before = _fmt(w.shape[2:])
        if transposed:
            adapted = adapt_transposed_kernel(w, kernel_t)
            if adapted is None:
                return ("skipped", ReasonCode.NON_INTEGER_FACTOR.value,
                        f"kernel size differs by a non-integer factor: {shapes}", None)
            w = adapted
            codes.append(ReasonCode.TRANSPOSED_KERNEL.value)
            reasons.append(f"transposed kernel {before}->{_fmt(kernel_t)} (average/repeat taps)")
        else:
            w = adapt_conv_kernel(w, kernel_t)
            codes.append(ReasonCode.KERNEL.value)
            reasons.append(f"kernel {before}->{_fmt(kernel_t)} (sum along axis kept)")
    return "adapted", "+".join(codes), "; ".join(reasons), w


def load_pretrained(
    network: nn.Module,
    checkpoint_path: str | Path | SourceCheckpoint,
    target_labels: Mapping[str, Any] | Sequence[str] | None = None,
    options: LoadOptions | None = None,
    *,
    dry_run: bool = False,
    **overrides: Any,
) -> LoadReport:
    """Load a checkpoint into ``network`` (plain, compiled or DDP-wrapped) adaptively and return the report.

    ``target_labels`` is the target's ``dataset.json`` label map (or one name per head channel); head channels whose
    names the checkpoint shares are copied. ``options`` is a :class:`LoadOptions` (a recipe's ``pretrained`` section
    is one); keyword ``overrides`` are :class:`LoadOptions` fields set on top of it. Raises
    :class:`~nnunet_transfer.errors.LoadGuardError` below ``min_coverage`` and
    :class:`~nnunet_transfer.errors.CheckpointError` for unusable files; in both cases nothing is loaded.

    >>> report = load_pretrained(net, "checkpoint_final.pth", {"background": 0, "liver": 1})  # doctest: +SKIP
    >>> print(report.summary())  # doctest: +SKIP
    """
    if options is not None and not isinstance(options, LoadOptions):
        raise TypeError(f"options must be a LoadOptions, not {type(options).__name__}; pass single options as "
                        "keyword arguments")
    opts = (options or LoadOptions()).replace(**overrides)
    source = (
        checkpoint_path
        if isinstance(checkpoint_path, SourceCheckpoint)
        else read_checkpoint(
            checkpoint_path,
            container=opts.container,
            allow_globals=opts.allow_globals,
            trust_checkpoint=opts.trust_checkpoint,
        )
    )
    report, plan = plan_load(network, source, target_labels, opts)
    if not report.passed:
        raise LoadGuardError(
            f"{source.path}: {report.mismatch + '. ' if report.mismatch else ''}only {report.coverage:.1%} of the "
            "network's parameters (segmentation heads excluded) "
            f"would come from the checkpoint, below the minimum {report.min_coverage:.0%}; refusing to train as good "
            f"as from scratch. Main reasons: {'; '.join(report.main_reasons()) or 'none'}. Nothing was loaded. "
            "Run `nnunet-transfer check` to see every tensor; transfer the plans of the pretrained model to your "
            "dataset, add rename rules, or lower min_coverage if this is intended.",
            report,
        )
    if not dry_run:
        with torch.no_grad():
            for target, value in plan:
                target.copy_(value)
        report.applied = True
    return report
