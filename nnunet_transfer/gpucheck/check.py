"""``nnunet-transfer gpu-check``: the trainers on the current CUDA device, measured in minutes, with no data needed.

One process tree, the stock commands throughout:

1. the demo's synthetic source (1 channel, isotropic) and target (2 channels, 1x1x3 mm, partly other labels), and a
   few unseen target cases to predict; ``nnUNetv2_plan_and_preprocess`` both;
2. a short pretraining of the source (``nnUNetv2_train ... -tr nnUNetTrainer_GPUCheck``);
3. rounds of ``nnUNetv2_train`` on the target, in alternating order, each run in its own results folder:
   stock ``nnUNetTrainer`` (from scratch; nnU-Net's strict loader cannot take the source's weights into the target's
   network), ``nnUNetTrainerAdaptiveFT`` with nothing frozen, encoder frozen with and without the frozen-skip split,
   and, on CUDA, the stock trainer, nothing frozen and encoder frozen again with ``nnUNet_compile=true``. The check's
   trainers (``_trainers/``) record every epoch's time and peak ``torch.cuda.max_memory_allocated``; the first epoch
   of each run (cuDNN autotuning, compilation) is not timed;
4. the load report's coverage; a stock ``nnUNetv2_predict`` of the unseen cases; ``nnunet-transfer export --format
   onnx`` (verified against the checkpoint on the CPU) run again through ONNX Runtime's CUDA provider and compared
   with its CPU result, where onnxruntime has that provider (``onnxruntime-gpu``).

It prints one table and writes JSON (device, torch / CUDA / cuDNN versions, every figure and ratio). ``budget_s``
bounds the whole check: the iterations per epoch are chosen from the pretraining's measured speed so that one round
fits, further rounds run while time is left, and whatever was cut is said. ``device="cpu", tiny=True`` is the
smoke run of the test suite.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nnunet_transfer.core.commands import console_script
from nnunet_transfer.core.io import read_json_object, write_text_atomic
from nnunet_transfer.core.loading.report import REPORT_FILE
from nnunet_transfer.core.progress import format_elapsed
from nnunet_transfer.core.schedules.recipes import RECIPE_ENV_VAR, load_recipe
from nnunet_transfer.demo.progress import StepProgress
from nnunet_transfer.demo.run import run_step
from nnunet_transfer.demo.synthetic import make_dataset
from nnunet_transfer.errors import TransferError
from nnunet_transfer.trainers.gpucheck import EPOCHS_FILE

__all__ = ["CONFIGS", "RATIOS", "RunConfig", "format_table", "run_gpu_check"]

TRAINERS_FOLDER = Path(__file__).resolve().parent / "_trainers"
SOURCE, TARGET = 980, 981
SOURCE_LABELS = {"background": 0, "organ": 1, "lesion": 2}
TARGET_LABELS = {"background": 0, "edema": 1, "lesion": 2}
STOCK, OURS = "nnUNetTrainer_GPUCheck", "nnUNetTrainerAdaptiveFT_GPUCheck"
_FROZEN = [{"start_epoch": 0, "unfreeze": ["decoder.*", "heads"]}]


@dataclass(frozen=True)
class RunConfig:
    """One kind of training run of the check."""

    name: str
    title: str
    trainer: str
    phases: list[dict[str, Any]] = field(default_factory=list)  # the recipe's phases (empty: nothing frozen)
    split_frozen_skips: bool = True
    compiled: bool = False

    @property
    def ours(self) -> bool:
        return self.trainer == OURS


CONFIGS: tuple[RunConfig, ...] = (
    RunConfig("stock", "stock nnUNetTrainer", STOCK),
    RunConfig("adaptive", "AdaptiveFT, nothing frozen", OURS),
    RunConfig("frozen_split", "AdaptiveFT, encoder frozen, split skips", OURS, _FROZEN),
    RunConfig("frozen_nosplit", "AdaptiveFT, encoder frozen, no split", OURS, _FROZEN, split_frozen_skips=False),
    RunConfig("stock_compiled", "stock nnUNetTrainer, compiled", STOCK, compiled=True),
    RunConfig("adaptive_compiled", "AdaptiveFT, nothing frozen, compiled", OURS, compiled=True),
    RunConfig("frozen_split_compiled", "AdaptiveFT, encoder frozen, split, compiled", OURS, _FROZEN, compiled=True),
)

#: name -> (numerator run, denominator run): every ratio the check reports, of time and of peak memory
RATIOS: dict[str, tuple[str, str]] = {
    "adaptive/stock": ("adaptive", "stock"),
    "frozen_split/adaptive": ("frozen_split", "adaptive"),
    "frozen_nosplit/adaptive": ("frozen_nosplit", "adaptive"),
    "frozen_split/frozen_nosplit": ("frozen_split", "frozen_nosplit"),
    "adaptive_compiled/stock_compiled": ("adaptive_compiled", "stock_compiled"),
    "frozen_split_compiled/adaptive_compiled": ("frozen_split_compiled", "adaptive_compiled"),
    "adaptive_compiled/adaptive": ("adaptive_compiled", "adaptive"),
}


@dataclass
class _Settings:
    shape_source: tuple[int, int, int]
    shape_target: tuple[int, int, int]
    num_cases: int
    epochs: int
    iterations: int
    val_iterations: int
    max_rounds: int
    reserve_s: float  # kept for predict and export after the first round


def _settings(tiny: bool, rounds: int | None) -> _Settings:
    if tiny:
        return _Settings((32, 32, 32), (12, 32, 32), 5, epochs=2, iterations=2, val_iterations=1,
                         max_rounds=rounds or 1, reserve_s=60)
    return _Settings((64, 64, 64), (24, 64, 64), 6, epochs=3, iterations=50, val_iterations=5,
                     max_rounds=rounds or 3, reserve_s=45)


def _versions(device: str) -> dict[str, Any]:
    import torch

    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None  # e.g. 91002
    info: dict[str, Any] = {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda,
                            "cudnn": f"{cudnn // 10000}.{cudnn % 10000 // 100}.{cudnn % 100}" if cudnn else None,
                            "python": platform.python_version()}
    if device == "cuda":
        info["name"] = torch.cuda.get_device_name(0)
        info["memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    else:
        info["name"] = platform.processor() or platform.machine()
    try:
        import onnxruntime as ort

        info["onnxruntime"] = ort.__version__
        info["onnxruntime_providers"] = list(ort.get_available_providers())
    except ImportError:
        info["onnxruntime"] = None
    return info


def _fold(results: Path, trainer: str) -> Path:
    return results / f"Dataset{TARGET}_GPUCheckTarget" / f"{trainer}__nnUNetPlans__3d_fullres" / "fold_0"


class _Check:
    def __init__(self, workdir: Path, device: str, budget_s: float, tiny: bool, rounds: int | None,
                 compile_runs: bool, echo: Callable[[str], None]):
        self.workdir, self.device, self.budget_s, self.echo = workdir, device, budget_s, echo
        self.start = time.monotonic()
        self.s = _settings(tiny, rounds)
        self.tiny = tiny
        self.log = workdir / "gpucheck.log"
        self.cut: list[str] = []
        self.configs = [c for c in CONFIGS if compile_runs or not c.compiled]
        if not compile_runs:
            why = ("nnU-Net never compiles on a CPU" if device == "cpu" else "compiled runs switched off")
            self.cut.append(f"compiled runs not made: {why}")
        self.env = {**os.environ, "nnUNet_raw": str(workdir / "raw"),
                    "nnUNet_preprocessed": str(workdir / "preprocessed"), "nnUNet_results": str(workdir / "results"),
                    "nnUNet_extTrainer": os.pathsep.join(
                        [str(TRAINERS_FOLDER), *filter(None, os.environ.get("nnUNet_extTrainer", "").split(os.pathsep))]
                    ),
                    "nnUNet_compile": "false"}
        cores = os.cpu_count() or 2
        self.env.setdefault("nnUNet_def_n_proc", str(min(8, cores)))
        if tiny:
            self.env.setdefault("nnUNet_n_proc_DA", "1")
        self.epochs: dict[str, list[dict[str, Any]]] = {c.name: [] for c in self.configs}
        self.rounds_done = 0

    # --- helpers ---------------------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def _run(self, cmd: list[str], step: str, env: dict[str, str] | None = None, epochs: int | None = None,
             budget: str | None = None) -> float:
        t0 = time.monotonic()
        run_step(cmd, env or self.env, self.log, StepProgress(step, self.log, total_epochs=epochs, budget=budget))
        return time.monotonic() - t0

    def _train_env(self, results: Path, iterations: int) -> dict[str, str]:
        return {**self.env, "nnUNet_results": str(results),
                "NNUNET_TRANSFER_GPUCHECK_EPOCHS": str(self.s.epochs),
                "NNUNET_TRANSFER_GPUCHECK_ITERATIONS": str(iterations),
                "NNUNET_TRANSFER_GPUCHECK_VAL_ITERATIONS": str(self.s.val_iterations)}

    def _recipe(self, config: RunConfig, iterations: int) -> Path:
        data = {"name": f"gpucheck_{config.name}", "description": f"GPU check: {config.title}",
                "num_epochs": self.s.epochs, "iterations_per_epoch": iterations,
                "val_iterations_per_epoch": self.s.val_iterations, "phases": config.phases,
                "split_frozen_skips": config.split_frozen_skips, "pretrained": {"min_coverage": 0.5}}
        path = self.workdir / "recipes" / f"gpucheck_{config.name}_{iterations}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, yaml.safe_dump(data, sort_keys=False))
        load_recipe(path)  # validated before a process is started with it
        return path

    # --- steps -----------------------------------------------------------------------------------------------
    def prepare(self) -> None:
        raw = self.workdir / "raw"
        make_dataset(raw, SOURCE, "GPUCheckSource", num_cases=self.s.num_cases, shape=self.s.shape_source,
                     spacing=(1, 1, 1), labels=SOURCE_LABELS, seed=0)
        make_dataset(raw, TARGET, "GPUCheckTarget", num_cases=self.s.num_cases, shape=self.s.shape_target,
                     spacing=(3, 1, 1), channel_names={"0": "T1", "1": "T2"}, labels=TARGET_LABELS, seed=1)
        unseen = make_dataset(self.workdir / "unseen", TARGET, "GPUCheckTarget", num_cases=2,
                              shape=self.s.shape_target, spacing=(3, 1, 1), channel_names={"0": "T1", "1": "T2"},
                              labels=TARGET_LABELS, seed=2)
        shutil.move(str(unseen / "imagesTr"), str(self.workdir / "predict_in"))
        shutil.rmtree(self.workdir / "unseen")
        n = self.env["nnUNet_def_n_proc"]
        self._run([console_script("nnUNetv2_plan_and_preprocess"), "-d", str(SOURCE), str(TARGET), "-c",
                   "3d_fullres", "-npfp", n, "-np", n], "preprocess")

    def pretrain(self) -> Path:
        results = self.workdir / "results_source"
        env = {**self._train_env(results, self.s.iterations), "NNUNET_TRANSFER_GPUCHECK_EPOCHS": "2"}
        wall = self._run([console_script("nnUNetv2_train"), str(SOURCE), "3d_fullres", "0", "-tr", STOCK,
                          "-device", self.device], "pretrain", env, epochs=2,
                         budget=f"2 epochs x {self.s.iterations} iterations")
        fold = results / f"Dataset{SOURCE}_GPUCheckSource" / f"{STOCK}__nnUNetPlans__3d_fullres" / "fold_0"
        records = json.loads((fold / EPOCHS_FILE).read_text())
        timed = records[-1]["seconds"]
        per_iteration = timed / (self.s.iterations + self.s.val_iterations)
        self.start_up_s = max(0.0, wall - sum(r["seconds"] for r in records))
        self.per_iteration_s = per_iteration
        return fold / "checkpoint_final.pth"

    def choose_iterations(self) -> int:
        """Iterations per epoch such that one round of every run fits the budget (with the reserve), or the
        settings' own number when that fits; drops compiled runs, then fewer iterations, and says so."""
        def round_s(iterations: int, configs: Sequence[RunConfig]) -> float:
            per_run = self.start_up_s + self.s.epochs * (iterations + self.s.val_iterations) * self.per_iteration_s
            return sum(per_run * (3 if c.compiled else 1) for c in configs)  # compiling: a few epochs' worth

        available = self.left() - self.s.reserve_s
        iterations = self.s.iterations
        if round_s(iterations, self.configs) > available and any(c.compiled for c in self.configs):
            self.configs = [c for c in self.configs if not c.compiled]
            self.cut.append(f"compiled runs not made: one round with them would not fit the {self.budget_s:.0f} s "
                            "budget (raise --budget-s)")
        while iterations > 2 and round_s(iterations, self.configs) > available:
            iterations = max(2, iterations // 2)
        if iterations < self.s.iterations:
            self.cut.append(f"iterations per epoch {self.s.iterations} -> {iterations} to fit the budget")
        return iterations

    def train_round(self, checkpoint: Path, iterations: int) -> float:
        t0 = time.monotonic()
        order = self.configs if self.rounds_done % 2 == 0 else list(reversed(self.configs))
        r = self.rounds_done + 1
        for config in order:
            results = self.workdir / "runs" / f"{config.name}_r{r}"
            env = self._train_env(results, iterations)
            env["nnUNet_compile"] = "true" if config.compiled else "false"
            cmd = [console_script("nnUNetv2_train"), str(TARGET), "3d_fullres", "0", "-tr", config.trainer,
                   "-device", self.device]
            if config.ours:
                env[RECIPE_ENV_VAR] = str(self._recipe(config, iterations))
                cmd += ["-pretrained_weights", str(checkpoint)]
            self._run(cmd, f"round {r}: {config.name}", env, epochs=self.s.epochs,
                      budget=f"{self.s.epochs} epochs x {iterations} iterations")
            records = json.loads((_fold(results, config.trainer) / EPOCHS_FILE).read_text())
            self.epochs[config.name].extend({**rec, "round": r} for rec in records)
        self.rounds_done += 1
        return time.monotonic() - t0

    def predict(self) -> dict[str, Any]:
        results = self.workdir / "runs" / "adaptive_r1"
        out = self.workdir / "predicted"
        env = {**self.env, "nnUNet_results": str(results)}
        cmd = [console_script("nnUNetv2_predict"), "-i", str(self.workdir / "predict_in"), "-o", str(out), "-d",
               str(TARGET), "-c", "3d_fullres", "-tr", OURS, "-f", "0", "-device", self.device]
        if self.tiny:  # the smoke run: one worker each, no test-time mirroring
            cmd += ["-npp", "1", "-nps", "1", "--disable_tta"]
        seconds = self._run(cmd, "predict", env)
        cases = sorted(p.name for p in out.glob("*.nii.gz"))
        expected = len({p.name.rsplit("_", 1)[0] for p in (self.workdir / "predict_in").glob("*.nii.gz")})
        return {"cases": len(cases), "expected": expected, "seconds": seconds, "ok": len(cases) == expected}

    def export(self) -> dict[str, Any]:
        model = _fold(self.workdir / "runs" / "adaptive_r1", OURS).parent
        out = self.workdir / "export" / "target.onnx"
        try:
            import onnxruntime as ort
        except ImportError:
            return {"verified": None, "why": "onnxruntime not installed: pip install 'nnunet-transfer[onnx]'"}
        self._run([console_script("nnunet-transfer"), "export", str(model), "-f", "0", "--format", "onnx", "-o",
                   str(out)], "export")
        result: dict[str, Any] = {"verified": True, "verified_on": "CPUExecutionProvider (against the checkpoint)"}
        if self.device != "cuda":
            result["cuda_provider"] = None
            result["why"] = "no CUDA device: verified on the CPU only"
            return result
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            result["cuda_provider"] = None
            result["why"] = "onnxruntime has no CUDA provider (install onnxruntime-gpu): verified on the CPU only"
            return result
        import numpy as np

        shape = [1, 2, *_plans_facts(self.workdir)["patch_size"]]  # the target's two channels, one patch
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        outputs = {}
        for provider in ("CUDAExecutionProvider", "CPUExecutionProvider"):
            session = ort.InferenceSession(str(out), providers=[provider])
            outputs[provider] = session.run(None, {session.get_inputs()[0].name: x})[0]
            result.setdefault("providers_used", []).append(session.get_providers()[0])
        gpu, cpu = outputs["CUDAExecutionProvider"], outputs["CPUExecutionProvider"]
        relative = float(np.abs(gpu - cpu).max() / max(float(np.abs(cpu).max()), 1e-12))
        result.update(cuda_provider=relative <= 1e-3, cuda_vs_cpu_relative_diff=relative,
                      verified_on="CPUExecutionProvider (against the checkpoint) and CUDAExecutionProvider "
                                  "(against the CPU result, max diff <= 1e-3 of max |output|)")
        return result


def _median_timed(records: Sequence[dict[str, Any]]) -> float | None:
    timed = [r["seconds"] for r in records if r["epoch"] > 0]
    return statistics.median(timed) if timed else None


def _peak(records: Sequence[dict[str, Any]]) -> float | None:
    peaks = [r["peak_memory_mb"] for r in records if r.get("peak_memory_mb") is not None]
    return max(peaks) if peaks else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _plans_facts(workdir: Path) -> dict[str, Any]:
    plans = read_json_object(workdir / "preprocessed" / f"Dataset{TARGET}_GPUCheckTarget" / "nnUNetPlans.json",
                             "plans", TransferError)
    conf = plans["configurations"]["3d_fullres"]
    return {"patch_size": conf["patch_size"], "batch_size": conf["batch_size"]}


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_table(result: dict[str, Any]) -> list[str]:
    """The check's table, as printed."""
    d, s, f = result["device"], result["settings"], result["figures"]
    lines = [f"GPU check on {d['name']} ({d['device']}; torch {d['torch']}, CUDA {d['cuda']}, cuDNN {d['cudnn']}): "
             f"budget {result['budget_s']:.0f} s, used {result['elapsed_s']:.0f} s",
             f"patch {'x'.join(map(str, s['patch_size']))}, batch {s['batch_size']}; per run {s['epochs']} epochs x "
             f"{s['iterations']} iterations (+{s['val_iterations']} validation), {s['rounds']} round(s); "
             "the first epoch of each run is not timed", "",
             f"{'run':48s} {'s/epoch':>9s} {'peak MiB':>9s}"]
    for run in f["runs"].values():
        lines.append(f"{run['title']:48s} {_cell(run['epoch_s'], '.3f'):>9s} "
                     f"{_cell(run['peak_memory_mb'], '.0f'):>9s}")
    lines += ["", f"{'ratio':48s} {'time':>9s} {'memory':>9s}"]
    for name, ratio in f["ratios"].items():
        lines.append(f"{name:48s} {_cell(ratio['time'], '.3f'):>9s} {_cell(ratio['memory'], '.3f'):>9s}")
    load, pred, exp = f["load"], f["predict"], f["export"]
    lines += ["", f"pretrained load: coverage {_cell(load['coverage'], '.3f')} "
                  f"({'passed' if load['passed'] else 'FAILED'} the guard at {load['min_coverage']})",
              f"nnUNetv2_predict: {pred['cases']}/{pred['expected']} cases in {pred['seconds']:.1f} s",
              "ONNX export: " + (f"verified on {exp['verified_on']}" if exp.get("verified") else "not verified")
              + (f"; {exp['why']}" if exp.get("why") else "")]
    lines += [f"cut: {c}" for c in result["cut"]]
    return lines


def run_gpu_check(workdir: str | os.PathLike | None = None, *, device: str = "cuda", budget_s: float = 300.0,
                  tiny: bool = False, rounds: int | None = None, compile_runs: bool | None = None,
                  json_path: str | os.PathLike | None = None, force: bool = False,
                  echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the check (see the module docstring) and return its result (also written as JSON to ``json_path``,
    default ``WORKDIR/gpucheck.json``). ``workdir`` None: a temporary folder, deleted afterwards."""
    if device not in ("cuda", "cpu"):
        raise TransferError(f"--device {device!r}: choose cuda or cpu")
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise TransferError("no CUDA device: torch.cuda.is_available() is False (torch "
                            f"{torch.__version__}, built for CUDA {torch.version.cuda}); check the driver and "
                            "CUDA_VISIBLE_DEVICES, or run the CPU smoke check: --device cpu --tiny")
    if budget_s <= 0:
        raise TransferError(f"--budget-s {budget_s}: give a positive number of seconds")
    temporary = workdir is None
    path = Path(tempfile.mkdtemp(prefix="nnunet-transfer-gpucheck-") if temporary else workdir).resolve()
    if not temporary and path.exists() and any(path.iterdir()):
        if not force:
            raise TransferError(f"{path}: exists and is not empty; pass --force to delete it and start over")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    compile_runs = device == "cuda" if compile_runs is None else compile_runs and device == "cuda"
    check = _Check(path, device, budget_s, tiny, rounds, compile_runs, echo)
    echo(f"nnunet-transfer gpu-check in {path} (device {device}, budget {budget_s:.0f} s; output in {check.log})")
    try:
        check.prepare()
        checkpoint = check.pretrain()
        iterations = check.choose_iterations()
        round_s = check.train_round(checkpoint, iterations)
        predicted = check.predict()
        exported = check.export()
        while check.rounds_done < check.s.max_rounds:
            if check.left() < round_s:
                check.cut.append(f"rounds {check.s.max_rounds} -> {check.rounds_done}: another round "
                                 f"({round_s:.0f} s) would pass the budget")
                break
            check.train_round(checkpoint, iterations)
        report = read_json_object(_fold(path / "runs" / "adaptive_r1", OURS) / REPORT_FILE,
                                  "load report", TransferError)
        runs = {c.name: {"title": c.title, "epoch_s": _median_timed(check.epochs.get(c.name, [])),
                         "peak_memory_mb": _peak(check.epochs.get(c.name, [])), "epochs": check.epochs.get(c.name, [])}
                for c in CONFIGS}  # runs cut from the check stay, empty
        ratios = {name: {"time": _ratio(runs[a]["epoch_s"], runs[b]["epoch_s"]),
                         "memory": _ratio(runs[a]["peak_memory_mb"], runs[b]["peak_memory_mb"])}
                  for name, (a, b) in RATIOS.items()}
        result = {
            "device": _versions(device), "budget_s": budget_s, "elapsed_s": check.elapsed(),
            "settings": {**_plans_facts(path), "epochs": check.s.epochs, "iterations": iterations,
                         "val_iterations": check.s.val_iterations, "rounds": check.rounds_done, "tiny": tiny},
            "figures": {"runs": runs, "ratios": ratios,
                        "load": {"coverage": report["coverage"], "passed": report["passed"],
                                 "min_coverage": report["min_coverage"]},
                        "predict": predicted, "export": exported},
            "cut": check.cut,
        }
    except subprocess.SubprocessError as e:
        raise TransferError(f"gpu-check: {e} (log: {check.log})") from e
    out = Path(json_path) if json_path is not None else path / "gpucheck.json"
    write_text_atomic(out, json.dumps(result, indent=2))
    echo("")
    for line in format_table(result):
        echo(line)
    echo(f"JSON: {out}  (took {format_elapsed(check.elapsed())})")
    if temporary and json_path is not None:
        shutil.rmtree(path, ignore_errors=True)
    return result
