"""A whole training run from a config (`train`): the run folder, the data, the parts, `fit`, then best.pt's
finishing touches. The CLI and the Python API call `train`; `resume_config` gives the config of a run to resume.

The other names of the old `facerec.pipeline` module stay importable from here (`__all__`): the data loaders of
engine/data.py, `Log` (engine/log.py) and the builders of engine/build.py.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

import torch

from facerec.config import Config, apply_overrides, config_from_dict, config_to_dict, save_config
from facerec.data.holdout import write_pair_file
from facerec.data.pairset import PairSet
from facerec.engine.build import (
    amp_advice,
    build_loss_fn,
    build_model,
    cpu_has_bf16,
    resolve_amp,
    resolve_device,
    resolve_scoring,
    use_channels_last,
)
from facerec.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from facerec.engine.data import (
    images_on_gpu,
    load_data,
    load_train_images,
    load_val_bins,
    make_sampler,
    train_image_root,
)
from facerec.engine.distributed import DistContext, init_distributed, shutdown
from facerec.engine.fit import FitHooks, FitOptions, fit
from facerec.engine.fit_state import FitState
from facerec.engine.log import Log, Logger, echo, quiet
from facerec.engine.parts import FitParts, build_parts, init_head
from facerec.engine.progress import MetricsLog
from facerec.engine.run_dir import StopFlag, check_writable, removed_if_left_empty
from facerec.engine.validate import prototypes_for
from facerec.models.embedder import count_parameters

__all__ = [  # `train` and `resume_config`, and the other names of the old facerec.pipeline module
    "Log",
    "amp_advice",
    "build_loss_fn",
    "build_model",
    "cpu_has_bf16",
    "images_on_gpu",
    "load_data",
    "load_train_images",
    "make_sampler",
    "resolve_amp",
    "resolve_device",
    "resolve_scoring",
    "resume_config",
    "train",
    "train_image_root",
    "use_channels_last",
]


def train(cfg: Config, run_dir: str | Path, resume: str | bool = False, log: Log = echo) -> FitState:
    """A whole run: data, model, loss, optimiser, then `fit`. `resume=True` continues RUN/last.pt.

    Under `torchrun --nproc_per_node=N` every process calls this and they train one model together
    (engine/distributed.py); rank 0 alone logs and writes the run folder. A run that fails before writing anything
    (a missing dataset, a bad pair file) leaves no run folder behind.
    """
    t = cfg.train
    if t.threads:
        torch.set_num_threads(t.threads)
    ctx, device = init_distributed(resolve_device(t.device))
    try:
        with removed_if_left_empty(Path(run_dir)) if ctx.is_main else contextlib.nullcontext():
            state = _run(cfg, Path(run_dir), resume, log if ctx.is_main else quiet, ctx, device)
        ctx.barrier()  # nobody leaves while rank 0 still writes best.pt
        return state
    finally:
        shutdown(ctx)


def _run(
    cfg: Config, run_dir: Path, resume: str | bool, log: Log, ctx: DistContext, device: torch.device
) -> FitState:
    t = cfg.train
    options = FitOptions(
        t.epochs, run_dir, t.seed, t.best_metric, t.eval_every, t.early_stop, t.time_limit_min * 60
    )
    resume_state = _resume_state(run_dir, resume)
    if resume_state is not None:
        log(f"resuming after epoch {resume_state['epoch']} from {run_dir}")
    if ctx.is_main:
        check_writable(run_dir)
    if ctx.enabled:
        log(f"distributed: {ctx.world_size} processes on {device.type}, each takes 1/{ctx.world_size} of a batch")
    if device.type == "cuda":  # process-wide switches, set here and not at import
        torch.backends.cudnn.benchmark = True  # one input size throughout: time the conv algorithms once
        torch.backends.cuda.matmul.allow_tf32 = True  # the loss heads run in fp32, outside bf16 autocast
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(t.seed)
    bins = load_val_bins(cfg, log) if ctx.is_main else []  # first: a bad pack stops the run before the long decode
    with ctx.main_first():  # rank 0 decodes the images into the shared cache, then the others read it
        layout, train_set, val, pairs = load_data(cfg, log)
    if not ctx.is_main:
        val = pairs = None  # rank 0 alone validates
    if device.type == "cuda":
        train_set = images_on_gpu(train_set, device, log)
    model, loss_fn = build_model(cfg), build_loss_fn(cfg, len(train_set.classes), (ctx.rank, ctx.world_size))
    if t.init_head and resume_state is None:
        init_head(loss_fn, t.init_from, train_set.classes, log)
    parts = build_parts(cfg, model, loss_fn, (train_set, val, pairs), ctx, device, resume_state, log, bins)
    state = FitState.from_state_dict(resume_state["fit_state"]) if resume_state is not None else FitState()
    logger = Logger(log, MetricsLog(run_dir) if ctx.is_main else None)
    if ctx.is_main:
        _write_run_files(cfg, parts, run_dir, train_image_root(cfg, layout.train), logger, resume_state is None)
    t0 = time.time()
    # Several ranks could stop after different steps and leave the others waiting in a collective: under torchrun
    # Ctrl-C simply ends the job, and --resume continues from the last epoch's last.pt.
    with StopFlag(logger, install=not ctx.enabled) as flag:
        hooks = FitHooks(lambda: _checkpoint_extra(cfg, parts), logger, lambda: flag.stop)
        state = fit(parts=parts, options=options, hooks=hooks, state=state)
    if ctx.is_main:
        if state.epoch >= t.epochs or not flag.stop:
            _finalise(parts, options, state, time.time() - t0, logger)
        logger.close()
    return state


def _write_run_files(
    cfg: Config, parts: FitParts, run_dir: Path, train_root: Path, log: Logger, fresh: bool
) -> None:
    """RUN/config.yaml, the held-out pairs, the model summary and (`fresh`: not resumed) the "start" record."""
    save_config(cfg, run_dir / "config.yaml")
    if cfg.data.holdout and parts.pairs is not None:
        _save_holdout_pairs(parts.pairs, run_dir, train_root, log)
    (run_dir / "model_summary.txt").write_text(f"{parts.model}\n\nparameters: {count_parameters(parts.model):,}\n")
    if fresh:
        log(
            event="start",
            device=str(parts.step.opts.device),
            num_params=count_parameters(parts.model),
            num_classes=len(parts.train.classes),
            num_train_images=len(parts.train),
            torch=torch.__version__,
            threads=torch.get_num_threads(),
            cpu_count=os.cpu_count(),
            scoring=parts.scoring,
            sampler=type(parts.sampler).__name__,
            world_size=parts.dist.world_size,
        )


def _save_holdout_pairs(pairs: PairSet, run_dir: Path, train_root: Path, log: Log) -> None:
    """RUN/holdout_pairs.txt: the held-out pairs in the val pair-file format, to score any model on them later."""
    names = pairs.pairs.a + pairs.pairs.b
    if any(len(n.split()) != 1 for n in names) or any(Path(n).is_absolute() for n in names):
        log(
            "holdout pairs not written to a file: some image paths contain spaces or are not under the training "
            "root"
        )
        return
    write_pair_file(pairs.pairs, run_dir / "holdout_pairs.txt")
    log(
        f"held-out pairs: {run_dir / 'holdout_pairs.txt'} (score a model on them with `facerec evaluate "
        f"--checkpoint CKPT --pairs {run_dir / 'holdout_pairs.txt'} --root {train_root}`)"
    )


def _checkpoint_extra(cfg: Config, parts: FitParts) -> dict[str, Any]:
    """What every checkpoint holds besides the fit's position: config, classes, weights (with a weight average:
    the average, which evaluation and inference use, then the optimiser's own weights for --resume), optimiser,
    schedule, scoring and fp16's loss scale."""
    step = parts.step
    weights = {"model": parts.model.state_dict(), "loss": parts.loss_fn.state_dict()}
    if step.ema is not None:
        weights = {
            "model": step.ema.state_dict("model"),
            "loss": step.ema.state_dict("loss"),
            "ema": step.ema.counters(),
            "train_model": weights["model"],
            "train_loss": weights["loss"],
        }
    scale = step.opts.loss_scale
    return {
        "config": config_to_dict(cfg),
        "classes": parts.train.classes,
        **weights,
        "optimizer": step.optimizer.state_dict(),
        "schedule": step.schedule.state_dict(),
        "scoring": parts.scoring,
        **({"loss_scale": scale.state_dict()} if scale is not None else {}),
    }


