"""Reading checkpoints safely: format detection, containers, metadata (plans, labels) and memory mapping.

Formats: PyTorch zip checkpoints (memory-mapped), legacy PyTorch pickles, and ``.safetensors`` files
(memory-mapped). Loading uses ``torch.load(weights_only=True)`` with a minimal allow-list that covers the NumPy
scalars stock nnU-Net checkpoints carry; anything else is refused with the global's name and the explicit opt-ins
(``allow_globals`` for named globals, ``trust_checkpoint`` for full unpickling of a file you trust).
"""

from __future__ import annotations

import importlib
import pickle
import re
import struct
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nnunet_transfer.core.nnssl import NnsslCheckpoint, detect_nnssl
from nnunet_transfer.errors import CheckpointError, UnsafeCheckpointError

__all__ = [
    "CONTAINER_KEYS",
    "EMA_CONTAINER_KEYS",
    "SAFE_GLOBALS",
    "SourceCheckpoint",
    "read_checkpoint",
    "resolve_globals",
]

# Globals stock nnU-Net checkpoints need beyond torch's defaults: NumPy scalars in the logging/_best_ema entries.
SAFE_GLOBALS: tuple[str, ...] = (
    "numpy.dtype",
    "numpy._core.multiarray.scalar",
    "numpy.core.multiarray.scalar",
    "numpy.dtypes.Float64DType",
    "numpy.dtypes.Float32DType",
    "numpy.dtypes.Int64DType",
    "numpy.dtypes.Int32DType",
    "numpy.dtypes.BoolDType",
)

# Where the weights live inside the usual containers, in order of preference.
CONTAINER_KEYS: tuple[str, ...] = (
    "network_weights",  # nnU-Net
    "state_dict",  # Lightning, MMEngine / MMPretrain, many research repos
    "model_state_dict",
    "model",
    "net",
    "network",
    "module",
    "weights",
    "params",
)
# Exponential-moving-average or teacher weights; used when asked for (``container=...``) or when nothing else exists.
EMA_CONTAINER_KEYS: tuple[str, ...] = (
    "state_dict_ema",
    "model_ema",
    "ema_state_dict",
    "ema",
    "ema_model",
    "teacher",
)

_UNSAFE_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


@dataclass
class SourceCheckpoint:
    """A checkpoint read from disk: its tensors by raw key, where they came from, and its nnU-Net metadata."""

    path: Path
    format: str  # "torch-zip" | "torch-pickle" | "safetensors"
    container: str  # dotted path of the entry that held the weights; "" for a plain state dict
    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)
    ignored_entries: list[str] = field(default_factory=list)  # non-tensor entries inside the weights container
    nnssl: NnsslCheckpoint | None = None  # the adaptation plan of an nnssl (OpenMind) checkpoint

    @property
    def init_args(self) -> dict[str, Any]:
        args = self.metadata.get("init_args")
        return args if isinstance(args, dict) else {}

    @property
    def plans(self) -> dict[str, Any] | None:
        """The nnU-Net plans the source network was built from, if the checkpoint carries them."""
        plans = self.init_args.get("plans")
        return plans if isinstance(plans, dict) else None

    @property
    def configuration(self) -> str | None:
        conf = self.init_args.get("configuration")
        return conf if isinstance(conf, str) else None

    @property
    def dataset_json(self) -> dict[str, Any] | None:
        dj = self.init_args.get("dataset_json")
        return dj if isinstance(dj, dict) else None

    @property
    def trainer_name(self) -> str | None:
        name = self.metadata.get("trainer_name")
        return name if isinstance(name, str) else None

    def unique_tensors(self) -> tuple[int, int]:
        """(number of distinct tensors, their total bytes), counting tensors that share storage once."""
        seen: set[tuple[int, int, tuple[int, ...]]] = set()
        nbytes = 0
        for t in self.state_dict.values():
            ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
            if ident in seen:
                continue
            seen.add(ident)
            nbytes += t.numel() * t.element_size()
        return len(seen), nbytes


def resolve_globals(names: Sequence[str] = SAFE_GLOBALS) -> list[Any]:
    """The objects named ``module.attr`` (default: :data:`SAFE_GLOBALS`) for ``torch.serialization.safe_globals``;
    names this environment lacks are left out."""
    objs = []
    for name in names:
        module, _, attr = name.rpartition(".")
        try:
            obj: Any = importlib.import_module(module)
            obj = getattr(obj, attr)
        except (ImportError, AttributeError):
            continue  # e.g. numpy.core on NumPy 2 or numpy._core on NumPy 1
        objs.append(obj)
    return objs


def _detect_format(path: Path) -> str:
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file (e.g. checkpoint_final.pth)")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: the file is empty (0 bytes)")
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04"):
        return "torch-zip"
    if len(head) >= 9:
        (header_len,) = struct.unpack("<Q", head[:8])
        if 0 < header_len <= size - 8 and head[8:9] == b"{":
            return "safetensors"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "torch-pickle"
    raise CheckpointError(
        f"{path}: not a PyTorch or safetensors checkpoint (unrecognised first bytes {head[:8]!r}); "
        "expected a file written by torch.save or safetensors"
    )


