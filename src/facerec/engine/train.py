"""One training epoch as a plain function: batches in, optimiser steps out, metrics accumulated on the device.

Numerical faults: a step whose loss or gradient norm is not finite is skipped (counted as `skipped_steps`, the
first one of an epoch is printed). An epoch with too many of them triggers `FaultPolicy`: the weights and optimiser
state of the last good checkpoint are reloaded and the learning rate is scaled down (`recover_from_faults`).

No host synchronisation inside the step: the optimisers are the fused ones, which take a `found_inf` flag on the
device and leave weights, momentum and step counts untouched when it is set (as `torch.amp.GradScaler` uses them),
so a non-finite step is skipped on the device and the host never waits for the loss. Loss, accuracy and counts are
summed on the device and read at log points and at the end of the epoch. An optimiser without fused kernels falls
back to one host sync per step.

Mixed precision (`StepOptions.amp`): "bf16" or "fp16" autocast around the network; the loss heads run in fp32.
fp16 adds dynamic loss scaling (engine/loss_scale.py): a step whose scaled gradients overflow is skipped and the
scale halved, which is routine and counted as `overflow_steps`, not as a numerical fault.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from facerec.data.augment import AugmentSpec, augment, to_input
from facerec.engine.checkpoint import load_checkpoint
from facerec.engine.ema import WeightAverage, optimiser_weights
from facerec.engine.loss_scale import LossScale
from facerec.engine.progress import Progress
from facerec.engine.schedule import StepLR
from facerec.errors import TrainingDiverged  # noqa: F401 (re-exported)
from facerec.losses.base import EmbeddingLoss


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


AMP_DTYPES: dict[str, torch.dtype | None] = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class StepOptions:
    device: torch.device
    amp: str = "off"  # autocast dtype of the network: off | bf16 | fp16 (the loss runs in fp32 either way)
    channels_last: bool = False
    grad_clip: float = 0.0
    log_every: int = 20
    max_steps: int = 0  # 0 = the whole epoch
    faults: FaultPolicy = field(default_factory=FaultPolicy)
    loss_scale: LossScale | None = None  # fp16 only; made here when not given, saved with the checkpoints

    def __post_init__(self) -> None:
        if self.amp not in AMP_DTYPES:
            raise ValueError(f"unknown amp {self.amp!r}; choose one of {list(AMP_DTYPES)}")
        if self.amp == "fp16" and self.loss_scale is None:
            self.loss_scale = LossScale(self.device)


def build_optimizer(
    model: nn.Module,
    loss_fn: nn.Module,
    name: str,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    nesterov: bool = True,
    loss_lr: float = 0.0,
) -> torch.optim.Optimizer:
    """SGD or AdamW; no weight decay on biases and norm layers; loss parameters (class centres) in their own group
    with `loss_lr` (0 = `lr`). Each group's "base_lr" scales with the schedule."""
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
        {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0},
    ]
    scale = (loss_lr / lr) if loss_lr else 1.0
    loss_params = [p for p in loss_fn.parameters() if p.requires_grad]
    matrices = [p for p in loss_params if p.ndim > 1]  # class centres / proxies
    scalars = [p for p in loss_params if p.ndim <= 1]  # learnable scales and biases (B-way a, b; pair-wise w, b)
    for params, wd in ((matrices, weight_decay), (scalars, 0.0)):
        if params:
            groups.append({"params": params, "weight_decay": wd, "lr_scale": scale})
    # fused kernels (CUDA and CPU): one launch per step, and the device-side skip of non-finite steps
    fast = {"fused": True} if _fused_ok(model, loss_fn) else {"foreach": True}
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0, **fast)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, **fast)
    raise ValueError(f"unknown optimizer {name!r}; choose one of ['adamw', 'sgd']")


