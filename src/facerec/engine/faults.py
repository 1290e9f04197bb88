"""Numerical faults: when an epoch skips too many non-finite steps, roll back to the last good checkpoint.

The training step (engine/train.py) skips a step whose loss or gradient norm is not finite and counts it as
`skipped_steps`. An epoch with too many of them triggers `FaultPolicy`: the weights and optimiser state of the
last good checkpoint are reloaded and the learning rate is scaled down (`recover_from_faults`); repeated rollbacks
end the run with `TrainingDiverged`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from facerec.engine.checkpoint import load_checkpoint
from facerec.engine.ema import WeightAverage, optimiser_weights
from facerec.engine.log import Log, echo
from facerec.errors import TrainingDiverged


@dataclass
class FaultPolicy:
    """When an epoch skips more than `max_skipped` steps (or all of them), reload the last good checkpoint and
    multiply the learning rate by `lr_factor`; the `max_rollbacks + 1`-th such epoch raises TrainingDiverged."""

    max_skipped: int = 10
    lr_factor: float = 0.5
    max_rollbacks: int = 3

    def triggered(self, result: dict[str, Any], model: nn.Module | None = None) -> bool:
        """Too many skipped steps, or non-finite BatchNorm statistics (a skipped step still ran its forward)."""
        skipped = result.get("skipped_steps", 0)
        if skipped > self.max_skipped or (skipped > 0 and result.get("steps", 0) == 0):
            return True
        return (
            skipped > 0
            and model is not None
            and not all(bool(torch.isfinite(b).all()) for b in model.buffers() if b.is_floating_point())
        )


def recover_from_faults(
    model: nn.Module,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    checkpoint: str | Path,
    policy: FaultPolicy,
    rollbacks: int,
    ema: WeightAverage | None = None,
    log: Log = echo,
) -> dict[str, Any]:
    """The `rollbacks`-th reaction to an epoch of repeated non-finite steps: reload model, loss and optimiser state
    from `checkpoint` (the last good epoch; skipped if it does not exist yet) and scale every group's learning rate
    by `policy.lr_factor`. The scale lives in the optimiser's param groups, so later checkpoints keep it. With a
    weight average (`ema`), the optimiser's weights are the checkpoint's "train_model" / "train_loss", and the
    average comes back too."""
    if rollbacks > policy.max_rollbacks:
        lr_scale = optimizer.param_groups[0].get("lr_scale", 1.0)
        raise TrainingDiverged(
            f"training diverged: non-finite losses or gradients in {rollbacks} epochs despite "
            f"{policy.max_rollbacks} rollbacks (learning rate now x{lr_scale:g}); lower optim.lr, set "
            "optim.grad_clip, or check the data."
        )
    path = Path(checkpoint)
    rolled_back = path.is_file()
    if rolled_back:
        state = load_checkpoint(path, map_location="cpu")
        # torch.compile wraps the module; with an EMA, "model" is the average and "train_model" the live weights
        model_state, loss_state = optimiser_weights(state)
        getattr(model, "_orig_mod", model).load_state_dict(model_state)
        loss_fn.load_state_dict(loss_state)
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None and "ema" in state:
            ema.load({"model": state["model"], "loss": state["loss"]}, state["ema"])
    for group in optimizer.param_groups:
        group["lr_scale"] = group.get("lr_scale", 1.0) * policy.lr_factor
    lr_scale = optimizer.param_groups[0]["lr_scale"]
    where = f"reloaded {path}" if rolled_back else f"no {path.name} yet, weights kept"
    log(f"warning: too many non-finite steps: {where}; learning rate x{lr_scale:g} from now on")
    return {"rolled_back": rolled_back, "lr_scale": lr_scale}
