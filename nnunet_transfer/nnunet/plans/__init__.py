"""Plans transfer: target-dataset plans that build the pretrained network, from a checkpoint or a source's plans.

What is kept from the source: the network architecture (so that the weights fit), the patch size, spacing, batch
size, resampling and the axis transposition of each selected configuration. What is the target's: dataset name,
reader/writer, data identifiers, per-channel normalisation schemes (and their use of the nonzero mask), the
intensity statistics CT normalisation needs (``intensity_stats="target"``, the default, from the target's
fingerprint; ``"source"`` keeps the source's, possible only with equal channel counts), the median shape and spacing,
and the channel count (the network's input channels come from the target's dataset.json).

The steps, one module each: :mod:`.source` reads the source plans; :mod:`.target` what the target's raw data
decides (fingerprint, normalisation); :mod:`.transfer` computes the new plans, their diff (:mod:`.diff`) and costs;
:mod:`.write` writes and preprocesses; :mod:`.check` dry-runs the load. nnU-Net's data roots are explicit
parameters (default: the nnUNet_* environment variables, read at call time); the environment is never changed
(:mod:`.paths`), so one process can run several transfers into different roots.
"""

from nnunet_transfer.nnunet.plans.check import check_transfer
from nnunet_transfer.nnunet.plans.source import SourcePlans, read_source_plans
from nnunet_transfer.nnunet.plans.transfer import PlansTransfer, transfer_plans
from nnunet_transfer.nnunet.plans.write import preprocess_transfer, write_plans

__all__ = [
    "PlansTransfer",
    "SourcePlans",
    "check_transfer",
    "preprocess_transfer",
    "read_source_plans",
    "transfer_plans",
    "write_plans",
]
