"""Small helpers on ``torch.nn`` modules shared by the loader and the architecture registry."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from nnunet_transfer.errors import ArchitectureError

__all__ = ["module_aliases", "unwrap_network"]


def unwrap_network(network: nn.Module) -> nn.Module:
    """The plain module under DDP / DataParallel and torch.compile wrappers, in any order and nesting."""
    mod = network
    while True:
        if isinstance(mod, nn.parallel.DistributedDataParallel | nn.DataParallel):
            mod = mod.module
        elif hasattr(mod, "_orig_mod") and isinstance(mod._orig_mod, nn.Module):
            mod = mod._orig_mod
        else:
            return mod


def module_aliases(network: nn.Module, names: Iterable[str]) -> list[str]:
    """Every name under which the modules called ``names`` are reachable, in registration order.

    nnU-Net's networks reach one module under several names (``encoder.stages.0.0.convs.0.conv`` is also
    ``...convs.0.all_modules.0`` and ``decoder.encoder.stages.0.0.convs.0.conv``). Raises
    :class:`~nnunet_transfer.errors.ArchitectureError` for a name that is no submodule of ``network``.
    """
    wanted: set[int] = set()
    for name in names:
        try:
            wanted.add(id(network.get_submodule(name)))
        except AttributeError as e:
            raise ArchitectureError(
                f"{type(network).__name__} has no submodule {name!r} ({e}); fix the module name the network or its "
                "registered ArchitectureSpec declares (keys_to_in_proj / input_projection)"
            ) from None
    return [n for n, m in network.named_modules(remove_duplicate=False) if id(m) in wanted]
