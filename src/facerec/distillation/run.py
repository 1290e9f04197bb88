"""A distillation run (`facerec distill`, `facerec.distill`): a student trained on a teacher's embeddings.

It is a training run of engine/ with three differences:
  * the data obey distillation/data.py's rule (training images only);
  * the teacher's targets of every training image come from the cache (distillation/cache.py), computed once;
  * the loss is `DistillLoss` (distillation/losses.py): the training step's "labels" are the images' indices, by
    which it looks up their teacher targets and real labels.
Everything else (the epoch loop, the step, validation, checkpoints) is engine/'s. The run folder is a training
run's, and best.pt loads like any checkpoint: its "loss" is the student's own head (loss.*), trained on the
labelled images; the learned projection and the teacher's name, fingerprint and cache file go under "distill".
`resume=True` (`facerec distill --resume`) continues RUN/last.pt: weights, projection, optimiser, schedule, random
state and the epoch loop's position, with the same teacher (its fingerprint is checked). Not offered: resuming a
run that keeps a weight average (train.ema), and multi-process (torchrun) runs. The training accuracy is not
counted (the step's labels are image indices); validation accuracy and AUC are.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from facerec.config import Config, apply_overrides, config_from_dict, config_to_dict, save_config
from facerec.distillation.cache import TeacherTargets, teacher_targets
from facerec.distillation.data import DistillData, load_distill_data
from facerec.distillation.losses import DistillLoss
from facerec.distillation.online import OnlineTeacher
from facerec.distillation.protocol import Teacher
from facerec.distillation.teachers import ModelTeacher, make_teacher
from facerec.distillation.warm import warm_projection
from facerec.engine.build import build_loss_fn, build_model, resolve_device
from facerec.engine.checkpoint import CheckpointError, load_checkpoint
from facerec.engine.data import images_on_gpu
from facerec.engine.distributed import DistContext
from facerec.engine.fit import FitHooks, FitOptions, fit
from facerec.engine.fit_state import FitState
from facerec.engine.log import Log, Logger, echo
from facerec.engine.parts import FitParts, build_parts, init_head
from facerec.engine.progress import MetricsLog
from facerec.engine.run import finish_best
from facerec.engine.run_dir import StopFlag, check_writable, removed_if_left_empty
from facerec.engine.validate import prototypes_for
from facerec.errors import ConfigError
from facerec.losses.base import CombinedLoss
from facerec.models.embedder import count_parameters

HEAD_PREFIX = "label_loss."  # DistillLoss's own-loss submodule in its state dict


def distill(
    cfg: Config, run_dir: str | Path, teacher: Teacher | None = None, log: Log = echo, resume: bool = False
) -> FitState:
    """Train a student of `cfg` on `teacher` (else the one `cfg.distill.teacher` names) into `run_dir`; `resume`
    continues RUN/last.pt (module notes). A run that fails before writing anything (refused data, a missing
    teacher) leaves no run folder behind."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    with removed_if_left_empty(Path(run_dir)):
        return _distill(cfg, Path(run_dir), teacher, resolve_device(cfg.train.device), log, resume)


def resume_config(run_dir: str | Path, overrides: list[str]) -> Config:
    """The config of the distillation run being resumed (RUN/last.pt's), `key=value` overrides on top."""
    return apply_overrides(config_from_dict(_last_checkpoint(Path(run_dir))["config"]), overrides)


