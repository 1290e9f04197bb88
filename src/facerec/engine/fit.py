"""The epoch loop: train, evaluate, checkpoint (last every epoch, best by a chosen metric), log, stop cleanly."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from facerec.data.augment import AugmentSpec
from facerec.data.memory import ImageSet
from facerec.data.pairset import PairSet
from facerec.engine.checkpoint import rng_state, save_checkpoint
from facerec.engine.distributed import DistContext
from facerec.engine.ema import WeightAverage
from facerec.engine.evaluate import (
    class_prototypes,
    class_scores,
    embed,
    evaluate_closed_set,
    evaluate_pairs,
    score_pairs,
)
from facerec.engine.progress import MetricsLog, Progress
from facerec.engine.schedule import LRSchedule
from facerec.engine.train import StepOptions, recover_from_faults, train_one_epoch
from facerec.losses.base import EmbeddingLoss

BEST_METRICS = ("val_auc", "val_acc", "train_loss")


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


@dataclass
class FitParts:
    model: nn.Module
    loss_fn: EmbeddingLoss
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    train: ImageSet
    sampler: Any  # RandomBatchSampler | PKBatchSampler
    aug: AugmentSpec
    opts: StepOptions
    val: ImageSet | None = None
    pairs: PairSet | None = None
    scoring: str = "cosine"
    flip_tta: bool = True
    # What the training step calls when it differs from model / loss_fn: DDP and/or torch.compile around the
    # model, GatherLoss around the loss. Validation and checkpoints use the plain `model` and `loss_fn`.
    train_model: nn.Module | None = None
    train_loss: EmbeddingLoss | None = None
    dist: DistContext = field(default_factory=DistContext)  # rank 0 alone validates, logs and writes files
    ema: WeightAverage | None = None  # train.ema: validation scores the weight average (engine/ema.py)


def epoch_batches(train: ImageSet, sampler: Any, generator: torch.Generator, device: torch.device, skip: int = 0):
    """The epoch's (uint8 images (B, S, S, 3), labels (B,)) batches, without a host sync per step.

    Images that live on the GPU (pipeline.py puts them there when they fit) are indexed there, the epoch's indices
    and labels copied over once; host images are gathered into pinned memory so the copy to the GPU is async.
    `skip` leaves out the first batches (an interrupted epoch resumes after them): the whole order is still drawn,
    so the generator ends where it would have.
    """
    batches = list(sampler.batches(generator))[skip:]
    if not batches:
        return
    order, sizes = torch.cat(batches), [len(b) for b in batches]
    labels = train.labels[order]
    if train.images.device.type != "cpu":
        order = order.pin_memory().to(train.images.device, non_blocking=True)
        labels = labels.pin_memory().to(train.images.device, non_blocking=True)
        yield from zip((train.images[i] for i in order.split(sizes)), labels.split(sizes), strict=True)
        return
    pin = device.type == "cuda"
    for idx, y in zip(order.split(sizes), labels.split(sizes), strict=True):
        x = train.images[idx]
        yield (x.pin_memory(), y.pin_memory()) if pin else (x, y)


def prototypes_for(parts: FitParts, per_class: int = 8) -> torch.Tensor | None:
    """Class prototypes from up to `per_class` training images per class, for losses without a classifier."""
    if parts.loss_fn.has_logits:
        return None
    labels = parts.train.labels
    order = torch.argsort(labels, stable=True)
    first = torch.searchsorted(labels[order], labels[order], side="left")
    rank = torch.arange(len(order)) - first
    pick = order[rank < per_class]
    e = embed(
        parts.model,
        parts.train.images[pick],
        parts.opts.device,
        flip=parts.flip_tta,
        channels_last=parts.opts.channels_last,
    )
    return class_prototypes(e, labels[pick], len(parts.train.classes))


def validate(parts: FitParts) -> tuple[dict[str, float], np.ndarray | None]:
    """Closed-set accuracy on the val split and verification metrics on the val pairs (whichever exist), of the
    weight average when the run keeps one."""
    with parts.ema.applied() if parts.ema is not None else contextlib.nullcontext():
        return _validate(parts)


def _validate(parts: FitParts) -> tuple[dict[str, float], np.ndarray | None]:
    out: dict[str, float] = {}
    pair_scores = None
    dev, cl = parts.opts.device, parts.opts.channels_last
    if parts.val is not None and len(parts.val):
        e = embed(parts.model, parts.val.images, dev, flip=parts.flip_tta, channels_last=cl)
        scores = class_scores(e, parts.loss_fn, prototypes_for(parts))
        m = evaluate_closed_set(scores, parts.val.labels)
        out.update(val_acc=m["acc"], val_top5=m["top5"])
    if parts.pairs is not None and parts.pairs.labels is not None:
        e = embed(parts.model, parts.pairs.images, dev, flip=parts.flip_tta, channels_last=cl)
        s = score_pairs(e, parts.pairs.idx_a, parts.pairs.idx_b, parts.scoring)
        m = evaluate_pairs(s, parts.pairs.labels)
        out.update(
            val_auc=m["auc"],
            val_eer=m["eer"],
            val_tar_far1e2=m["tar@far=1e-2"],
            val_best_acc=m["best_acc"],
            val_threshold=m["best_threshold"],
        )
        pair_scores = s.numpy()
    return out, pair_scores


def _metric_value(name: str, summary: dict[str, Any]) -> float | None:
    v = summary.get(name)
    if v is None:
        return None
    return -float(v) if name == "train_loss" else float(v)  # higher is better throughout


def fit(
    parts: FitParts,
    state: FitState,
    epochs: int,
    run_dir: Path,
    seed: int,
    checkpoint_extra: Callable[[], dict[str, Any]],
    metrics: MetricsLog | None,
    best_metric: str = "val_auc",
    eval_every: int = 1,
    time_limit_s: float = 0.0,
    should_stop: Callable[[], bool] = lambda: False,
    early_stop: int = 0,
) -> FitState:
    """Run epochs `state.epoch .. epochs-1`. Every epoch writes `last.pt`; an improved `best_metric` also writes
    `best.pt` and `val_pair_scores.npz`. Each epoch's randomness derives from (seed, epoch), so a resumed run
    replays the same batches and augmentations as an uninterrupted one. `early_stop` > 0 ends the run once that
    many epochs have passed since `best_metric` last improved."""
    if best_metric not in BEST_METRICS:
        raise ValueError(f"unknown best_metric {best_metric!r}; choose one of {list(BEST_METRICS)}")
    if early_stop < 0:
        raise ValueError(f"train.early_stop={early_stop}: give a number of epochs, or 0 to train every epoch")
    main = parts.dist.is_main  # metrics is None on the other ranks
    progress = Progress(epochs, len(parts.sampler)) if main else None
    t_start = time.time()
    rollbacks = 0  # epochs with too many non-finite steps (engine/train.py FaultPolicy)
    for epoch in range(state.epoch, epochs):
        # an epoch interrupted part-way continues after its last step, with the random state saved there (the
        # global one came back with the checkpoint): the run then matches one that was never stopped
        skip = state.step_in_epoch if epoch == state.epoch else 0
        if not skip:
            torch.manual_seed(seed * 1_000_003 + epoch)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        aug_seed = seed * 7_919 + epoch + 7_777_777 * parts.dist.rank  # ranks augment their slices differently
        aug_gen = torch.Generator(device=parts.opts.device).manual_seed(aug_seed)
        if skip and state.aug_state is not None:
            aug_gen.set_state(state.aug_state)
        parts.loss_fn.on_epoch_start(epoch)
        t0 = time.time()
        result = train_one_epoch(
            parts.train_model if parts.train_model is not None else parts.model,  # a compiled module has no bool
            parts.train_loss if parts.train_loss is not None else parts.loss_fn,
            epoch_batches(parts.train, parts.sampler, gen, parts.opts.device, skip),
            len(parts.sampler) - skip,
            parts.optimizer,
            parts.schedule,
            state.global_step,
            parts.aug,
            aug_gen,
            parts.opts,
            progress,
            epoch,
            should_stop,
            parts.ema,
        )
        if skip:
            result = merge_partial(state.partial, result)
        interrupted = should_stop()
        batches = result.pop("batches")
        state.global_step += batches
        state.step_in_epoch, state.partial, state.aug_state = 0, {}, None
        if interrupted:  # where to pick the epoch up again
            state.step_in_epoch, state.partial = skip + batches, _numbers(result)
            state.aug_state = aug_gen.get_state()
        if parts.dist.enabled:  # every rank steps in lockstep: the job's throughput is N x rank 0's
            result.update(
                images=result["images"] * parts.dist.world_size,
                images_per_s=result["images_per_s"] * parts.dist.world_size,
            )
        summary: dict[str, Any] = {"epoch": epoch + 1, **result}
        # reload last.pt, lower LR; rank 0 decides (BatchNorm buffers differ per rank): all ranks roll back
        if not interrupted and parts.dist.broadcast(parts.opts.faults.triggered(result, parts.model)):
            rollbacks += 1
            summary.update(
                recover_from_faults(
                    parts.model,
                    parts.loss_fn,
                    parts.optimizer,
                    run_dir / "last.pt",
                    parts.opts.faults,
                    rollbacks,
                    parts.ema,
                )
            )
        val_scores = None
        if not interrupted and ((epoch + 1) % eval_every == 0 or epoch + 1 == epochs):
            val, val_scores = validate(parts) if main else ({}, None)
            summary.update(parts.dist.broadcast(val))  # the schedule steps on the same numbers on every rank
        summary["epoch_time_s"] = time.time() - t0
        summary["elapsed_s"] = time.time() - t_start
        if interrupted and main:
            save_checkpoint(
                {
                    **checkpoint_extra(),
                    "epoch": state.epoch,
                    "global_step": state.global_step,
                    "fit_state": _state_dict(state),
                    "rng": rng_state(),
                },
                run_dir / "last.pt",
            )
            metrics.write("interrupted", epoch=epoch + 1, step=result["steps"])
            print(f"interrupted: saved {run_dir / 'last.pt'}; continue with --resume", flush=True)
        if interrupted:
            return state
        parts.schedule.observe(_metric_value(best_metric, summary))
        value = _metric_value(best_metric, summary)
        # ties go to the later epoch; until the metric is first measured (no val data), the latest epoch is best
        improved = state.best_value is None or (value is not None and value >= state.best_value)
        if improved:
            state.best_value, state.best_epoch = value, epoch + 1
        state.epoch = epoch + 1
        state.history.append(summary)
        if main:
            metrics.write("epoch", **summary)
            shown = {
                k: v
                for k, v in summary.items()
                if k.startswith("val_") or k in ("train_loss", "train_acc", "images_per_s")
            }
            progress.epoch_end(epoch, summary["epoch_time_s"], shown)
            ckpt = {
                **checkpoint_extra(),
                "epoch": state.epoch,
                "global_step": state.global_step,
                "fit_state": _state_dict(state),
                "rng": rng_state(),
                "metrics": _numbers(summary),
            }
            save_checkpoint(ckpt, run_dir / "last.pt")
            if improved or not (run_dir / "best.pt").exists():
                if val_scores is not None:
                    np.savez(run_dir / "val_pair_scores.npz", scores=val_scores, labels=parts.pairs.labels.numpy())
                save_checkpoint(ckpt, run_dir / "best.pt")
        # every rank holds the same (broadcast) metric, so every rank stops after the same epoch
        measured = _metric_value(best_metric, summary) is not None
        if early_stop and measured and epoch + 1 < epochs and epoch + 1 - state.best_epoch >= early_stop:
            if main:
                print(
                    f"early stop after epoch {epoch + 1}: no better {best_metric} for {early_stop} epochs (best "
                    f"at epoch {state.best_epoch})",
                    flush=True,
                )
                metrics.write("early_stop", epoch=epoch + 1, best_epoch=state.best_epoch)
            break
        # rank 0's clock decides, so that every rank stops after the same epoch
        if time_limit_s and epoch + 1 < epochs and parts.dist.broadcast(time.time() - t_start > time_limit_s):
            if main:
                print(f"time limit reached after epoch {epoch + 1}; stopping", flush=True)
                metrics.write("time_limit", epoch=epoch + 1)
            break
    return state


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


def _numbers(d: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in d.items() if isinstance(v, int | float) and v is not None}


def _state_dict(state: FitState) -> dict[str, Any]:
    return {
        "epoch": state.epoch,
        "global_step": state.global_step,
        "best_value": state.best_value,
        "best_epoch": state.best_epoch,
        "step_in_epoch": state.step_in_epoch,
        "partial": state.partial,
        "aug_state": state.aug_state,
    }


def load_fit_state(d: dict[str, Any]) -> FitState:
    return FitState(
        epoch=d["epoch"],
        global_step=d["global_step"],
        best_value=d["best_value"],
        best_epoch=d["best_epoch"],
        step_in_epoch=d.get("step_in_epoch", 0),
        partial=d.get("partial") or {},
        aug_state=d.get("aug_state"),
    )
