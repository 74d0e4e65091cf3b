"""``nnunet-transfer classify-demo`` as a user runs it: the pretrained encoder learns faster than random init."""

from __future__ import annotations

import os
import re

from helpers import cli


def _arm(out: str, name: str) -> tuple[list[float], float]:
    m = re.search(rf"^\[classify\] {name}: loss per epoch ([\d. ]+); test accuracy ([\d.]+)", out, re.M)
    assert m, out
    return [float(v) for v in m.group(1).split()], float(m.group(2))


def test_pretrained_encoder_learns_faster_than_random_init(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = cli("classify-demo", "--workdir", tmp_path, "--seed", "0", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert (tmp_path / "pretrained" / "checkpoint_final.pth").is_file()
    assert re.search(r"^\[encoder\] pretrained load from .*: coverage 1\.000 \(ok\)", out, re.M)
    assert "preprocessed by nnU-Net's DefaultPreprocessor (ZScoreNormalization)" in out
    pre_losses, pre_acc = _arm(out, "pretrained encoder")
    rnd_losses, rnd_acc = _arm(out, "random init")
    assert len(pre_losses) == len(rnd_losses) == 6
    # the same budget: more accurate, and a lower training loss summed over the epochs (it learns faster)
    assert pre_acc > rnd_acc, out
    assert sum(pre_losses) < sum(rnd_losses), out
    assert re.search(rf"pretrained encoder: +{pre_acc:.3f}", out) and re.search(rf"random initialisation: +{rnd_acc:.3f}", out)