def _torch_load(path: Path, fmt: str, allow_globals: Sequence[str], trust: bool) -> Any:
    if fmt == "torch-zip":
        try:  # reads the central directory only (at the end of the file): cheap, and catches truncation
            zipfile.ZipFile(path).close()
        except (zipfile.BadZipFile, OSError) as e:
            raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({e})") from None
    kwargs: dict[str, Any] = {"map_location": "cpu", "weights_only": not trust}
    if fmt == "torch-zip":
        kwargs["mmap"] = True
    try:
        if trust:
            return torch.load(path, **kwargs)
        with torch.serialization.safe_globals(resolve_globals([*SAFE_GLOBALS, *allow_globals])):
            return torch.load(path, **kwargs)
    except pickle.UnpicklingError as e:
        names = _UNSAFE_GLOBAL.findall(str(e))
        if "Weights only load failed" in str(e) or names:
            needed = names or ["<unknown>"]
            if fmt == "torch-zip":
                try:
                    listed = torch.serialization.get_unsafe_globals_in_checkpoint(path)
                    needed = [g for g in listed if g not in SAFE_GLOBALS and g not in allow_globals] or needed
                except Exception:
                    pass
            raise UnsafeCheckpointError(
                f"{path}: refusing to unpickle global(s) {', '.join(needed)}: safe loading (weights_only) does not "
                f"allow them, and unpickling them could run code from the file. If you trust this file, allow them "
                f"explicitly (CLI: --allow-global {needed[0]}; API/recipe: allow_globals=[{needed[0]!r}]) or load "
                f"it unrestricted (CLI: --trust-checkpoint; API/recipe: trust_checkpoint=True).",
                needed,
            ) from None
        raise CheckpointError(f"{path}: cannot unpickle checkpoint ({e})") from None
    except (EOFError, RuntimeError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({type(e).__name__}: {e})") from None


def _tensor_share(obj: Mapping) -> float:
    return sum(isinstance(v, torch.Tensor) for v in obj.values()) / max(len(obj), 1)


def _find_weights(obj: Any, container: str | None, path: Path) -> tuple[str, Mapping[str, Any]]:
    """Return (dotted container path, mapping of tensors) for the entry that holds the weights."""
    if container:
        node = obj
        for part in container.split("."):
            if not isinstance(node, Mapping) or part not in node:
                have = sorted(map(str, node.keys())) if isinstance(node, Mapping) else type(node).__name__
                raise CheckpointError(f"{path}: container entry {container!r} not found (at {part!r}; entries: {have})")
            node = node[part]
        if not isinstance(node, Mapping):
            raise CheckpointError(f"{path}: entry {container!r} is a {type(node).__name__}, not a mapping of tensors")
        inner_path, inner = _find_weights(node, None, path) if not _has_tensors(node) else ("", node)
        return ".".join(p for p in (container, inner_path) if p), inner
    if not isinstance(obj, Mapping):
        if isinstance(obj, torch.nn.Module):
            return "<nn.Module>.state_dict()", obj.state_dict()
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict or a checkpoint dictionary")
    if _has_tensors(obj) and _tensor_share(obj) >= 0.5:
        return "", obj
    for keys in (CONTAINER_KEYS, EMA_CONTAINER_KEYS):
        for key in keys:
            if key in obj and isinstance(obj[key], Mapping | torch.nn.Module):
                inner_path, inner = _find_weights(obj[key], None, path)
                return ".".join(p for p in (key, inner_path) if p), inner
    if _has_tensors(obj):
        return "", obj
    raise CheckpointError(
        f"{path}: no weights found: top-level entries are {sorted(map(str, obj.keys()))[:20]}, none of which is a "
        f"known container ({', '.join(CONTAINER_KEYS + EMA_CONTAINER_KEYS)}). Name the entry that holds the weights "
        f"with --container KEY (API: container='KEY')."
    )


def _has_tensors(obj: Mapping) -> bool:
    return any(isinstance(v, torch.Tensor) for v in obj.values())


def read_checkpoint(
    path: str | Path,
    *,
    container: str | None = None,
    allow_globals: Sequence[str] = (),
    trust_checkpoint: bool = False,
) -> SourceCheckpoint:
    """Read a checkpoint's tensors and metadata without running code from it (unless ``trust_checkpoint``).

    ``container`` names the entry holding the weights (dotted for nested entries, e.g. ``"ema.module"``); by default
    the usual containers are tried (:data:`CONTAINER_KEYS`, then :data:`EMA_CONTAINER_KEYS`).
    An nnssl checkpoint's adaptation plan (embedded, or ``adaptation_plan.json`` beside it) is validated and kept
    in :attr:`SourceCheckpoint.nnssl`. Raises :class:`~nnunet_transfer.errors.CheckpointError` (or its subclasses)
    naming the file and the cause.
    """
    path = Path(path)
    fmt = _detect_format(path)
    if fmt == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({e})") from None
        obj: Any = state
        metadata: dict[str, Any] = {}
    else:
        obj = _torch_load(path, fmt, allow_globals, trust_checkpoint)
        metadata = {}
    where, weights = _find_weights(obj, container, path)
    state_dict = {str(k): v for k, v in weights.items() if isinstance(v, torch.Tensor)}
    ignored = sorted(str(k) for k, v in weights.items() if not isinstance(v, torch.Tensor))
    if not state_dict:
        raise CheckpointError(f"{path}: the state dict{f' in {where!r}' if where else ''} is empty: no tensors to load")
    if isinstance(obj, Mapping) and where:
        top = where.split(".")[0]
        metadata = {str(k): v for k, v in obj.items() if k != top and k not in ("optimizer_state", "optimizer")}
    nnssl = detect_nnssl(path, obj, where, state_dict) if isinstance(obj, Mapping) else None
    return SourceCheckpoint(path, fmt, where, state_dict, metadata, ignored, nnssl)
