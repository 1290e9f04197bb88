"""Learning-rate schedules as a pure function of progress (plus the plateau rule's small state).

Warm-up: linear from lr/100 to lr over `warmup_epochs` (fractions allowed), stepped every batch. Then:
cosine (to min_lr at the last step), step (x gamma every step_size epochs), plateau (x gamma after `patience`
epochs without improvement of the tracked metric) or constant.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

SCHEDULES = ("cosine", "step", "plateau", "constant")


class StepLR(Protocol):
    """What the training step reads: the learning rate of a global step (LRSchedule, lr_find.GeometricSweep)."""

    def lr_at(self, step: int) -> float: ...


class LRSchedule:
    def __init__(
        self,
        base_lr: float,
        epochs: int,
        steps_per_epoch: int,
        kind: str = "cosine",
        warmup_epochs: float = 0.0,
        min_lr: float = 0.0,
        step_size: int = 10,
        gamma: float = 0.1,
        patience: int = 2,
    ) -> None:
        if kind not in SCHEDULES:
            raise ValueError(f"unknown schedule {kind!r}; choose one of {list(SCHEDULES)}")
        self.base_lr, self.kind = base_lr, kind
        self.total = max(1, epochs * steps_per_epoch)
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.warmup = int(round(warmup_epochs * steps_per_epoch))
        self.min_lr, self.step_size, self.gamma, self.patience = min_lr, step_size, gamma, patience
        self.plateau = {"scale": 1.0, "best": -math.inf, "bad": 0}

    def lr_at(self, step: int) -> float:
        """Learning rate for global step `step` (0-based)."""
        if step < self.warmup:
            return self.base_lr * (0.01 + 0.99 * step / self.warmup)
        if self.kind == "cosine":
            t = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
            return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * t))
        if self.kind == "step":
            return self.base_lr * self.gamma ** ((step // self.steps_per_epoch) // self.step_size)
        if self.kind == "plateau":
            return max(self.min_lr, self.base_lr * self.plateau["scale"])
        return self.base_lr

    def observe(self, value: float | None) -> None:
        """End-of-epoch hook for the plateau rule (higher is better)."""
        if self.kind != "plateau" or value is None:
            return
        if value > self.plateau["best"]:
            self.plateau.update(best=value, bad=0)
        else:
            self.plateau["bad"] += 1
            if self.plateau["bad"] > self.patience:
                self.plateau.update(scale=self.plateau["scale"] * self.gamma, bad=0)

    def state_dict(self) -> dict[str, Any]:
        return dict(self.plateau)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.plateau.update(state)
