#!/usr/bin/env bash
# Set up .venv, then lint and run the whole test suite (unit tests and end-to-end runs of the stock nnUNetv2_* CLI).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/ruff check .
# two workers (pytest-xdist): the end-to-end tests on one, the unit tests beside them (tests/conftest.py)
exec .venv/bin/pytest -n "${NNUNET_TRANSFER_TEST_WORKERS:-2}" "$@"
