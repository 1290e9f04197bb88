"""Live progress lines (loss, accuracy, images/s, ETA) and the per-run metrics log (JSON lines + TensorBoard)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class MetricsLog:
    """Appends one JSON object per line to RUN/metrics.jsonl; mirrors numbers to TensorBoard when installed."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = True) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            except Exception:  # tensorboard is optional: no events, no error
                self._tb = None

    def write(self, event: str, **values: Any) -> None:
        record = {"event": event, "time": round(time.time(), 3), **values}
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self._tb is not None and event == "epoch":
            for key, value in values.items():
                if key != "epoch" and isinstance(value, int | float) and value is not None:
                    self._tb.add_scalar(key, value, values.get("epoch", 0))
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a crash
                continue
    return out


class Progress:
    """The live progress lines of a run; `fit` and `train_one_epoch` hand them to the run's log.

    `epoch 3/20  step 40/81  loss 4.12  acc 23.4%  lr 0.091  1,234 img/s  eta 0:41 (run 12:03)` while an epoch
    trains, `== epoch 3/20 done in 1:02: train_loss 4.1200  ...` after it. The run's ETA uses the last epoch's
    duration once there is one.
    """

    def __init__(self, epochs: int, steps_per_epoch: int) -> None:
        self.epochs, self.steps = epochs, steps_per_epoch
        self.epoch_times: list[float] = []

    def step_line(
        self, epoch: int, step: int, loss: float, acc: float | None, lr: float, img_s: float, elapsed: float
    ) -> str:
        """The line of `step` (1-based) of `epoch` (0-based), `elapsed` seconds into the epoch."""
        left_in_epoch = elapsed / max(step, 1) * (self.steps - step)
        per_epoch = self.epoch_times[-1] if self.epoch_times else elapsed / max(step, 1) * self.steps
        eta_run = left_in_epoch + per_epoch * (self.epochs - epoch - 1)
        acc_text = f"  acc {100 * acc:5.1f}%" if acc is not None else ""
        return (
            f"epoch {epoch + 1}/{self.epochs}  step {step}/{self.steps}  loss {loss:.4f}{acc_text}  lr {lr:.4g}  "
            f"{img_s:,.0f} img/s  eta {format_duration(left_in_epoch)} (run {format_duration(eta_run)})"
        )

    def epoch_line(self, epoch: int, seconds: float, summary: dict[str, Any]) -> str:
        """The summary line of `epoch` (0-based), which took `seconds`; None values are left out."""
        self.epoch_times.append(seconds)
        parts = []
        for key, value in summary.items():
            if value is None:
                continue
            parts.append(f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}")
        return f"== epoch {epoch + 1}/{self.epochs} done in {format_duration(seconds)}: " + "  ".join(parts)