def _last_checkpoint(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "last.pt"
    if not path.is_file():
        raise CheckpointError(f"--resume: no checkpoint at {path}; start the run without --resume")
    state = load_checkpoint(path)
    if "distill" not in state:
        raise CheckpointError(
            f"{path} is a `facerec train` run's checkpoint: continue it with facerec train --resume"
        )
    return state


def _resumed_parts(state: dict[str, Any], loss: DistillLoss, teacher: Teacher, ema: float) -> dict[str, Any]:
    """A distillation checkpoint in the form build_parts resumes from: the step's whole loss (the student's head
    under its prefix, the projection) as "loss"; ConfigError for another teacher or a weight average."""
    if state["distill"].get("fingerprint") != teacher.fingerprint:
        raise ConfigError(
            f"--resume: the teacher is not the one this run started with ({state['distill'].get('teacher')}, "
            f"fingerprint {str(state['distill'].get('fingerprint'))[:12]}); give the same teacher and options"
        )
    if ema:
        raise ConfigError("--resume is not offered for a distillation run with train.ema; start it again")
    whole = dict(state["distill"]["state"])
    if loss.label_loss is not None:
        whole.update({HEAD_PREFIX + k: v for k, v in state["loss"].items()})
    return {**state, "loss": whole}


def _distill(
    cfg: Config, run_dir: Path, teacher: Teacher | None, device: torch.device, log: Log, resume: bool
) -> FitState:
    d, t = cfg.distill, cfg.train
    resumed = _last_checkpoint(run_dir) if resume else None
    if resumed is not None:
        log(f"resuming after epoch {resumed['epoch']} from {run_dir}")
    check_writable(run_dir)
    teacher = teacher if teacher is not None else make_teacher(d.teacher, d, str(device), cfg.data.align_template)
    online = _online_teacher(teacher, d.teacher_view)
    torch.manual_seed(t.seed)
    data = load_distill_data(cfg, log)
    head = build_loss_fn(cfg, len(data.train.classes)).to(device)
    if t.init_head and resumed is None:  # before the teacher's cache: a wrong checkpoint fails in seconds
        init_head(head, t.init_from, data.train.classes, log)
    targets = teacher_targets(teacher, data.train.paths, d.cache_dir or None, d.teacher_batch, log)
    common = float((torch.from_numpy(targets.mean) ** 2).sum())
    log(
        f"teacher {teacher.name}: {teacher.embedding_dim}-d; mean cosine between its training embeddings "
        f"{common:.2f} (distill.center={d.center} subtracts their mean)"
    )
    loss = _distill_loss(cfg, data, targets, teacher, head, online is not None, log)
    train = images_on_gpu(data.train, device, log) if device.type == "cuda" else data.train
    val = data.val if loss.label_loss is not None and head.has_logits else None
    if data.val is not None and val is None:
        log("no validation accuracy: the student's own loss is off or has no classifier (val AUC still runs)")
    resumed = _resumed_parts(resumed, loss, teacher, t.ema) if resumed is not None else None
    parts = build_parts(cfg, build_model(cfg), loss, (train, val, data.pairs), DistContext(), device, resumed, log)
    # the step sees image indices as labels; validation and checkpoints see the student's own head
    parts.train, parts.loss_fn = dataclasses.replace(train, labels=torch.arange(len(train))), head
    if t.init_head and resumed is None:  # the restart's projection too (distillation/warm.py)
        warm = (loss, t.init_from, teacher.fingerprint, parts.model, train.images, targets.targets(d.center), log)
        warm_projection(*warm, device=device, seed=t.seed)
        if parts.step.ema is not None:
            parts.step.ema.load({"loss": loss.state_dict()}, parts.step.ema.counters())
    if online is not None:
        parts.step.model = OnlineTeacher(parts.step.model, online.to(device), teacher.image_size)
    options = FitOptions(
        t.epochs, run_dir, t.seed, t.best_metric, t.eval_every, t.early_stop, t.time_limit_min * 60
    )
    logger = Logger(log, MetricsLog(run_dir))
    _write_run_files(cfg, parts, data, teacher, targets, run_dir, logger, resumed is None)
    t0 = time.time()
    with StopFlag(logger) as flag:
        hooks = FitHooks(lambda: _checkpoint_extra(cfg, parts, data, teacher, targets), logger, lambda: flag.stop)
        start = FitState.from_state_dict(resumed["fit_state"]) if resumed is not None else FitState()
        state = fit(parts=parts, options=options, hooks=hooks, state=start)
    if state.epoch >= t.epochs or not flag.stop:
        _finalise(parts, data, options, state, time.time() - t0, logger)
    logger.close()
    return state


def cache_teacher(cfg: Config, teacher: Teacher | None = None, log: Log = echo) -> TeacherTargets:
    """Only compute (or find) the teacher's cached embeddings of the run's training images, e.g. a slow teacher's
    in the background before the runs that use them (`facerec distill --cache-only`)."""
    d = cfg.distill
    teacher = (
        teacher
        if teacher is not None
        else make_teacher(d.teacher, d, str(resolve_device(cfg.train.device)), cfg.data.align_template)
    )
    data = load_distill_data(cfg, log)
    return teacher_targets(teacher, data.train.paths, d.cache_dir or None, d.teacher_batch, log)


def _online_teacher(teacher: Teacher, view: str) -> torch.nn.Module | None:
    """The teacher's network for teacher_view=augmented (None for "clean"); ConfigError where it has none."""
    if view == "clean":
        return None
    network = teacher.network() if isinstance(teacher, ModelTeacher) else None
    if network is not None and teacher.template != teacher.source:
        raise ConfigError(
            f"distill.teacher_view=augmented: {teacher.name} was trained on {teacher.template}-framed crops, "
            f"these are {teacher.source}-framed; use distill.teacher_view=clean (the cached crops are re-framed)"
        )
    if network is None:
        raise ConfigError(
            f"distill.teacher_view=augmented needs a facerec PyTorch teacher (.pt); {teacher.name} runs outside "
            "PyTorch: use distill.teacher_view=clean (its embeddings are cached once)"
        )
    return network


def _distill_loss(
    cfg: Config,
    data: DistillData,
    targets: TeacherTargets,
    teacher: Teacher,
    head: CombinedLoss,
    online: bool,
    log: Log,
) -> DistillLoss:
    d = cfg.distill
    labelled = data.labelled > 0 and d.weight_labels > 0
    if not labelled and not (d.weight_embedding or d.weight_relational):
        raise ConfigError(
            "nothing to train on: distill.weight_embedding and distill.weight_relational are 0 and "
            + ("distill.weight_labels is 0" if data.labelled else "the images have no labels")
        )
    n_unlabelled = len(data.train) - data.labelled
    if n_unlabelled and (cfg.data.sampler == "pk" or (labelled and head.needs_pk)):
        raise ConfigError(
            f"P x K batches need an identity on every image, and {n_unlabelled} images have none: use "
            "data.sampler=auto with a loss that does not need positives in the batch (a margin head: cosface...)"
        )
    log(
        f"distill: {len(data.train)} images ({data.labelled} labelled, {n_unlabelled} unlabelled); weights "
        f"embedding {d.weight_embedding}, relational {d.weight_relational}, "
        f"labels {d.weight_labels if labelled else 0}"
    )
    mean = torch.from_numpy(targets.mean).float() if d.center else None
    return DistillLoss(
        None if online else targets.targets(d.center),
        data.train.labels,
        cfg.model.embedding_dim,
        teacher.embedding_dim,
        head if labelled else None,
        (d.weight_embedding, d.weight_relational, d.weight_labels),
        mean,
    )


def _write_run_files(
    cfg: Config,
    parts: FitParts,
    data: DistillData,
    teacher: Teacher,
    targets: TeacherTargets,
    run_dir: Path,
    log: Logger,
    fresh: bool = True,
) -> None:
    """RUN/config.yaml, the model summary and (`fresh`: not resumed) the "start" record."""
    save_config(cfg, run_dir / "config.yaml")
    (run_dir / "model_summary.txt").write_text(f"{parts.model}\n\nparameters: {count_parameters(parts.model):,}\n")
    if not fresh:
        return
    log(
        event="start",
        device=str(parts.step.opts.device),
        num_params=count_parameters(parts.model),
        num_classes=len(data.train.classes),
        num_train_images=len(data.train),
        num_labelled=data.labelled,
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        scoring=parts.scoring,
        sampler=type(parts.sampler).__name__,
        teacher=teacher.name,
        teacher_fingerprint=teacher.fingerprint,
        teacher_cache=str(targets.path),
        teacher_computed=targets.computed,
    )


def _checkpoint_extra(
    cfg: Config, parts: FitParts, data: DistillData, teacher: Teacher, targets: TeacherTargets
) -> dict[str, Any]:
    """What every checkpoint holds besides the fit's position: a training checkpoint's entries, with the student's
    own head as "loss" (the weight average's, when the run keeps one) and the distillation's parts under
    "distill"."""
    step = parts.step
    model = step.ema.state_dict("model") if step.ema is not None else parts.model.state_dict()
    both = step.ema.state_dict("loss") if step.ema is not None else step.loss_fn.state_dict()
    head = {k[len(HEAD_PREFIX) :]: v for k, v in both.items() if k.startswith(HEAD_PREFIX)}
    return {
        "config": config_to_dict(cfg),
        "classes": data.train.classes,
        "model": model,
        "loss": head or parts.loss_fn.state_dict(),  # a head the run did not train (no labels) is kept as built
        "distill": {
            "state": {k: v for k, v in both.items() if not k.startswith(HEAD_PREFIX)},
            "teacher": teacher.name,
            "fingerprint": teacher.fingerprint,
            "cache": str(targets.path),
        },
        "optimizer": step.optimizer.state_dict(),
        "schedule": step.schedule.state_dict(),
        "scoring": parts.scoring,
    }


def _finalise(
    parts: FitParts, data: DistillData, options: FitOptions, state: FitState, seconds: float, log: Logger
) -> None:
    """best.pt gets what inference needs: the val threshold and the class means of the labelled training
    images (closed-set matching by "mean"; a head without a classifier has no other)."""
    best = load_checkpoint(options.run_dir / "best.pt")
    parts.model.load_state_dict(best["model"])
    parts.loss_fn.load_state_dict(best["loss"])
    protos = None
    if data.labelled:
        keep = data.train.labels >= 0
        labelled = dataclasses.replace(data.train, images=data.train.images[keep], labels=data.train.labels[keep])
        protos = prototypes_for(dataclasses.replace(parts, train=labelled), 1_000_000, with_classifier=True)
    finish_best(best, protos, options, state, seconds, log)
