"""Key normalisation: one place that turns checkpoint keys into the target network's names.

Four kinds of rule, applied in this order:

0. **The user's key map** (Python API only, ``LoadOptions.key_map``): a callable given each raw checkpoint key; it
   returns the new key (the rules below then apply to it), or ``None`` to drop the tensor (it is neither loaded nor
   reported as unused). It runs first so that it sees the keys exactly as ``nnunet-transfer inspect`` shows them.
1. **User rename rules** ``(pattern, replacement)``: the pattern must match the *whole* key (``re.fullmatch``);
   the replacement may use groups (``\\1``). The first matching rule wins.
2. **Wrapper segments**: ``module.`` (DDP / DataParallel) at the start of a key, and ``_orig_mod.``
   (``torch.compile``) as a whole segment anywhere, in any order and nesting.
3. **Prefix alignment** against the target's keys: a leading prefix of the source keys (``model.``,
   ``backbone.``, ``net.``...: zero to two segments) may be replaced by a leading prefix of the target's keys
   (zero or one segment, e.g. ``encoder.``). The pair that lets most source keys find a target key is chosen; ties
   go to the shorter change. Prefixes are only ever removed or added at the start of a key (anchored).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["KeyMap", "KeyMapping", "RenameRule", "normalize_keys", "parse_rename_rule", "rename_rule",
           "storage_id", "strip_wrappers"]

RenameRule = tuple[str, str]
KeyMap = Callable[[str], str | None]

_ORIG_MOD = re.compile(r"(?:(?<=\.)|^)_orig_mod\.")
_MODULE = "module."


def strip_wrappers(key: str) -> str:
    """Remove DDP (``module.``, leading) and torch.compile (``_orig_mod.``, any segment) wrapper segments."""
    while True:
        new = _ORIG_MOD.sub("", key)
        while new.startswith(_MODULE):
            new = new[len(_MODULE):]
        if new == key:
            return key
        key = new


def parse_rename_rule(text: str) -> RenameRule:
    """Parse ``PATTERN=REPLACEMENT`` (as given on the command line) into a rule, checking the regex compiles."""
    if "=" not in text:
        raise ValueError(f"rename rule {text!r} must look like PATTERN=REPLACEMENT, e.g. 'backbone\\.(.*)=encoder.\\1'")
    pattern, replacement = text.split("=", 1)
    return rename_rule(pattern, replacement, shown=repr(text))


def rename_rule(pattern: str, replacement: str, shown: str | None = None) -> RenameRule:
    """The rule ``(pattern, replacement)``, checking the pattern compiles (``shown``: how the error names the rule)."""
    try:
        re.compile(pattern)
    except re.error as e:
        raise ValueError(f"rename rule {shown or repr((pattern, replacement))}: invalid regular expression "
                         f"{pattern!r}: {e}") from e
    return pattern, replacement


@dataclass
class KeyMapping:
    """Result of :func:`normalize_keys`: ``names[source_key] = normalised key`` plus what was done.

    Keys the key map dropped are not in :attr:`names`; they are listed in :attr:`dropped`.
    """

    names: dict[str, str]
    mapped: int = 0
    dropped: list[str] = field(default_factory=list)
    renamed: int = 0
    wrappers_stripped: int = 0
    prefix_removed: str = ""
    prefix_added: str = ""
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """One line saying which rules changed keys (empty if none did)."""
        parts = []
        if self.mapped or self.dropped:
            parts.append(f"key_map renamed {self.mapped} keys and dropped {len(self.dropped)}")
        if self.renamed:
            parts.append(f"{self.renamed} keys renamed by user rules")
        if self.wrappers_stripped:
            parts.append(f"wrapper prefixes (module./_orig_mod.) stripped from {self.wrappers_stripped} keys")
        if self.prefix_removed or self.prefix_added:
            parts.append(f"prefix {self.prefix_removed or '<none>'!r} -> {self.prefix_added or '<none>'!r}")
        return "; ".join(parts)


def _leading_prefixes(keys: Iterable[str], max_segments: int) -> Counter[str]:
    counts: Counter[str] = Counter()
    for k in keys:
        parts = k.split(".")
        for n in range(1, min(max_segments, len(parts) - 1) + 1):
            counts[".".join(parts[:n]) + "."] += 1
    return counts


def normalize_keys(
    source_keys: Sequence[str],
    target_keys: Iterable[str] | None = None,
    rename: Sequence[RenameRule] = (),
    key_map: KeyMap | None = None,
) -> KeyMapping:
    """Map each source key to the name it should have in the target network.

    Order: ``key_map`` (may drop keys), then the ``rename`` rules, wrapper segments and prefix alignment.

    >>> m = normalize_keys(["module._orig_mod.model.encoder.w"], ["encoder.w", "decoder.w"])
    >>> m.names["module._orig_mod.model.encoder.w"], m.prefix_removed
    ('encoder.w', 'model.')
    """
    compiled = [(re.compile(p), r) for p, r in rename]
    names: dict[str, str] = {}
    dropped: list[str] = []
    mapped = renamed = stripped = 0
    for key in source_keys:
        new = key
        if key_map is not None:
            out = key_map(key)
            if out is None:
                dropped.append(key)
                continue
            if not isinstance(out, str):
                raise TypeError(f"key_map returned {type(out).__name__} for checkpoint key {key!r}; "
                                "it must return the new key (str) or None to drop the tensor")
            mapped += out != key
            new = out
        for pattern, replacement in compiled:
            m = pattern.fullmatch(new)
            if m:
                new = m.expand(replacement)
                renamed += 1
                break
        unwrapped = strip_wrappers(new)
        stripped += unwrapped != new
        names[key] = unwrapped
    mapping = KeyMapping(names, mapped=mapped, dropped=dropped, renamed=renamed, wrappers_stripped=stripped)
    if target_keys is None:
        return mapping
    targets = set(target_keys)
    values = list(names.values())
    best = (sum(v in targets for v in values), 0, "", "")
    if best[0] < len(values):
        src_prefixes = [""] + [p for p, n in _leading_prefixes(values, 2).items() if n > 1 or len(values) == 1]
        tgt_prefixes = ["", *_leading_prefixes(targets, 1)]
        for sp in src_prefixes:
            candidates = [v[len(sp):] for v in values if v.startswith(sp)]
            for tp in tgt_prefixes:
                if not sp and not tp:
                    continue
                score = sum((tp + c) in targets for c in candidates)
                change = len(sp) + len(tp)
                if score > best[0] or (score == best[0] and score > 0 and change < best[1]):
                    best = (score, change, sp, tp)
    _, _, sp, tp = best
    if sp or tp:
        for key, value in names.items():
            if value.startswith(sp):
                names[key] = tp + value[len(sp):]
        mapping.prefix_removed, mapping.prefix_added = sp, tp
    return mapping


def storage_id(tensor: Any) -> tuple[int, int, tuple[int, ...]]:
    """What makes two names of a state dict one tensor (aliases, e.g. ``decoder.encoder.*`` of ``encoder.*``):
    storage, offset and shape."""
    return (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
