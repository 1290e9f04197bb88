"""The epoch loop: train, evaluate, checkpoint (last every epoch, best by a chosen metric), log, stop cleanly."""

from __future__ import annotations

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
from facerec.engine.train import StepOptions, train_one_epoch
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


def _batches(train: ImageSet, sampler: Any, generator: torch.Generator, pin: bool):
    for idx in sampler.batches(generator):
        images, labels = train.images[idx], train.labels[idx]
        yield (images.pin_memory(), labels.pin_memory()) if pin else (images, labels)


def prototypes_for(parts: FitParts, per_class: int = 16) -> torch.Tensor | None:
    """Class prototypes from up to `per_class` training images per class, for losses without a classifier."""
    if parts.loss_fn.has_logits:
        return None
    labels = parts.train.labels
    order = torch.argsort(labels, stable=True)
    first = torch.searchsorted(labels[order], labels[order], side="left")
    rank = torch.arange(len(order)) - first
    pick = order[rank < per_class]
    e = embed(parts.model, parts.train.images[pick], parts.opts.device, flip=parts.flip_tta,
              channels_last=parts.opts.channels_last)
    return class_prototypes(e, labels[pick], len(parts.train.classes))


def validate(parts: FitParts) -> tuple[dict[str, float], np.ndarray | None]:
    """Closed-set accuracy on the val split and verification metrics on the val pairs (whichever exist)."""
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
        out.update(val_auc=m["auc"], val_eer=m["eer"], val_tar_far1e2=m["tar@far=1e-2"],
                   val_best_acc=m["best_acc"], val_threshold=m["best_threshold"])
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
    metrics: MetricsLog,
    best_metric: str = "val_auc",
    eval_every: int = 1,
    time_limit_s: float = 0.0,
    should_stop: Callable[[], bool] = lambda: False,
) -> FitState:
    """Run epochs `state.epoch .. epochs-1`. Every epoch writes `last.pt`; an improved `best_metric` also writes
    `best.pt` and `val_pair_scores.npz`. Each epoch's randomness derives from (seed, epoch), so a resumed run
    replays the same batches and augmentations as an uninterrupted one."""
    if best_metric not in BEST_METRICS:
        raise ValueError(f"unknown best_metric {best_metric!r}; choose one of {list(BEST_METRICS)}")
    progress = Progress(epochs, len(parts.sampler))
    t_start = time.time()
    pin = parts.opts.device.type == "cuda"
    for epoch in range(state.epoch, epochs):
        torch.manual_seed(seed * 1_000_003 + epoch)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        aug_gen = torch.Generator(device=parts.opts.device).manual_seed(seed * 7_919 + epoch)
        parts.loss_fn.on_epoch_start(epoch)
        t0 = time.time()
        result = train_one_epoch(
            parts.model, parts.loss_fn, _batches(parts.train, parts.sampler, gen, pin), len(parts.sampler),
            parts.optimizer, parts.schedule, state.global_step, parts.aug, aug_gen, parts.opts, progress, epoch,
            should_stop,
        )
        interrupted = should_stop()
        state.global_step += result.pop("batches")
        summary: dict[str, Any] = {"epoch": epoch + 1, **result}
        val_scores = None
        if not interrupted and ((epoch + 1) % eval_every == 0 or epoch + 1 == epochs):
            val, val_scores = validate(parts)
            summary.update(val)
        summary["epoch_time_s"] = time.time() - t0
        summary["elapsed_s"] = time.time() - t_start
        if interrupted:
            save_checkpoint({**checkpoint_extra(), "epoch": state.epoch, "global_step": state.global_step,
                             "fit_state": _state_dict(state), "rng": rng_state()}, run_dir / "last.pt")
            metrics.write("interrupted", epoch=epoch + 1, step=result["steps"])
            print(f"interrupted: saved {run_dir / 'last.pt'}; continue with --resume", flush=True)
            return state
        parts.schedule.observe(_metric_value(best_metric, summary))
        value = _metric_value(best_metric, summary)
        improved = value is not None and (state.best_value is None or value >= state.best_value)  # ties: the later epoch
        if improved:
            state.best_value, state.best_epoch = value, epoch + 1
        state.epoch = epoch + 1
        state.history.append(summary)
        metrics.write("epoch", **summary)
        progress.epoch_end(epoch, summary["epoch_time_s"], {k: v for k, v in summary.items() if k.startswith("val_")
                                                             or k in ("train_loss", "train_acc", "images_per_s")})
        ckpt = {**checkpoint_extra(), "epoch": state.epoch, "global_step": state.global_step,
                "fit_state": _state_dict(state), "rng": rng_state(), "metrics": _numbers(summary)}
        save_checkpoint(ckpt, run_dir / "last.pt")
        if improved or not (run_dir / "best.pt").exists():
            if val_scores is not None:
                np.savez(run_dir / "val_pair_scores.npz", scores=val_scores, labels=parts.pairs.labels.numpy())
            save_checkpoint(ckpt, run_dir / "best.pt")
        if time_limit_s and time.time() - t_start > time_limit_s and epoch + 1 < epochs:
            print(f"time limit reached after epoch {epoch + 1}; stopping", flush=True)
            metrics.write("time_limit", epoch=epoch + 1)
            break
    return state


def _numbers(d: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in d.items() if isinstance(v, int | float) and v is not None}


def _state_dict(state: FitState) -> dict[str, Any]:
    return {"epoch": state.epoch, "global_step": state.global_step, "best_value": state.best_value,
            "best_epoch": state.best_epoch}


def load_fit_state(d: dict[str, Any]) -> FitState:
    return FitState(epoch=d["epoch"], global_step=d["global_step"], best_value=d["best_value"],
                    best_epoch=d["best_epoch"])
