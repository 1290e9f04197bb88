"""One training step (`train_step`) and one epoch of them (`train_one_epoch`), with the epoch's accounting.

Numerical faults: a step whose loss or gradient norm is not finite is skipped (counted as `skipped_steps`, the
first one of an epoch is logged); an epoch with too many of them is `FaultPolicy`'s business (engine/faults.py).

No host synchronisation inside the step: the optimisers are the fused ones, which take a `found_inf` flag on the
device and leave weights, momentum and step counts untouched when it is set (engine/optim.py), so a non-finite
step is skipped on the device and the host never waits for the loss. Loss, accuracy and counts are summed on the
device (`EpochMeter`) and read at log points and at the end of the epoch. An optimiser without fused kernels
falls back to one host sync per step.

Mixed precision (`StepOptions.amp`): "bf16" or "fp16" autocast around the network; the loss heads run in fp32.
fp16 adds dynamic loss scaling (engine/loss_scale.py): a step whose scaled gradients overflow is skipped and the
scale halved, which is routine and counted as `overflow_steps`, not as a numerical fault.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
from torch import nn

from facerec.data.augment import AugmentSpec, augment, to_input
from facerec.engine.ema import WeightAverage
from facerec.engine.faults import FaultPolicy
from facerec.engine.log import Log, echo
from facerec.engine.loss_scale import LossScale
from facerec.engine.optim import set_lr, skips_on_device, zero_momentum
from facerec.engine.progress import Progress
from facerec.engine.schedule import StepLR
from facerec.losses.base import EmbeddingLoss

AMP_DTYPES: dict[str, torch.dtype | None] = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class StepOptions:
    """How each step runs: device, precision, memory layout, clipping, how often progress is logged, where an
    epoch stops early, what counts as a numerical fault, and fp16's loss scale."""

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

    @property
    def scaler(self) -> LossScale | None:
        """The loss scale when it is in use (fp16)."""
        return self.loss_scale if self.amp == "fp16" else None

    def autocast(self) -> contextlib.AbstractContextManager:
        """The network's autocast context (a no-op with amp "off")."""
        dtype = AMP_DTYPES[self.amp]
        return torch.autocast(self.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


@dataclass
class StepParts:
    """What every step calls: the network and loss that train (under DDP or torch.compile, the wrapped ones), the
    optimiser, the learning-rate schedule, the augmentation, and the weight average that follows the weights."""

    model: nn.Module
    loss_fn: EmbeddingLoss
    optimizer: torch.optim.Optimizer
    schedule: StepLR
    aug: AugmentSpec
    opts: StepOptions
    ema: WeightAverage | None = None

    @cached_property
    def params(self) -> list[torch.Tensor]:
        """The trainable tensors, network first: the gradient norm and clipping run over these."""
        return [p for p in list(self.model.parameters()) + list(self.loss_fn.parameters()) if p.requires_grad]


@dataclass
class StepOutcome:
    """What a step leaves on the device for the epoch's accounting; nothing here has been read by the host."""

    loss: torch.Tensor  # () fp32, detached; not finite on a faulty step
    ok: torch.Tensor  # () bool: the optimiser took the step
    overflow: torch.Tensor  # () bool: fp16's scaled gradients overflowed (skipped, not a fault)
    norm: torch.Tensor  # () gradient norm, unscaled
    embeddings: torch.Tensor  # (B, D) detached network output
    labels: torch.Tensor  # (B,) on the device


def train_step(
    parts: StepParts, images: torch.Tensor, labels: torch.Tensor, lr: float, generator: torch.Generator
) -> StepOutcome:
    """One optimisation step at learning rate `lr` on uint8 images (B, S, S, 3) and labels (B,): augment (with
    `generator`), forward under autocast, fp32 loss, backward (scaled under fp16), gradient norm and clipping,
    the optimiser step unless the loss or the norm is not finite, then the loss scale and the weight average.

    The gradient norm is computed every step (one fused reduction, reused by `grad_clip`); a skipped step is
    skipped on the device when the optimiser allows it (module notes), through `optimizer.found_inf`, which
    `train_one_epoch` clears after its last step.
    """
    opts, optimizer, scaler = parts.opts, parts.optimizer, parts.opts.scaler
    set_lr(optimizer, lr)
    images = images.to(opts.device, non_blocking=True)
    labels = labels.to(opts.device, non_blocking=True)
    x = augment(to_input(images, opts.channels_last), parts.aug, generator, inplace=True)  # a fresh batch
    with opts.autocast():
        emb = parts.model(x)
    loss = parts.loss_fn(emb.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    (loss * scaler.scale if scaler is not None else loss).backward()
    norm = _unscaled_grad_norm(parts.params, scaler, loss)
    loss_ok = torch.isfinite(loss.detach())
    ok = loss_ok & torch.isfinite(norm)
    # fp16: overflowing scaled gradients with a finite loss are the scale's business (halve it, skip the step),
    # not a fault; once the scale is down to 1 or below, they are a fault like any other
    overflow = loss_ok & ~ok & (scaler.scale > 1) if scaler is not None else torch.zeros_like(ok)
    if opts.grad_clip:  # a non-finite norm makes NaN gradients here, but that step is skipped anyway
        torch.nn.utils.clip_grads_with_norm_(parts.params, opts.grad_clip, norm)
    if skips_on_device(optimizer):
        optimizer.found_inf = (~ok).float()  # read by the fused kernel: skip the update on the device
        optimizer.step()
    elif bool(ok):  # an optimiser without fused kernels: one host sync
        optimizer.step()
    if scaler is not None:
        scaler.update(ok)
    if parts.ema is not None:  # a skipped step left the weights alone: the average moves towards the same ones
        parts.ema.update()
    return StepOutcome(loss.detach(), ok, overflow, norm, emb.detach(), labels)


def _unscaled_grad_norm(params: list[torch.Tensor], scaler: LossScale | None, loss: torch.Tensor) -> torch.Tensor:
    """The total gradient norm (); under fp16 the gradients are divided by the loss scale first, in place."""
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads, error_if_nonfinite=False) if grads else loss.new_zeros(())
    if scaler is not None and grads:  # unscale: the gradients (and their norm) as without scaling
        inv = scaler.scale.reciprocal()
        torch._foreach_mul_(grads, inv)
        norm = norm * inv
    return norm


class EpochMeter:
    """An epoch's running sums, on the device: loss x images, correct, images, good steps, skipped (faulty) steps,
    fp16 overflow steps; and the first faulty step (its number, loss, gradient norm), logged once when read."""

    def __init__(self, loss_fn: EmbeddingLoss, device: torch.device, epoch: int, log: Log) -> None:
        self.loss_fn, self.device, self.epoch, self.log = loss_fn, device, epoch, log
        self.sums = torch.zeros(6, device=device)
        self.first_bad = torch.zeros(3, device=device)
        self.warned = False
        self.t0 = time.perf_counter()

    @torch.no_grad()
    def add(self, step: int, out: StepOutcome) -> None:
        n = out.labels.shape[0]
        good, fault = out.ok.float(), (~out.ok & ~out.overflow)
        hits = 0
        if self.loss_fn.has_logits:  # accuracy of the loss's classifier, after the step
            hits = (self.loss_fn.logits(out.embeddings.float()).argmax(1) == out.labels).sum()
        ok_loss = torch.where(out.ok, out.loss * n, 0.0)
        self.sums += torch.stack([ok_loss, good * hits, good * n, good, fault.float(), out.overflow.float()])
        new = (self.first_bad[0] == 0) & fault
        bad = torch.stack([torch.full((), float(step), device=self.device), out.loss.float(), out.norm.float()])
        self.first_bad.copy_(torch.where(new, bad, self.first_bad))

    def read(self) -> list[float]:
        """The sums and the first faulty step, on the host (one sync); logs the epoch's first faulty step once."""
        values = torch.cat([self.sums, self.first_bad]).tolist()
        if values[4] and not self.warned:
            self.warned = True
            self.log(
                f"warning: epoch {self.epoch + 1} step {int(values[6])}: non-finite loss ({values[7]:.4g}) or "
                f"gradient norm ({values[8]:.4g}); step skipped (counted in skipped_steps)"
            )
        return values

    def so_far(self) -> tuple[float, float | None, float, float]:
        """(mean loss, accuracy or None, images/s, seconds) of the epoch so far, for a progress line."""
        elapsed = time.perf_counter() - self.t0
        total, correct, seen = self.read()[:3]
        acc = correct / max(seen, 1) if self.loss_fn.has_logits else None
        return total / max(seen, 1), acc, seen / elapsed, elapsed

    def result(self, batches: int, lr: float, scaler: LossScale | None, read: bool = True) -> dict[str, Any]:
        """The epoch's metrics: `batches` taken, the last step's `lr`, the loss scale's counts under fp16.
        `read=False` when no step ran: nothing to sync."""
        total, correct, seen, done, skipped, overflows = (self.read() if read else [0.0] * 9)[:6]
        elapsed = time.perf_counter() - self.t0
        result = {
            "train_loss": total / seen if seen else float("nan"),
            "train_acc": correct / seen if self.loss_fn.has_logits and seen else None,
            "images": int(seen),
            "steps": int(done),
            "batches": batches,
            "skipped_steps": int(skipped),
            "images_per_s": seen / elapsed if elapsed > 0 else 0.0,
            "train_time_s": elapsed,
            "lr": lr,
        }
        if scaler is not None:
            result.update(overflow_steps=int(overflows), loss_scale=scaler.scale.item())
        return result


def _never() -> bool:
    return False


def train_one_epoch(
    parts: StepParts,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    generator: torch.Generator,
    *,
    steps: int,
    global_step: int = 0,
    epoch: int = 0,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] = _never,
    log: Log = echo,
) -> dict[str, Any]:
    """`train_step` over `batches` of (uint8 images (B,S,S,3), labels (B,)), `steps` of them planned, until they
    run out, `opts.max_steps` were taken or `should_stop()`. Step i (0-based) runs at `schedule.lr_at(global_step
    + i)`; `generator` draws the augmentation. Returns the epoch's metrics. With a `progress`, a line goes to `log`
    every `opts.log_every` steps and at step `steps`.
    """
    parts.model.train()
    parts.loss_fn.train()
    if skips_on_device(parts.optimizer):
        zero_momentum(parts.optimizer)
    meter, step = EpochMeter(parts.loss_fn, parts.opts.device, epoch, log), 0
    for step, (images, labels) in enumerate(batches, start=1):
        lr = parts.schedule.lr_at(global_step + step - 1)
        meter.add(step, train_step(parts, images, labels, lr, generator))
        if progress is not None and (step % parts.opts.log_every == 0 or step == steps):
            loss, acc, img_s, elapsed = meter.so_far()
            log(progress.step_line(epoch, step, loss, acc, lr, img_s, elapsed))
        if (parts.opts.max_steps and step >= parts.opts.max_steps) or should_stop():
            break
    parts.optimizer.found_inf = None  # plain steps elsewhere (tests, other loops) must not see a stale flag
    lr_scale = parts.optimizer.param_groups[0].get("lr_scale", 1.0)
    last_lr = parts.schedule.lr_at(global_step + max(step, 1) - 1) * lr_scale
    return meter.result(step if steps else 0, last_lr, parts.opts.scaler, read=step > 0)
