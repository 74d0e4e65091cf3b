#!/usr/bin/env bash
# Set up .venv, then pretrain a small nnU-Net on synthetic data and fine-tune it on a different synthetic dataset
# with the stock nnUNetv2_train and nnUNetTrainerAdaptiveFT. Prints progress per epoch, the load report and the
# validation Dice by label name.
# Usage: bash scripts/demo.sh [WORKDIR] [--baseline]   (WORKDIR: default nnunet_transfer_demo, deleted first;
#        --baseline: also train from scratch on the same budget and compare)
set -euo pipefail
cd "$(dirname "$0")/.."
workdir=nnunet_transfer_demo
if [[ $# -gt 0 && $1 != -* ]]; then
    workdir=$1
    shift
fi
bash scripts/setup_env.sh
exec .venv/bin/nnunet-transfer demo --workdir "$workdir" --force "$@"
