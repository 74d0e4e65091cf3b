"""The nnunet-transfer command line without an nnU-Net workspace: bad checkpoints, foreign formats, start-up hook,
public API."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch
from helpers import USER_TRAINERS, assert_clean_error, cli, run


def _evil(path, marker):
    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": RunsCode()}, path)


def test_pickle_that_would_run_code_is_refused_by_the_cli(tmp_path):
    marker = tmp_path / "pwned"
    _evil(tmp_path / "evil.pth", marker)
    proc = cli("inspect", tmp_path / "evil.pth")
    assert_clean_error(proc, 2, "refusing to unpickle", "system", "--trust-checkpoint")
    assert not marker.exists()


def test_inspect_prefixes_of_foreign_checkpoints(tmp_path, unet_factory):
    sd = {"module._orig_mod." + k: v for k, v in unet_factory().state_dict().items()}
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "ddp.pth")
    proc = cli("inspect", tmp_path / "ddp.pth", "--json", tmp_path / "i.json", check=True)
    info = json.loads((tmp_path / "i.json").read_text())
    assert info["container"] == "state_dict" and info["keys_with_wrapper_prefixes"] == len(sd)
    assert set(info["top_level_prefixes"]) == {"encoder", "decoder"}
    assert "carry module./_orig_mod." in proc.stdout


def test_startup_hook_keeps_the_users_trainer_folders_first(tmp_path):
    other = tmp_path / "mine"
    other.mkdir()
    env = {**os.environ, "nnUNet_extTrainer": os.pathsep.join([str(USER_TRAINERS), str(other)])}
    out = run([sys.executable, "-c", "import os; print(os.environ['nnUNet_extTrainer'])"], env).stdout.strip()
    parts = out.split(os.pathsep)
    assert parts[:2] == [str(USER_TRAINERS), str(other)]
    assert len(parts) == 3 and parts[2].endswith(os.path.join("nnunet_transfer", "_ext_trainers"))
    # idempotent: a child process does not add it twice
    env2 = {**os.environ, "nnUNet_extTrainer": out}
    assert run([sys.executable, "-c", "import os; print(os.environ['nnUNet_extTrainer'])"], env2).stdout.strip() == out


def test_startup_hook_is_cheap():
    code = "import sys; print(sorted(m for m in ('torch', 'nnunetv2', 'numpy', 'pydantic') if m in sys.modules))"
    assert run([sys.executable, "-c", code], dict(os.environ)).stdout.strip() == "[]"


def test_public_api_resolves_every_name():
    """``nnunet_transfer.__all__`` is loaded lazily: every name must resolve, and nothing else is offered."""
    import nnunet_transfer

    for name in nnunet_transfer.__all__:
        assert getattr(nnunet_transfer, name) is not None, name
    assert dir(nnunet_transfer) == sorted(nnunet_transfer.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        nnunet_transfer.nope  # noqa: B018
