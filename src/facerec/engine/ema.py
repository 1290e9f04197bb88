"""An exponential moving average (EMA) of the weights, for evaluation and the saved model (`train.ema`).

After every optimiser step, each averaged tensor moves towards the live one: `avg += (1 - d) * (live - avg)`, the
rule of timm's `ModelEmaV3`. It covers the network and the loss (whose class centres are the classifier of
closed-set prediction), parameters and floating-point buffers alike (BatchNorm's running statistics); integer
buffers are copied. The decay warms up as `d = min(decay, (1 + n) / (10 + n))` after `n` updates, so early
averages are not dominated by the random initialisation. One fused `_foreach_lerp_` per step and no host sync.

The average is what validation scores and what checkpoints store as "model" / "loss", so every consumer
(`evaluate`, `predict`, export, the API) uses it unchanged; the optimiser's own weights travel beside it as
"train_model" / "train_loss" for `--resume`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


def optimiser_weights(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The (network, loss) state dicts the optimiser trains, from a checkpoint: "train_model" / "train_loss" when
    the run kept a weight average (then "model" / "loss" hold the average), else "model" / "loss"."""
    return state.get("train_model", state["model"]), state.get("train_loss", state["loss"])


class WeightAverage:
    """The EMA of the state dicts of `modules` (name -> module), updated in place with `update`."""

    def __init__(self, modules: dict[str, nn.Module], decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(
                f"train.ema={decay}: the EMA decay must lie strictly between 0 and 1 (e.g. 0.998; "
                "0 turns the average off)"
            )
        self.decay = decay
        self.updates = 0
        self.shadow: dict[str, dict[str, torch.Tensor]] = {
            name: {k: v.detach().clone() for k, v in m.state_dict().items()} for name, m in modules.items()
        }
        # (averaged float tensors, their live tensors, other averaged tensors, their live tensors), paired once:
        # state-dict tensors share storage with the parameters and buffers, which training updates in place
        self._avg_f: list[torch.Tensor] = []
        self._live_f: list[torch.Tensor] = []
        self._avg_o: list[torch.Tensor] = []
        self._live_o: list[torch.Tensor] = []
        for name, m in modules.items():
            live = m.state_dict()
            for k, a in self.shadow[name].items():
                avg, lv = (self._avg_f, self._live_f) if a.is_floating_point() else (self._avg_o, self._live_o)
                avg.append(a)
                lv.append(live[k].detach())

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        if self._avg_f:
            torch._foreach_lerp_(self._avg_f, self._live_f, 1.0 - self.current_decay())
        for a, v in zip(self._avg_o, self._live_o, strict=True):
            a.copy_(v)
        self.updates += 1

    def state_dict(self, name: str) -> dict[str, torch.Tensor]:
        """The averaged weights of one module, in its own state-dict layout (loadable with `load_state_dict`)."""
        return {k: v.clone() for k, v in self.shadow[name].items()}

    def counters(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates}

    def load(self, weights: dict[str, dict[str, torch.Tensor]], counters: dict[str, Any]) -> None:
        """Restore the average from a checkpoint's per-module weights and `counters()`."""
        for name, sd in weights.items():
            for k, a in self.shadow[name].items():
                a.copy_(sd[k])
        self.updates = int(counters.get("updates", 0))

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Put the averaged weights into the live modules for the block (validation), then the live ones back."""
        live, avg = self._live_f + self._live_o, self._avg_f + self._avg_o
        kept = [v.clone() for v in live]
        with torch.no_grad():
            torch._foreach_copy_(live, avg)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(live, kept)
