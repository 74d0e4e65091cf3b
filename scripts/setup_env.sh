#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv and install nnunet-transfer with its test tools.
# Needs only Python >= 3.10 (python3, or $PYTHON). Re-running it reinstalls the package from this checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${NNUNET_TRANSFER_VENV:-.venv}"

"$PYTHON" - <<'PY'
import sys
if sys.version_info < (3, 10):
    sys.exit(f"nnunet-transfer needs Python >= 3.10, this is {sys.version.split()[0]}")
PY

if [ ! -x "$VENV/bin/python" ]; then
    echo "creating virtual environment $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

# PyTorch first, pinned to builds that work on CPU-only machines (override with TORCH_SPEC="torch==X torchvision==Y").
if [ -z "${TORCH_SPEC:-}" ]; then
    case "$(uname -m)" in
        aarch64|arm64) TORCH_SPEC="torch==2.9.1 torchvision==0.24.1" ;;
        *) TORCH_SPEC="torch==2.14.1 torchvision==0.29.1" ;;
    esac
fi
if ! "$VENV/bin/python" -c "import torch, torchvision" 2>/dev/null; then
    echo "installing $TORCH_SPEC"
    # shellcheck disable=SC2086
    "${PIP[@]}" install $TORCH_SPEC
fi
echo "installing nnunet-transfer (with nnunetv2) into $VENV"
"${PIP[@]}" install ".[test]"
