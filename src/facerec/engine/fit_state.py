"""Where a run stands between epochs (`FitState`): what a checkpoint keeps besides the weights, so that a resumed
run, even one stopped in the middle of an epoch, continues exactly where the first one stopped."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class FitState:
    """What survives a restart besides the weights: where we are and the best result so far."""

    epoch: int = 0  # completed epochs
    global_step: int = 0
    best_value: float | None = None
    best_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    # an epoch stopped part-way (Ctrl-C): batches it trained, its metrics so far, its augmentation generator
    step_in_epoch: int = 0
    partial: dict[str, float] = field(default_factory=dict)
    aug_state: torch.Tensor | None = None

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's "fit_state" (the history stays in RUN/metrics.jsonl)."""
        return {
            "epoch": self.epoch,
            "global_step": self.global_step,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "step_in_epoch": self.step_in_epoch,
            "partial": self.partial,
            "aug_state": self.aug_state,
        }

    @classmethod
    def from_state_dict(cls, d: dict[str, Any]) -> FitState:
        """The state saved by `state_dict` (checkpoints from before mid-epoch stops lack the last three keys)."""
        return cls(
            epoch=d["epoch"],
            global_step=d["global_step"],
            best_value=d["best_value"],
            best_epoch=d["best_epoch"],
            step_in_epoch=d.get("step_in_epoch", 0),
            partial=d.get("partial") or {},
            aug_state=d.get("aug_state"),
        )


def merge_partial(before: dict[str, float], after: dict[str, Any]) -> dict[str, Any]:
    """One epoch's training metrics from its part before an interruption and its part after the resume."""
    n0, n1 = before.get("images", 0.0), after["images"]
    n = n0 + n1

    def mean(key: str) -> float | None:  # image-weighted; a part without images has no (or a NaN) value
        a, b = before.get(key), after.get(key)
        if not n1 or b is None:
            return a
        if not n0 or a is None:
            return b
        return (a * n0 + b * n1) / n

    merged = dict(after)
    merged.update(train_loss=mean("train_loss"), train_acc=mean("train_acc"), images=int(n))
    for key in ("steps", "skipped_steps", "overflow_steps", "train_time_s"):
        if key in after:
            merged[key] = before.get(key, 0) + after[key]
            merged[key] = merged[key] if key == "train_time_s" else int(merged[key])
    merged["images_per_s"] = n / merged["train_time_s"] if merged["train_time_s"] > 0 else 0.0
    return merged


def numbers(d: dict[str, Any]) -> dict[str, float]:
    """The int and float values of `d`, as floats (what checkpoints keep of an epoch's summary)."""
    return {k: float(v) for k, v in d.items() if isinstance(v, int | float) and v is not None}
