"""Console progress for a long nnU-Net command: fed its output line by line, returns the few lines worth printing.

nnU-Net's trainer prints (``print_to_log_file``: a timestamp, then the message) at every epoch::

    2026-11-24 12:22:28.262980: Epoch 0
    2026-11-24 12:22:28.896596: train_loss -0.4123
    2026-11-24 12:22:28.896794: Pseudo dice [np.float32(0.52), np.float32(0.3112)]
    2026-11-24 12:22:28.896839: Epoch time: 12.34 s

:class:`StepProgress` turns that into one line per epoch, and prints a heartbeat when nothing was printed for a while
(preprocessing, the first epoch, the final validation). It does no I/O itself: the caller feeds it lines and the
time, and prints what it returns, so it is tested with plain strings.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnunet_transfer.core.progress import format_elapsed  # re-exported: its old place

__all__ = ["EpochStats", "StepProgress", "format_elapsed", "parse_line"]

_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(?:\.\d+)?:\s?")
_NUMBER = r"([-+]?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|nan|inf))"
_EVENTS: list[tuple[str, re.Pattern[str]]] = [
    ("epoch", re.compile(r"^Epoch (\d+)$")),
    ("train_loss", re.compile(rf"^train_loss {_NUMBER}$")),
    ("val_loss", re.compile(rf"^val_loss {_NUMBER}$")),
    ("pseudo_dice", re.compile(r"^Pseudo dice \[(.*)\]$")),
    ("epoch_time", re.compile(rf"^Epoch time: {_NUMBER} s$")),
    ("training_done", re.compile(r"^Training done\.$")),
    ("predicting", re.compile(r"^predicting (\S+)$")),
    ("validation_dice", re.compile(rf"^Mean Validation Dice:\s+{_NUMBER}$")),
]
_TQDM_BAR = re.compile(r"\|[^|]*\|\s*")  # "Preprocessing cases: 100%|#####| 6/6" -> "...: 100% 6/6"
_NUMPY_SCALAR = re.compile(r"np\.\w+\(([^()]*)\)")  # numpy >= 2 prints list items as np.float32(0.52)


def _message(line: str) -> str:
    """The text a line shows last (after a carriage return, as a terminal would), without nnU-Net's timestamp."""
    return _TIMESTAMP.sub("", line.rstrip("\r\n").split("\r")[-1].strip(), count=1).strip()


def _floats(text: str) -> list[float] | None:
    items = [s.strip() for s in _NUMPY_SCALAR.sub(r"\1", text).split(",")]
    try:
        return [float(s) for s in items if s]
    except ValueError:
        return None


def parse_line(line: str) -> tuple[str, Any] | None:
    """One line of nnU-Net's output as ``(event, value)``, or None when it is not one the progress shows.

    Events: ``epoch`` (int, nnU-Net counts from 0); ``train_loss``, ``val_loss``, ``epoch_time`` (seconds) and
    ``validation_dice`` (floats); ``pseudo_dice`` (list of floats); ``training_done`` (None); ``predicting`` (case).
    """
    text = _message(line)
    for event, pattern in _EVENTS:
        m = pattern.match(text)
        if m is None:
            continue
        if event == "epoch":
            return event, int(m.group(1))
        if event == "training_done":
            return event, None
        if event == "predicting":
            return event, m.group(1)
        if event == "pseudo_dice":
            values = _floats(m.group(1))
            return None if values is None else (event, values)
        return event, float(m.group(1))
    return None


@dataclass
class EpochStats:
    """What nnU-Net printed about one epoch (``epoch`` counted from 0, as nnU-Net does)."""

    epoch: int
    train_loss: float | None = None
    val_loss: float | None = None
    pseudo_dice: list[float] = field(default_factory=list)
    epoch_time: float | None = None


