"""What `fit` trains and on what (`FitParts`), and how a config builds them: network and loss on the device,
optimiser, sampler, schedule, the step's options and the weight average, restored from the checkpoint being
resumed or started from another run's network (`train.init_from`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from facerec.config import Config
from facerec.data.augment import get_preset
from facerec.data.memory import ImageSet
from facerec.data.pairset import PairSet
from facerec.engine.build import amp_advice, cpu_has_bf16, resolve_amp, resolve_scoring, use_channels_last
from facerec.engine.checkpoint import CheckpointError, load_checkpoint, set_rng_state
from facerec.engine.data import ValBin, make_sampler
from facerec.engine.distributed import (
    DistContext,
    GatherLoss,
    ShardedBatchSampler,
    keep_own_shard_state,
    partial_fc_heads,
    wrap_model,
)
from facerec.engine.ema import WeightAverage, optimiser_weights
from facerec.engine.log import Log
from facerec.engine.optim import build_optimizer
from facerec.engine.schedule import LRSchedule
from facerec.engine.train import StepOptions, StepParts
from facerec.errors import ConfigError
from facerec.losses.base import CombinedLoss, EmbeddingLoss


@dataclass
class FitParts:
    """What `fit` trains and on what. `step` holds what the training step calls (under DDP and/or torch.compile,
    wrappers around `model` / `loss_fn`); validation, prototypes and checkpoints use the plain `model` and
    `loss_fn`, and `step.ema`'s average of them when there is one."""

    step: StepParts
    model: nn.Module
    loss_fn: EmbeddingLoss
    train: ImageSet
    sampler: Any  # RandomBatchSampler | PKBatchSampler | ShardedBatchSampler
    val: ImageSet | None = None
    pairs: PairSet | None = None
    scoring: str = "cosine"
    flip_tta: bool = True
    dist: DistContext = field(default_factory=DistContext)  # rank 0 alone validates, logs and writes files
    bins: list[ValBin] = field(default_factory=list)  # data.val_bins, scored every validation (rank 0)


def build_parts(
    cfg: Config,
    model: nn.Module,
    loss_fn: CombinedLoss,
    data: tuple[ImageSet, ImageSet | None, PairSet | None],
    ctx: DistContext,
    device: torch.device,
    resume: dict[str, Any] | None,
    log: Log,
    bins: list[ValBin] | None = None,
) -> FitParts:
    """The run's parts around a freshly built `model` and `loss_fn`, for the (train, val, pairs) `data`; `resume`
    is the checkpoint being resumed (None for a new run): weights, optimiser, schedule, weight average, loss
    scale and the global random state come back from it. `bins` are the decoded data.val_bins packs."""
    t, o = cfg.train, cfg.optim
    train, val, pairs = data
    cl = use_channels_last(t.channels_last, device)
    model = model.to(device, memory_format=torch.channels_last if cl else torch.preserve_format)
    loss_fn = loss_fn.to(device)
    optimizer = build_optimizer(model, loss_fn, o.name, o.lr, o.weight_decay, o.momentum, o.nesterov, o.loss_lr)
    keep_own_shard_state(optimizer, loss_fn)  # Partial FC over N ranks: a checkpoint's optimiser state is rank 0's
    sampler = make_sampler(cfg, train, loss_fn)
    if ctx.enabled:
        sampler = ShardedBatchSampler(sampler, ctx.rank, ctx.world_size)
    steps = len(sampler) if not t.max_steps_per_epoch else min(len(sampler), t.max_steps_per_epoch)
    schedule = LRSchedule(
        o.lr, t.epochs, steps, o.schedule, o.warmup_epochs, o.min_lr, o.step_size, o.gamma, o.patience
    )
    if resume is not None:  # with a weight average, "model" / "loss" hold the average (engine/ema.py)
        model_state, loss_state = optimiser_weights(resume)
        model.load_state_dict(model_state)
        loss_fn.load_state_dict(loss_state)
        optimizer.load_state_dict(resume["optimizer"])
        schedule.load_state_dict(resume.get("schedule", {}))
        set_rng_state(resume["rng"])
    elif t.init_from:
        _init_weights(model, t.init_from, log)
    ema = _weight_average(t.ema, model, loss_fn, resume, log) if ctx.is_main else None  # rank 0 validates
    step = StepParts(
        _step_model(model, ctx, device, t.compile),
        GatherLoss(loss_fn) if ctx.enabled or partial_fc_heads(loss_fn) else loss_fn,
        optimizer,
        schedule,
        get_preset(cfg.data.augment),
        _step_options(cfg, device, cl, resume, log),
        ema,
    )
    scoring = resolve_scoring(cfg, loss_fn)
    return FitParts(step, model, loss_fn, train, sampler, val, pairs, scoring, t.flip_tta, ctx, bins or [])


