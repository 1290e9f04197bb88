"""Dynamic loss scaling for fp16 autocast, kept on the device so the training step never waits for the host.

fp16 has 5 exponent bits: small gradients underflow to zero unless the loss is multiplied by a large factor
before `backward()` and the gradients divided by it afterwards. The factor follows `torch.amp.GradScaler`'s rule:
halve it after a step whose gradients overflowed (that step is skipped), double it after `growth_interval`
finite steps in a row. GradScaler reads its overflow flag on the host when the optimiser is not a fused one; this
class keeps scale, counter and flag as device tensors and the training step (engine/train.py) hands the flag to
the fused optimiser, as it does for any non-finite step.

Why fp16 at all, when bf16 needs no scaling: in PyTorch, cuDNN's BatchNorm kernels take fp16 (with fp32 weights)
but not bf16 inputs (`_select_batch_norm_backend`), so under bf16 every BatchNorm of a ResNet runs PyTorch's own
kernels, which took 38% of an eager ResNet-34 step on an H200 (docs/benchmarks.md).
"""

from __future__ import annotations

from typing import Any

import torch

INIT_SCALE = 2.0**16  # GradScaler's default


class LossScale:
    """The loss scale and its growth counter, as device tensors (`scale` multiplies the loss before backward)."""

    def __init__(
        self,
        device: torch.device | str,
        init_scale: float | None = None,  # None: INIT_SCALE
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
    ) -> None:
        init_scale = INIT_SCALE if init_scale is None else init_scale
        if not (growth_factor > 1.0 and 0.0 < backoff_factor < 1.0 and growth_interval >= 1 and init_scale > 0):
            raise ValueError(
                "LossScale needs growth_factor > 1, 0 < backoff_factor < 1, growth_interval >= 1 and "
                "init_scale > 0"
            )
        self.scale = torch.full((), float(init_scale), device=device)
        self.good_steps = torch.zeros((), dtype=torch.int32, device=device)
        self.growth_factor, self.backoff_factor = growth_factor, backoff_factor
        self.growth_interval = growth_interval

    def update(self, finite: torch.Tensor) -> None:
        """After a step: back off when its gradients were not `finite`, grow after `growth_interval` finite steps
        in a row. `finite` is a bool tensor on the scale's device; nothing is read on the host."""
        due = finite & (self.good_steps + 1 >= self.growth_interval)
        grown = self.scale * self.growth_factor
        grown = torch.where(torch.isfinite(grown), grown, self.scale)  # as GradScaler: never grow to inf
        kept = torch.where(due, grown, self.scale)
        self.scale.copy_(torch.where(finite, kept, self.scale * self.backoff_factor))
        self.good_steps.copy_(torch.where(finite & ~due, self.good_steps + 1, 0))

    def state_dict(self) -> dict[str, Any]:
        return {
            "scale": self.scale.item(),
            "good_steps": int(self.good_steps.item()),
            "growth_factor": self.growth_factor,
            "backoff_factor": self.backoff_factor,
            "growth_interval": self.growth_interval,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scale.fill_(float(state["scale"]))
        self.good_steps.fill_(int(state["good_steps"]))
        self.growth_factor = float(state.get("growth_factor", self.growth_factor))
        self.backoff_factor = float(state.get("backoff_factor", self.backoff_factor))
        self.growth_interval = int(state.get("growth_interval", self.growth_interval))