def _fused_ok(*modules: nn.Module) -> bool:
    """Fused optimiser kernels exist for floating-point parameters on CUDA and the CPU."""
    params = [p for m in modules for p in m.parameters()]
    return all(p.is_floating_point() and p.device.type in ("cuda", "cpu") for p in params)


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether `optimizer.step()` honours a device-side `found_inf` flag (the fused SGD / Adam / AdamW kernels)."""
    return bool(optimizer.defaults.get("fused")) and isinstance(
        optimizer, (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)
    )


def _zero_momentum(optimizer: torch.optim.Optimizer) -> None:
    """Give SGD's momentum buffers a zero start before the first step. The fused kernel otherwise allocates them
    uninitialised on its first call and fills them there, which a skipped first step would leave as garbage; from
    zero, the first real step gives buf = momentum * 0 + grad = grad, as SGD's own first step does."""
    if not isinstance(optimizer, torch.optim.SGD):
        return
    for group in optimizer.param_groups:
        if group.get("momentum", 0) and group.get("dampening", 0) == 0:
            for p in group["params"]:
                state = optimizer.state[p]
                if state.get("momentum_buffer") is None:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def train_one_epoch(
    model: nn.Module,
    loss_fn: EmbeddingLoss,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    steps: int,
    optimizer: torch.optim.Optimizer,
    schedule: StepLR,
    global_step: int,
    aug: AugmentSpec,
    generator: torch.Generator,
    opts: StepOptions,
    progress: Progress | None = None,
    epoch: int = 0,
    should_stop: Callable[[], bool] = lambda: False,
    ema: WeightAverage | None = None,
) -> dict[str, float]:
    """Train over `batches` of (uint8 images (B,S,S,3), labels (B,)) and return epoch metrics; `ema` (if any)
    follows the weights after every step.

    A step whose loss or gradient norm is not finite is skipped (counted as `skipped_steps`) instead of poisoning
    the weights. The gradient norm is computed every step (one fused reduction, reused by `grad_clip`); the skip
    happens on the device (see the module notes), and loss, accuracy and counts are summed there: the host reads
    them only every `log_every` steps and at the end.
    """
    model.train()
    loss_fn.train()
    dev = opts.device
    params = [p for p in list(model.parameters()) + list(loss_fn.parameters()) if p.requires_grad]
    on_device = skips_on_device(optimizer)
    if on_device:
        _zero_momentum(optimizer)
    # device-side sums: loss * images, correct, images, good steps, skipped steps, fp16 overflow steps; first bad
    # step, its loss, norm
    sums = torch.zeros(6, device=dev)
    first_bad = torch.zeros(3, device=dev)
    warned, step = False, 0
    t0 = time.perf_counter()
    dtype = AMP_DTYPES[opts.amp]
    autocast = torch.autocast(dev.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    scaler = opts.loss_scale if opts.amp == "fp16" else None

    def read() -> list[float]:  # one host sync; prints the epoch's first skipped step once
        nonlocal warned
        values = torch.cat([sums, first_bad]).tolist()
        if values[4] and not warned:
            warned = True
            print(
                f"warning: epoch {epoch + 1} step {int(values[6])}: non-finite loss ({values[7]:.4g}) or gradient "
                f"norm ({values[8]:.4g}); step skipped (counted in skipped_steps)",
                flush=True,
            )
        return values

    for step, (images, labels) in enumerate(batches, start=1):
        lr = schedule.lr_at(global_step + step - 1)
        set_lr(optimizer, lr)
        images = images.to(dev, non_blocking=True)
        labels = labels.to(dev, non_blocking=True)
        x = augment(to_input(images, opts.channels_last), aug, generator, inplace=True)  # a fresh batch
        with autocast:
            emb = model(x)
        loss = loss_fn(emb.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        (loss * scaler.scale if scaler is not None else loss).backward()
        grads = [p.grad for p in params if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads, error_if_nonfinite=False) if grads else loss.new_zeros(())
        if scaler is not None and grads:  # unscale: the gradients (and their norm) as without scaling
            inv = scaler.scale.reciprocal()
            torch._foreach_mul_(grads, inv)
            norm = norm * inv
        loss_ok = torch.isfinite(loss.detach())
        ok = loss_ok & torch.isfinite(norm)
        # fp16: overflowing scaled gradients with a finite loss are the scale's business (halve it, skip the step),
        # not a fault; once the scale is down to 1 or below, they are a fault like any other
        overflow = loss_ok & ~ok & (scaler.scale > 1) if scaler is not None else torch.zeros_like(ok)
        if opts.grad_clip:  # a non-finite norm makes NaN gradients here, but that step is skipped anyway
            torch.nn.utils.clip_grads_with_norm_(params, opts.grad_clip, norm)
        if on_device:
            optimizer.found_inf = (~ok).float()  # read by the fused kernel: skip the update on the device
            optimizer.step()
        elif bool(ok):  # an optimiser without fused kernels: one host sync
            optimizer.step()
        if scaler is not None:
            scaler.update(ok)
        if ema is not None:  # a skipped step left the weights alone: the average moves towards the same ones
            ema.update()
        with torch.no_grad():
            n = labels.shape[0]
            good, fault = ok.float(), (~ok & ~overflow)
            hits = (loss_fn.logits(emb.detach().float()).argmax(1) == labels).sum() if loss_fn.has_logits else 0
            sums += torch.stack(
                [
                    torch.where(ok, loss.detach() * n, 0.0),
                    good * hits,
                    good * n,
                    good,
                    fault.float(),
                    overflow.float(),
                ]
            )
            new = (first_bad[0] == 0) & fault
            bad = torch.stack([torch.full((), float(step), device=dev), loss.detach().float(), norm.float()])
            first_bad.copy_(torch.where(new, bad, first_bad))
        if progress and (step % opts.log_every == 0 or step == steps):
            elapsed = time.perf_counter() - t0
            total, correct, seen = read()[:3]
            acc = correct / max(seen, 1) if loss_fn.has_logits else None
            progress.step(epoch, step, total / max(seen, 1), acc, lr, seen / elapsed, elapsed)
        if (opts.max_steps and step >= opts.max_steps) or should_stop():
            break
    optimizer.found_inf = None  # plain steps elsewhere (tests, other loops) must not see a stale flag
    total, correct, seen, done, skipped, overflows = (read() if step else [0.0] * 9)[:6]
    elapsed = time.perf_counter() - t0
    result = {
        "train_loss": total / seen if seen else float("nan"),
        "train_acc": correct / seen if loss_fn.has_logits and seen else None,
        "images": int(seen),
        "steps": int(done),
        "batches": step if steps else 0,
        "skipped_steps": int(skipped),
        "images_per_s": seen / elapsed if elapsed > 0 else 0.0,
        "train_time_s": elapsed,
        "lr": schedule.lr_at(global_step + max(step, 1) - 1) * optimizer.param_groups[0].get("lr_scale", 1.0),
    }
    if scaler is not None:
        result.update(overflow_steps=int(overflows), loss_scale=scaler.scale.item())
    return result


def recover_from_faults(
    model: nn.Module,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    checkpoint: str | Path,
    policy: FaultPolicy,
    rollbacks: int,
    ema: WeightAverage | None = None,
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
    print(f"warning: too many non-finite steps: {where}; learning rate x{lr_scale:g} from now on", flush=True)
    return {"rolled_back": rolled_back, "lr_scale": lr_scale}