class StepProgress:
    """Progress of one step (``[fine-tune]``...): feed it every output line and call :meth:`tick` now and then.

    Args:
        step: short name shown in brackets.
        log: the file the full output goes to (named in every line, so a user knows where to look).
        total_epochs: the training's epoch budget, for ``epoch 2/3`` (None: ``epoch 2``).
        label_names: names of the pseudo Dice entries, in nnU-Net's order (foreground labels or regions).
        heartbeat: seconds without a printed line after which :meth:`tick` reports that the step still runs; the
            interval doubles with each heartbeat in a row, up to four times this (15, 30, 60, 60... s).
        budget: what the step will do, shown at its start (``3 epochs x 25 iterations``).
        clock: a monotonic clock in seconds (tests pass their own).
    """

    def __init__(self, step: str, log: str | Path, total_epochs: int | None = None,
                 label_names: Sequence[str] | None = None, heartbeat: float = 15.0, budget: str | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.step = step
        self.log = str(log)
        self.total_epochs = total_epochs
        self.label_names = list(label_names) if label_names else None
        self.heartbeat = heartbeat
        self.budget = budget
        self._beats = 0  # heartbeats since the last other line
        self.clock = clock
        self.epochs: list[EpochStats] = []
        self.validation_dice: float | None = None
        self._start = clock()
        self._last_print = self._start
        self._phase: str | None = None  # what the step is doing, when the output told us
        self._last_output: str | None = None

    # --- output ---------------------------------------------------------------------------------------------
    def _emit(self, text: str, beat: bool = False) -> list[str]:
        self._last_print = self.clock()
        self._beats = self._beats + 1 if beat else 0
        return [f"  [{self.step}] {text}  elapsed {format_elapsed(self._last_print - self._start)}  (log: {self.log})"]

    def _epoch_name(self, epoch: int) -> str:
        return f"epoch {epoch + 1}/{self.total_epochs}" if self.total_epochs else f"epoch {epoch + 1}"

    def _dice_text(self, values: list[float]) -> str:
        if self.label_names and len(self.label_names) == len(values):
            return "[" + ", ".join(f"{n} {v:.2f}" for n, v in zip(self.label_names, values, strict=True)) + "]"
        return "[" + ", ".join(f"{v:.2f}" for v in values) + "]"

    def epoch_line(self, stats: EpochStats) -> str:
        """The console text of a finished epoch (without step, elapsed time and log)."""
        parts = [self._epoch_name(stats.epoch)]
        if stats.train_loss is not None:
            parts.append(f"train loss {stats.train_loss:.2f}")
        if stats.pseudo_dice:
            parts.append(f"pseudo Dice {self._dice_text(stats.pseudo_dice)}")
        if stats.epoch_time is not None:
            t = stats.epoch_time
            parts.append(f"{t:.1f} s/epoch" if t < 10 else f"{t:.0f} s/epoch")
        return "  ".join(parts)

    # --- input ----------------------------------------------------------------------------------------------
    def begin(self, command: Sequence[str]) -> list[str]:
        """Lines to print when the step starts: the command and where its output goes."""
        self._start = self._last_print = self.clock()
        shown = " ".join([Path(command[0]).name, *command[1:]]) if command else ""
        budget = f"{self.budget}; " if self.budget else ""
        return [f"[{self.step}] {shown}", f"  [{self.step}] {budget}nnU-Net's output goes to {self.log}"]

    def feed(self, line: str) -> list[str]:
        """Take one output line; returns the lines to print (often none)."""
        event = parse_line(line)
        if event is None:
            text = _TQDM_BAR.sub(" ", _message(line))
            if text[:1].isupper():  # a message, not a dict of plans, a warning's source line or a traceback
                self._last_output = text
            return []
        kind, value = event
        if kind == "epoch":
            self.epochs.append(EpochStats(value))
            self._phase = f"{self._epoch_name(value)} running"
        elif kind in ("train_loss", "val_loss", "pseudo_dice") and self.epochs:
            setattr(self.epochs[-1], kind, value)
        elif kind == "epoch_time" and self.epochs:
            self.epochs[-1].epoch_time = value
            self._phase = None
            return self._emit(self.epoch_line(self.epochs[-1]))
        elif kind == "training_done":
            self._phase = "validating"
            return self._emit("training done; validating (predicting the validation cases)")
        elif kind == "predicting":
            self._phase = f"validating: predicting {value}"
        elif kind == "validation_dice":
            self.validation_dice = value
        return []

    def tick(self) -> list[str]:
        """A heartbeat line when nothing was printed for a while (see ``heartbeat``), else nothing."""
        if self.clock() - self._last_print < self.heartbeat * 2 ** min(self._beats, 2):
            return []
        if self._phase:
            status = self._phase
        elif self._last_output:
            last = self._last_output if len(self._last_output) <= 60 else self._last_output[:57] + "..."
            status = f"running (last output: {last})"
        else:
            status = "running"
        return self._emit(status, beat=True)

    def done(self) -> list[str]:
        """The line to print when the command succeeded."""
        self._last_print = self.clock()
        return [f"  [{self.step}] done in {format_elapsed(self._last_print - self._start)}"]
