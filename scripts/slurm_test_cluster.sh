#!/usr/bin/env bash
# Start the tests' single-node SLURM cluster (tests/slurm_cluster.py) for a developer: prints the SLURM_CONF to
# export in another shell; Ctrl-C stops it and removes its folder (--keep leaves the folder, logs included).
# Needs root and Debian's slurm-wlm munge slurmdbd mariadb-server (apt-get install -y ...).
set -euo pipefail
cd "$(dirname "$0")/.."
python=.venv/bin/python
[ -x "$python" ] || python=python3
exec "$python" tests/slurm_cluster.py "$@"
