"""The epoch loop: train, evaluate, checkpoint (last every epoch, best by a chosen metric), log, stop cleanly.

`fit` receives objects, never the config: `FitParts` (what trains and on what), `FitOptions` (how long, what
counts as best, when to stop, where checkpoints go) and `FitHooks` (what checkpoints hold besides the fit's
position, where messages go, whether to stop now). engine/run.py builds them from a config.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facerec.engine.checkpoint import rng_state, save_checkpoint
from facerec.engine.data import epoch_batches
from facerec.engine.distributed import gather_shards
from facerec.engine.faults import recover_from_faults
from facerec.engine.fit_state import FitState, merge_partial, numbers
from facerec.engine.log import Logger
from facerec.engine.parts import FitParts
from facerec.engine.progress import Progress
from facerec.engine.train import train_one_epoch
from facerec.engine.validate import validate

BEST_METRICS = ("val_auc", "val_acc", "bins_auc", "train_loss")


@dataclass(frozen=True)
class FitOptions:
    """How long to train, what counts as best, when to stop early, where the checkpoints go. `early_stop` > 0 ends
    the run once that many epochs have passed since `best_metric` last improved; `time_limit_s` > 0 ends it after
    the first epoch that finishes past that many seconds."""

    epochs: int
    run_dir: Path
    seed: int = 0
    best_metric: str = "val_auc"
    eval_every: int = 1
    early_stop: int = 0
    time_limit_s: float = 0.0

    def __post_init__(self) -> None:
        if self.best_metric not in BEST_METRICS:
            raise ValueError(f"unknown best_metric {self.best_metric!r}; choose one of {list(BEST_METRICS)}")
        if self.early_stop < 0:
            raise ValueError(
                f"train.early_stop={self.early_stop}: give a number of epochs, or 0 to train every epoch"
            )


def _never() -> bool:
    return False


@dataclass
class FitHooks:
    """`checkpoint_extra()`: what every checkpoint holds besides the fit's position (config, classes, weights,
    optimiser...); `log`: progress lines, messages and RUN/metrics.jsonl events; `should_stop()`: True once the run
    should save where it is and return (Ctrl-C)."""

    checkpoint_extra: Callable[[], dict[str, Any]]
    log: Logger = field(default_factory=Logger)
    should_stop: Callable[[], bool] = _never


def fit(*, parts: FitParts, options: FitOptions, hooks: FitHooks, state: FitState | None = None) -> FitState:
    """Run epochs `state.epoch .. options.epochs - 1`. Every epoch writes `last.pt`; an improved `best_metric`
    also writes `best.pt` and `val_pair_scores.npz`. Each epoch's randomness derives from (seed, epoch), so a
    resumed run replays the same batches and augmentations as an uninterrupted one."""
    state = state if state is not None else FitState()
    progress = Progress(options.epochs, len(parts.sampler)) if parts.dist.is_main else None
    t_start, rollbacks = time.time(), 0  # rollbacks: epochs with too many non-finite steps (engine/faults.py)
    for epoch in range(state.epoch, options.epochs):
        t0 = time.time()
        result, interrupted = _train_epoch(parts, options, hooks, state, epoch, progress)
        if interrupted:
            _save_interrupted(parts, options, hooks, state, epoch, result)
            return state
        summary: dict[str, Any] = {"epoch": epoch + 1, **result}
        # reload last.pt, lower LR; rank 0 decides (BatchNorm buffers differ per rank): all ranks roll back
        if parts.dist.broadcast(parts.step.opts.faults.triggered(result, parts.model)):
            rollbacks += 1
            summary.update(_roll_back(parts, options, hooks, rollbacks))
        gather_shards(parts.loss_fn)  # Partial FC over N ranks: rank 0 gets all class centres to validate, save
        val_scores = _validate_if_due(parts, options, epoch, summary)
        summary.update(epoch_time_s=time.time() - t0, elapsed_s=time.time() - t_start)
        improved = _update_best(parts, options, state, summary)
        if parts.dist.is_main:
            hooks.log(
                progress.epoch_line(epoch, summary["epoch_time_s"], _shown(summary)), event="epoch", **summary
            )
            _save_epoch(parts, options, hooks, state, summary, improved, val_scores)
        # every rank holds the same (broadcast) metric and time decision, so every rank stops after the same epoch
        if _stop_early(options, hooks, state, summary) or _out_of_time(parts, options, hooks, epoch, t_start):
            break
    return state


def _train_epoch(
    parts: FitParts, options: FitOptions, hooks: FitHooks, state: FitState, epoch: int, progress: Progress | None
) -> tuple[dict[str, Any], bool]:
    """Train one epoch, or the rest of one stopped part-way, and advance `state`. Returns the epoch's training
    metrics (counting the images of every rank) and whether the run was asked to stop, in which case `state`
    says where to pick the epoch up again."""
    # an epoch interrupted part-way continues after its last step, with the random state saved there (the global
    # one came back with the checkpoint): the run then matches one that was never stopped
    skip = state.step_in_epoch if epoch == state.epoch else 0
    if not skip:
        torch.manual_seed(options.seed * 1_000_003 + epoch)
    gen = torch.Generator().manual_seed(options.seed * 1_000_003 + epoch)
    aug_seed = options.seed * 7_919 + epoch + 7_777_777 * parts.dist.rank  # ranks augment their slices differently
    aug_gen = torch.Generator(device=parts.step.opts.device).manual_seed(aug_seed)
    if skip and state.aug_state is not None:
        aug_gen.set_state(state.aug_state)
    parts.loss_fn.on_epoch_start(epoch)
    batches = epoch_batches(parts.train, parts.sampler, gen, parts.step.opts.device, skip)
    result = train_one_epoch(
        parts.step,
        batches,
        aug_gen,
        steps=len(parts.sampler) - skip,
        global_step=state.global_step,
        epoch=epoch,
        progress=progress,
        should_stop=hooks.should_stop,
        log=hooks.log,
    )
    if skip:
        result = merge_partial(state.partial, result)
    interrupted = hooks.should_stop()  # asked once: a later answer could contradict the state saved here
    taken = result.pop("batches")
    state.global_step += taken
    state.step_in_epoch, state.partial, state.aug_state = 0, {}, None
    if interrupted:
        state.step_in_epoch, state.partial, state.aug_state = skip + taken, numbers(result), aug_gen.get_state()
    if parts.dist.enabled:  # every rank steps in lockstep: the job's throughput is N x rank 0's
        n = parts.dist.world_size
        result.update(images=result["images"] * n, images_per_s=result["images_per_s"] * n)
    return result, interrupted


def _position(state: FitState) -> dict[str, Any]:
    """The checkpoint entries that say where the run is."""
    return {
        "epoch": state.epoch,
        "global_step": state.global_step,
        "fit_state": state.state_dict(),
        "rng": rng_state(),
    }


def _save_interrupted(
    parts: FitParts, options: FitOptions, hooks: FitHooks, state: FitState, epoch: int, result: dict[str, Any]
) -> None:
    if not parts.dist.is_main:
        return
    last = options.run_dir / "last.pt"
    save_checkpoint({**hooks.checkpoint_extra(), **_position(state)}, last)
    hooks.log(
        f"interrupted: saved {last}; continue with --resume",
        event="interrupted",
        epoch=epoch + 1,
        step=result["steps"],
    )


def _roll_back(parts: FitParts, options: FitOptions, hooks: FitHooks, rollbacks: int) -> dict[str, Any]:
    step = parts.step
    last = options.run_dir / "last.pt"
    return recover_from_faults(
        parts.model, parts.loss_fn, step.optimizer, last, step.opts.faults, rollbacks, step.ema, hooks.log
    )


def _validate_if_due(
    parts: FitParts, options: FitOptions, epoch: int, summary: dict[str, Any]
) -> np.ndarray | None:
    """Every `eval_every` epochs and after the last: rank 0's validation metrics into `summary` on every rank (the
    schedule steps on the same numbers everywhere); returns the val pair scores (rank 0, with pairs)."""
    if (epoch + 1) % options.eval_every and epoch + 1 != options.epochs:
        return None
    val, scores = validate(parts) if parts.dist.is_main else ({}, None)
    summary.update(parts.dist.broadcast(val))
    return scores


def _metric_value(name: str, summary: dict[str, Any]) -> float | None:
    v = summary.get(name)
    if v is None:
        return None
    return -float(v) if name == "train_loss" else float(v)  # higher is better throughout


def _update_best(parts: FitParts, options: FitOptions, state: FitState, summary: dict[str, Any]) -> bool:
    """Step the plateau schedule, record the finished epoch in `state`; whether it is the best so far."""
    value = _metric_value(options.best_metric, summary)
    parts.step.schedule.observe(value)
    # ties go to the later epoch; until the metric is first measured (no val data), the latest epoch is best
    improved = state.best_value is None or (value is not None and value >= state.best_value)
    if improved:
        state.best_value, state.best_epoch = value, summary["epoch"]
    state.epoch = summary["epoch"]
    state.history.append(summary)
    return improved


def _shown(summary: dict[str, Any]) -> dict[str, Any]:
    """What the epoch's summary line shows: training loss, accuracy and speed, and the validation metrics (val
    data and data.val_bins packs)."""
    return {
        k: v
        for k, v in summary.items()
        if k.startswith(("val_", "bin_")) or k in ("train_loss", "train_acc", "images_per_s")
    }


def _save_epoch(
    parts: FitParts,
    options: FitOptions,
    hooks: FitHooks,
    state: FitState,
    summary: dict[str, Any],
    improved: bool,
    val_scores: np.ndarray | None,
) -> None:
    """last.pt, and best.pt with its val pair scores when the epoch improved on the best (or there is none yet)."""
    ckpt = {**hooks.checkpoint_extra(), **_position(state), "metrics": numbers(summary)}
    save_checkpoint(ckpt, options.run_dir / "last.pt")
    if improved or not (options.run_dir / "best.pt").exists():
        if val_scores is not None:
            labels = parts.pairs.labels.numpy()
            np.savez(options.run_dir / "val_pair_scores.npz", scores=val_scores, labels=labels)
        save_checkpoint(ckpt, options.run_dir / "best.pt")


def _stop_early(options: FitOptions, hooks: FitHooks, state: FitState, summary: dict[str, Any]) -> bool:
    epoch, best = summary["epoch"], state.best_epoch
    measured = _metric_value(options.best_metric, summary) is not None
    if not (options.early_stop and measured and epoch < options.epochs and epoch - best >= options.early_stop):
        return False
    hooks.log(
        f"early stop after epoch {epoch}: no better {options.best_metric} for {options.early_stop} epochs (best "
        f"at epoch {best})",
        event="early_stop",
        epoch=epoch,
        best_epoch=best,
    )
    return True


def _out_of_time(parts: FitParts, options: FitOptions, hooks: FitHooks, epoch: int, t_start: float) -> bool:
    """Past `time_limit_s` after this epoch (not the last); rank 0's clock decides for every rank."""
    if not options.time_limit_s or epoch + 1 >= options.epochs:
        return False
    if not parts.dist.broadcast(time.time() - t_start > options.time_limit_s):
        return False
    hooks.log(f"time limit reached after epoch {epoch + 1}; stopping", event="time_limit", epoch=epoch + 1)
    return True
