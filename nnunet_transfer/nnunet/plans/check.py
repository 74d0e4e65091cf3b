"""Step 5 of a plans transfer: the load the fine-tune would get with the new plans (a dry run of the loader)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nnunet_transfer.nnunet.plans.transfer import PlansTransfer

__all__ = ["check_transfer"]


def check_transfer(
    transfer: PlansTransfer, min_coverage: float = 0.5, *, trainer: str | type | None = None, options: Any = None
) -> list[tuple[str, Any]]:
    """The load the fine-tune would get, per configuration: ``[(configuration, LoadReport)]`` (dry runs).

    From a checkpoint: its weights against the network the new plans build for the target. From plans: the
    network the source plans build for the source (needs its dataset.json) against the target's. Networks are
    built as ``trainer`` builds them (default: the source's, else nnU-Net's ``nnUNetTrainer``); everything is in
    memory: no folder is read or written. ``options`` (a :class:`LoadOptions`, e.g. the fine-tuning trainer's recipe's
    ``pretrained`` section) replaces the default options with ``min_coverage``.
    """
    from nnunet_transfer.core.loading.checkpoint import SourceCheckpoint
    from nnunet_transfer.core.loading.loader import LoadOptions, plan_load
    from nnunet_transfer.nnunet.networks import build_network, find_trainer_class

    src = transfer.source
    trainer_class = find_trainer_class(trainer if trainer is not None else src.trainer)
    options = options if options is not None else LoadOptions(min_coverage=min_coverage)
    results = []
    ckpt = src.checkpoint
    for c in transfer.configurations:
        if ckpt is None:
            if src.dataset_json is None:
                transfer.notes.append(f"{c}: no check: the source's dataset.json is not beside its plans")
                continue
            source_net = build_network(src.plans, c, src.dataset_json, trainer=trainer_class)
            source = SourceCheckpoint(Path(f"<network of {src.description}, {c}>"), "in-memory", "",
                                      source_net.state_dict(), {"init_args": {"dataset_json": src.dataset_json}})
        elif ckpt.configuration not in (None, c):
            continue
        else:
            source = ckpt
        network = build_network(transfer.plans, c, transfer.target_dataset_json, trainer=trainer_class)
        report, _ = plan_load(network, source, transfer.target_dataset_json.get("labels"), options)
        results.append((c, report))
    return results