def _finalise(parts: FitParts, options: FitOptions, state: FitState, seconds: float, log: Logger) -> None:
    """Add what inference needs to best.pt: the decision threshold and the class means of every training image
    (a loss without a classifier matches by them; with one, closed-set matching by "mean" does)."""
    best = load_checkpoint(options.run_dir / "best.pt")
    parts.model.load_state_dict(best["model"])  # the plain model: DDP / torch.compile wrap only the step's
    parts.loss_fn.load_state_dict(best["loss"])
    log(f"class means of the {len(parts.train)} training images (flip TTA) for best.pt")
    finish_best(best, prototypes_for(parts, 1_000_000, with_classifier=True), options, state, seconds, log)


def finish_best(
    best: dict[str, Any],
    prototypes: torch.Tensor | None,
    options: FitOptions,
    state: FitState,
    seconds: float,
    log: Logger,
) -> None:
    """Write best.pt (`best`, its loaded contents) with what inference needs, the class `prototypes` (C, D) of a
    loss without a classifier and the val pairs' threshold, and log the run's end. Training and distillation end
    here."""
    best_pt = options.run_dir / "best.pt"
    if prototypes is not None:
        best["prototypes"] = prototypes
    thr = best.get("metrics", {}).get("val_threshold")
    if thr is not None:
        best["threshold"] = thr
        best["threshold_source"] = "best-accuracy threshold on the val pairs"
    save_checkpoint({k: v for k, v in best.items() if k not in ("format", "version")}, best_pt)
    metric = options.best_metric
    best_value = state.best_value if metric != "train_loss" or state.best_value is None else -state.best_value
    log(
        f"done: best {metric} {best_value} at epoch {state.best_epoch}; checkpoint {best_pt}",
        event="end",
        best_epoch=state.best_epoch,
        best_metric=metric,
        best_value=best_value,
        total_time_s=seconds,
    )


def _resume_state(run_dir: Path, resume: str | bool) -> dict[str, Any] | None:
    if not resume:
        return None
    path = Path(resume) if isinstance(resume, str) else Path(run_dir) / "last.pt"
    if not path.exists():
        raise CheckpointError(f"--resume: no checkpoint at {path}; start without --resume")
    return load_checkpoint(path)


def resume_config(run_dir: str | Path, resume: str | bool, overrides: list[str]) -> Config:
    """The config of the run being resumed, with explicit `key=value` overrides on top (e.g. more epochs)."""
    state = _resume_state(Path(run_dir), resume or True)
    return apply_overrides(config_from_dict(state["config"]), overrides)