def _step_options(
    cfg: Config, device: torch.device, channels_last: bool, resume: dict[str, Any] | None, log: Log
) -> StepOptions:
    """Precision (with a hint when train.amp does not suit this CPU), clipping, logging; fp16's loss scale
    continues from the resumed checkpoint."""
    t = cfg.train
    amp = resolve_amp(t.amp, device)
    advice = amp_advice(t.amp, device, cpu_has_bf16())  # None off the CPU
    if advice:
        log(advice)
    opts = StepOptions(device, amp, channels_last, cfg.optim.grad_clip, t.log_every, t.max_steps_per_epoch)
    if opts.loss_scale is not None and resume is not None and "loss_scale" in resume:
        opts.loss_scale.load_state_dict(resume["loss_scale"])
    return opts


def _step_model(model: nn.Module, ctx: DistContext, device: torch.device, compile: bool) -> nn.Module:
    """What the training step calls: DDP around `model` under torchrun, and torch.compile around that if asked."""
    train_model = wrap_model(model, ctx, device)
    if compile:
        import torch._dynamo as dynamo  # only runs that compile pay for importing the compiler

        # where compiling fails (no Triton or C++ compiler, an unsupported op), run that code eagerly, with
        # torch's warning, instead of stopping the run at its first step
        dynamo.config.suppress_errors = True
        train_model = torch.compile(train_model)
    return train_model


def _weight_average(
    decay: float, model: nn.Module, loss_fn: nn.Module, resume: dict[str, Any] | None, log: Log
) -> WeightAverage | None:
    """train.ema: the weight average (None when 0), continued from the resumed checkpoint when that kept one."""
    if not decay:
        return None
    ema = WeightAverage({"model": model, "loss": loss_fn}, decay)
    if resume is not None and "ema" in resume:
        ema.load({"model": resume["model"], "loss": resume["loss"]}, resume["ema"])
    elif resume is not None:
        log(f"train.ema={decay}: the resumed checkpoint kept no weight average; it starts from its weights")
    log(f"weight average (EMA, decay {decay}, about {1 / (1 - decay):.0f} steps): validation and best.pt use it")
    return ema


def _init_weights(model: nn.Module, path: str, log: Log) -> None:
    """Start from another run's embedding network (e.g. ArcFace fine-tuning after softmax pre-training).

    Only the backbone and neck are taken; the loss (class centres) starts fresh."""
    source = load_checkpoint(path)["model"]
    own = model.state_dict()
    shapes_differ = [k for k in own if k in source and source[k].shape != own[k].shape]
    if shapes_differ or set(own) != set(source):
        raise CheckpointError(
            f"train.init_from={path}: its network differs from model.* of this config "
            f"(e.g. {(shapes_differ or sorted(set(own) ^ set(source)))[0]}); use the same "
            "backbone, neck and embedding_dim"
        )
    model.load_state_dict(source)
    log(f"initialised the network from {path}")


def init_head(head: nn.Module, path: str, classes: list[str], log: Log) -> None:
    """`train.init_head`: start the loss (a margin head's class centres) from `path`'s, which must have been
    trained on the same `classes` with a head of the same shape: a warm restart of that run, whose network
    `train.init_from` takes. Without it a restart's fresh centres pull the trained embedding apart at first."""
    if not path:
        raise ConfigError(
            "train.init_head=true takes the loss from train.init_from: set train.init_from=CHECKPOINT"
        )
    state = load_checkpoint(path)
    if list(state.get("classes") or []) != list(classes):
        raise CheckpointError(
            f"train.init_head: {path} was trained on other classes ({len(state.get('classes') or [])} against "
            f"this run's {len(classes)}); its class centres do not apply: drop train.init_head=true"
        )
    source, own = state["loss"], head.state_dict()
    differ = sorted(set(own) ^ set(source)) or [k for k in own if source[k].shape != own[k].shape]
    if differ:
        raise CheckpointError(
            f"train.init_head: the loss of {path} differs from loss.* of this config (e.g. {differ[0]}); "
            "use the same loss and embedding_dim, or drop train.init_head=true"
        )
    head.load_state_dict(source)
    log(f"initialised the loss's weights from {path}")
