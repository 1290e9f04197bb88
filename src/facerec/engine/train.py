"""One training epoch as a plain function: batches in, optimiser steps out, metrics accumulated on the device."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from facerec.data.augment import AugmentSpec, augment, to_input
from facerec.engine.progress import Progress
from facerec.engine.schedule import LRSchedule
from facerec.losses.base import EmbeddingLoss


@dataclass
class StepOptions:
    device: torch.device
    amp: bool = False  # bf16 autocast (the loss runs in fp32 either way)
    channels_last: bool = False
    grad_clip: float = 0.0
    log_every: int = 20
    max_steps: int = 0  # 0 = the whole epoch


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
    loss_params = [p for p in loss_fn.parameters() if p.requires_grad]
    if loss_params:
        groups.append({"params": loss_params, "weight_decay": weight_decay, "lr_scale": (loss_lr / lr) if loss_lr else 1.0})
    fused = {"foreach": True}
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0, **fused)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, **fused)
    raise ValueError(f"unknown optimizer {name!r}; choose one of ['adamw', 'sgd']")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def train_one_epoch(
    model: nn.Module,
    loss_fn: EmbeddingLoss,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    steps: int,
    optimizer: torch.optim.Optimizer,
    schedule: LRSchedule,
    global_step: int,
    aug: AugmentSpec,
    generator: torch.Generator,
    opts: StepOptions,
    progress: Progress | None = None,
    epoch: int = 0,
    should_stop: Callable[[], bool] = lambda: False,
) -> dict[str, float]:
    """Train over `batches` of (uint8 images (B,S,S,3), labels (B,)) and return epoch metrics.

    Non-finite losses or gradients skip the step (counted as `skipped_steps`) instead of poisoning the weights.
    Loss and accuracy are summed on the device; the host reads them only every `log_every` steps.
    """
    model.train()
    loss_fn.train()
    dev = opts.device
    total_loss = torch.zeros((), device=dev)
    correct = torch.zeros((), device=dev)
    seen, skipped, done, step = 0, 0, 0, 0
    t0 = time.perf_counter()
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16) if opts.amp else contextlib.nullcontext()
    for step, (images, labels) in enumerate(batches, start=1):
        lr = schedule.lr_at(global_step + step - 1)
        set_lr(optimizer, lr)
        images = images.to(dev, non_blocking=True)
        labels = labels.to(dev, non_blocking=True)
        x = augment(to_input(images, opts.channels_last), aug, generator)
        with autocast:
            emb = model(x)
        loss = loss_fn(emb.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            skipped += 1
            continue
        loss.backward()
        if opts.grad_clip:
            norm = torch.nn.utils.clip_grad_norm_(list(model.parameters()) + list(loss_fn.parameters()), opts.grad_clip)
            if not torch.isfinite(norm):
                skipped += 1
                continue
        optimizer.step()
        done += 1
        seen += labels.shape[0]
        total_loss += loss.detach() * labels.shape[0]
        if loss_fn.has_logits:
            with torch.no_grad():
                correct += (loss_fn.logits(emb.detach().float()).argmax(1) == labels).sum()
        if progress and (step % opts.log_every == 0 or step == steps):
            elapsed = time.perf_counter() - t0
            acc = (correct / max(seen, 1)).item() if loss_fn.has_logits else None
            progress.step(epoch, step, (total_loss / max(seen, 1)).item(), acc, lr, seen / elapsed, elapsed)
        if (opts.max_steps and step >= opts.max_steps) or should_stop():
            break
    elapsed = time.perf_counter() - t0
    return {
        "train_loss": (total_loss / max(seen, 1)).item() if seen else float("nan"),
        "train_acc": (correct / max(seen, 1)).item() if loss_fn.has_logits and seen else None,
        "images": seen,
        "steps": done,
        "batches": step if steps else 0,
        "skipped_steps": skipped,
        "images_per_s": seen / elapsed if elapsed > 0 else 0.0,
        "train_time_s": elapsed,
        "lr": schedule.lr_at(global_step + max(done, 1) - 1),
    }
