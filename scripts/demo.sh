#!/usr/bin/env bash
# Set up .venv, then pretrain a small nnU-Net on synthetic data and fine-tune it on a different synthetic dataset
# with the stock nnUNetv2_train and nnUNetTrainerAdaptiveFT. Prints the load report and the validation Dice.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/nnunet-transfer demo --workdir "${1:-nnunet_transfer_demo}" --force
