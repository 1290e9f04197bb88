"""Config -> objects: the model, the loss, the data, and a whole training run. The CLI and the API call these."""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from facerec.config import Config, config_from_dict, config_to_dict, save_config
from facerec.data.augment import get_preset
from facerec.data.folder import DataError
from facerec.data.holdout import split_validation, write_pair_file
from facerec.data.hw2p2 import Hw2p2Layout, detect_layout
from facerec.data.memory import ImageSet, load_identity_folders
from facerec.data.pack import image_root, is_pack, open_pack, read_meta, subset
from facerec.data.pairset import PairSet, load_pairset
from facerec.data.sampler import PKBatchSampler, RandomBatchSampler
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
from facerec.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, set_rng_state
from facerec.engine.distributed import (
    DistContext,
    GatherLoss,
    ShardedBatchSampler,
    init_distributed,
    shutdown,
    wrap_model,
)
from facerec.engine.ema import WeightAverage, optimiser_weights
from facerec.engine.fit import FitParts, FitState, fit, load_fit_state, prototypes_for
from facerec.engine.progress import MetricsLog
from facerec.engine.schedule import LRSchedule
from facerec.engine.train import StepOptions, build_optimizer
from facerec.losses.base import CombinedLoss
from facerec.models.embedder import count_parameters

Log = Callable[[str], None]


def load_data(cfg: Config, log: Log = print) -> tuple[Hw2p2Layout, ImageSet, ImageSet | None, PairSet | None]:
    """Detect the dataset layout, check the pair file (before any training), decode train / val / pair images."""
    d = cfg.data
    if not d.root:
        raise DataError("no dataset given: pass --data DIR (an HW2P2 folder or a folder of identity folders)")
    packed = is_pack(d.root)
    layout = _pack_layout(d.root, d.pairs, log) if packed else detect_layout(d.root)
    log(f"dataset {layout.root} ({layout.kind} layout): train {layout.train}")
    pairs_file = Path(d.pairs) if d.pairs else layout.pairs_val
    pairs = None
    if pairs_file is not None and d.holdout:
        log(f"data.holdout={d.holdout}: val AUC on pairs of held-out identities, not on {pairs_file}")
    elif pairs_file is not None:
        pairs = load_pairset(pairs_file, layout.root, layout.verification, d.image_size, d.num_workers)
        log(f"val pairs: {len(pairs)} from {pairs_file} ({pairs.images.shape[0]} images)")
    train = load_train_images(cfg, layout.train, log)
    log(f"train: {len(train)} images of {len(train.classes)} identities")
    val_dir = Path(d.val) if d.val else layout.val
    val = None
    if d.holdout or d.val_per_class:
        n_classes, n_images = len(train.classes), len(train)
        train, val, held_pairs = split_validation(
            train, d.holdout, d.holdout_pairs, d.val_per_class, cfg.train.seed, train_image_root(cfg, layout.train)
        )
        if held_pairs is not None:
            pairs = held_pairs
            n_same = int(pairs.labels.sum()) if pairs.labels is not None else 0
            n_held = n_images - len(train) - (len(val) if val is not None else 0)
            log(
                f"held out {n_classes - len(train.classes)} identities ({n_held} images) for verification: "
                f"{len(pairs)} val pairs ({n_same} same)"
            )
        if val is not None:
            if val_dir is not None:
                log(
                    f"data.val_per_class={d.val_per_class}: val accuracy on images held out of training, not on "
                    f"{val_dir}"
                )
            log(f"val: {len(val)} images held out of training ({d.val_per_class} per identity)")
        log(f"train: {len(train)} of {n_images} images, {len(train.classes)} identities")
    if val is None and val_dir is not None and not d.val_per_class:
        val = load_identity_folders(val_dir, d.image_size, train.classes, d.num_workers, d.cache, log)
        log(f"val: {len(val)} images")
    if pairs is None and val is None:
        log(
            "no validation data: best.pt follows the last epoch. Hold some out with data.holdout=0.1 "
            "(identities, for val AUC) and/or data.val_per_class=2 (images, for val accuracy)"
        )
    return layout, train, val, pairs


def load_train_images(cfg: Config, train_dir: Path, log: Log = print) -> ImageSet:
    """The training images as training reads them: the pack at data.root, or the identity folders of `train_dir`
    (the training split of data.root's layout), limited by data.max_per_class / data.max_classes."""
    d = cfg.data
    if is_pack(d.root):
        return subset(open_pack(d.root, d.image_size, log), d.max_per_class, d.max_classes)
    return load_identity_folders(
        train_dir, d.image_size, None, d.num_workers, d.cache, log, d.max_per_class, d.max_classes
    )


def train_image_root(cfg: Config, train_dir: Path) -> Path:
    """The folder the training images' files live in (a pack's source split), which held-out pair files are
    written relative to."""
    return image_root(cfg.data.root) if is_pack(cfg.data.root) else train_dir


def _pack_layout(root: str, pairs: str, log: Log) -> Hw2p2Layout:
    """A pack is the training split. Val images and pairs: data.val / data.pairs, else those of the dataset the
    pack was made from (meta.json "source"), when that is still on disk."""
    source = read_meta(root).get("source")
    if source and Path(source).is_dir():
        try:
            layout = detect_layout(source)
            log(f"pack {root} was made from {source}: its val split and pair file are used unless given")
            return dataclasses.replace(layout, train=Path(root), kind=f"pack of {layout.kind}")
        except DataError:
            pass
    base = Path(pairs).parent if pairs else Path(root)  # pair-file paths are relative to the pair file's folder
    return Hw2p2Layout(base, Path(root), None, None, None, None, None, None, None, kind="pack")


def make_sampler(cfg: Config, train: ImageSet, loss_fn: CombinedLoss) -> RandomBatchSampler | PKBatchSampler:
    kind = cfg.data.sampler
    if kind == "auto":
        kind = "pk" if loss_fn.needs_pk else "random"
    if kind == "pk":
        return PKBatchSampler(train.labels, cfg.data.p, cfg.data.k)
    if kind == "random":
        return RandomBatchSampler(len(train), cfg.data.batch_size)
    raise ValueError(f"unknown data.sampler {kind!r}; choose one of ['auto', 'pk', 'random']")


class _StopFlag:
    """SIGINT/SIGTERM finish the current step, save a checkpoint and exit (a second Ctrl-C aborts at once)."""

    def __init__(self, install: bool = True) -> None:
        self.stop = False
        self._old: dict[int, Any] = {}
        self._install = install

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM) if self._install else ():
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.stop:
            raise KeyboardInterrupt
        self.stop = True
        print("\nstopping after this step (Ctrl-C again to abort)...", flush=True)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def train(cfg: Config, run_dir: str | Path, resume: str | bool = False, log: Log = print) -> FitState:
    """A whole run: data, model, loss, optimiser, then `fit`. `resume=True` continues RUN/last.pt.

    Under `torchrun --nproc_per_node=N` every process calls this and they train one model together
    (engine/distributed.py); rank 0 alone logs and writes the run folder.
    """
    t = cfg.train
    if t.threads:
        torch.set_num_threads(t.threads)
    ctx, device = init_distributed(resolve_device(t.device))
    try:
        state = _run(cfg, Path(run_dir), resume, log if ctx.is_main else _quiet, ctx, device)
        ctx.barrier()  # nobody leaves while rank 0 still writes best.pt
        return state
    finally:
        shutdown(ctx)


def images_on_gpu(images: ImageSet, device: torch.device, log: Log) -> ImageSet:
    """Keep the uint8 training images on the GPU when they take at most a quarter of its free memory (facehw:
    250 MiB, all of HW2P2 at 64x64: 4.4 GiB): each step's batch is then indexed on the device, with no host gather,
    pinning or copy. Labels stay on the host, where prototypes and samplers use them."""
    size = images.images.numel() * images.images.element_size()
    free, _ = torch.cuda.mem_get_info(device)
    if size > free // 4:
        log(f"training images ({size / 2**20:.0f} MiB) stay in host memory: over 1/4 of the free GPU memory")
        return images
    log(f"training images ({size / 2**20:.0f} MiB) moved to {device}")
    return dataclasses.replace(images, images=images.images.to(device))


def _quiet(message: str) -> None:
    """The log of ranks other than 0."""


def _run(
    cfg: Config, run_dir: Path, resume: str | bool, log: Log, ctx: DistContext, device: torch.device
) -> FitState:
    resume_state = _resume_state(run_dir, resume)
    if resume_state is not None:
        log(f"resuming after epoch {resume_state['epoch']} from {run_dir}")
    if ctx.is_main:
        _check_writable(run_dir)
    t = cfg.train
    if ctx.enabled:
        log(f"distributed: {ctx.world_size} processes on {device.type}, each takes 1/{ctx.world_size} of a batch")
    if device.type == "cuda":  # process-wide switches, set here and not at import
        torch.backends.cudnn.benchmark = True  # one input size throughout: time the conv algorithms once
        torch.backends.cuda.matmul.allow_tf32 = True  # the loss heads run in fp32, outside bf16 autocast
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(t.seed)
    with ctx.main_first():  # rank 0 decodes the images into the shared cache, then the others read it
        layout, train_set, val, pairs = load_data(cfg, log)
    if not ctx.is_main:
        val = pairs = None  # rank 0 alone validates
    if device.type == "cuda":
        train_set = images_on_gpu(train_set, device, log)
    model = build_model(cfg)
    loss_fn = build_loss_fn(cfg, len(train_set.classes))
    cl = use_channels_last(t.channels_last, device)
    model = model.to(device, memory_format=torch.channels_last if cl else torch.preserve_format)
    loss_fn = loss_fn.to(device)
    o = cfg.optim
    optimizer = build_optimizer(model, loss_fn, o.name, o.lr, o.weight_decay, o.momentum, o.nesterov, o.loss_lr)
    sampler = make_sampler(cfg, train_set, loss_fn)
    if ctx.enabled:
        sampler = ShardedBatchSampler(sampler, ctx.rank, ctx.world_size)
    steps = len(sampler) if not t.max_steps_per_epoch else min(len(sampler), t.max_steps_per_epoch)
    schedule = LRSchedule(
        o.lr, t.epochs, steps, o.schedule, o.warmup_epochs, o.min_lr, o.step_size, o.gamma, o.patience
    )
    state = FitState()
    if resume_state is not None:  # with a weight average, "model" / "loss" hold the average (engine/ema.py)
        model_state, loss_state = optimiser_weights(resume_state)
        model.load_state_dict(model_state)
        loss_fn.load_state_dict(loss_state)
        optimizer.load_state_dict(resume_state["optimizer"])
        schedule.load_state_dict(resume_state.get("schedule", {}))
        state = load_fit_state(resume_state["fit_state"])
        set_rng_state(resume_state["rng"])
    elif t.init_from:
        _init_weights(model, t.init_from, log)
    ema = _weight_average(t.ema, model, loss_fn, resume_state, log) if ctx.is_main else None  # rank 0 validates
    amp = resolve_amp(t.amp, device)
    advice = amp_advice(t.amp, device, cpu_has_bf16())  # None off the CPU
    if advice:
        log(advice)
    opts = StepOptions(device, amp, cl, o.grad_clip, t.log_every, t.max_steps_per_epoch)
    if opts.loss_scale is not None and resume_state is not None and "loss_scale" in resume_state:
        opts.loss_scale.load_state_dict(resume_state["loss_scale"])
    train_model = wrap_model(model, ctx, device)
    if t.compile:
        import torch._dynamo as dynamo

        # where compiling fails (no Triton or C++ compiler, an unsupported op), run that code eagerly, with
        # torch's warning, instead of stopping the run at its first step
        dynamo.config.suppress_errors = True
        train_model = torch.compile(train_model)
    parts = FitParts(
        model,
        loss_fn,
        optimizer,
        schedule,
        train_set,
        sampler,
        get_preset(cfg.data.augment),
        opts,
        val,
        pairs,
        resolve_scoring(cfg, loss_fn),
        t.flip_tta,
        train_model=train_model,
        train_loss=GatherLoss(loss_fn) if ctx.enabled else None,
        dist=ctx,
        ema=ema,
    )
    metrics = MetricsLog(run_dir) if ctx.is_main else None
    if ctx.is_main:
        save_config(cfg, run_dir / "config.yaml")
        if cfg.data.holdout and pairs is not None:
            _save_holdout_pairs(pairs, run_dir, train_image_root(cfg, layout.train), log)
        (run_dir / "model_summary.txt").write_text(f"{model}\n\nparameters: {count_parameters(model):,}\n")
    if metrics is not None and resume_state is None:
        metrics.write(
            "start",
            device=str(device),
            num_params=count_parameters(model),
            num_classes=len(train_set.classes),
            num_train_images=len(train_set),
            torch=torch.__version__,
            threads=torch.get_num_threads(),
            cpu_count=os.cpu_count(),
            scoring=parts.scoring,
            sampler=type(sampler).__name__,
            world_size=ctx.world_size,
        )

    def extra() -> dict[str, Any]:
        weights = {"model": model.state_dict(), "loss": loss_fn.state_dict()}
        if ema is not None:  # what evaluation and inference use, then the optimiser's own weights for --resume
            weights = {
                "model": ema.state_dict("model"),
                "loss": ema.state_dict("loss"),
                "ema": ema.counters(),
                "train_model": weights["model"],
                "train_loss": weights["loss"],
            }
        return {
            "config": config_to_dict(cfg),
            "classes": train_set.classes,
            **weights,
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "scoring": parts.scoring,
            **({"loss_scale": opts.loss_scale.state_dict()} if opts.loss_scale is not None else {}),
        }

    t0 = time.time()
    # Several ranks could stop after different steps and leave the others waiting in a collective: under torchrun
    # Ctrl-C simply ends the job, and --resume continues from the last epoch's last.pt.
    with _StopFlag(install=not ctx.enabled) as flag:
        state = fit(
            parts,
            state,
            t.epochs,
            run_dir,
            t.seed,
            extra,
            metrics,
            t.best_metric,
            t.eval_every,
            t.time_limit_min * 60,
            lambda: flag.stop,
            t.early_stop,
        )
    if metrics is not None:
        if state.epoch >= t.epochs or not flag.stop:
            _finalise(run_dir, parts, metrics, state, t.best_metric, time.time() - t0, log)
        metrics.close()
    return state


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


def _finalise(
    run_dir: Path,
    parts: FitParts,
    metrics: MetricsLog,
    state: FitState,
    best_metric: str,
    seconds: float,
    log: Log,
) -> None:
    """Add what inference needs to best.pt: the decision threshold and, for losses without a classifier,
    class prototypes."""
    best = load_checkpoint(run_dir / "best.pt")
    parts.model.load_state_dict(best["model"])  # the plain model: DDP / torch.compile wrap only train_model
    parts.loss_fn.load_state_dict(best["loss"])
    protos = prototypes_for(parts, per_class=1_000_000)
    if protos is not None:
        best["prototypes"] = protos
    thr = best.get("metrics", {}).get("val_threshold")
    if thr is not None:
        best["threshold"] = thr
        best["threshold_source"] = "best-accuracy threshold on the val pairs"
    save_checkpoint({k: v for k, v in best.items() if k not in ("format", "version")}, run_dir / "best.pt")
    best_value = state.best_value if best_metric != "train_loss" or state.best_value is None else -state.best_value
    metrics.write(
        "end", best_epoch=state.best_epoch, best_metric=best_metric, best_value=best_value, total_time_s=seconds
    )
    log(f"done: best {best_metric} {best_value} at epoch {state.best_epoch}; checkpoint {run_dir / 'best.pt'}")


def _weight_average(
    decay: float, model: torch.nn.Module, loss_fn: torch.nn.Module, resume_state: dict[str, Any] | None, log: Log
) -> WeightAverage | None:
    """train.ema: the weight average (None when 0), continued from the resumed checkpoint when that kept one."""
    if not decay:
        return None
    ema = WeightAverage({"model": model, "loss": loss_fn}, decay)
    if resume_state is not None and "ema" in resume_state:
        ema.load({"model": resume_state["model"], "loss": resume_state["loss"]}, resume_state["ema"])
    elif resume_state is not None:
        log(f"train.ema={decay}: the resumed checkpoint kept no weight average; it starts from its weights")
    log(f"weight average (EMA, decay {decay}, about {1 / (1 - decay):.0f} steps): validation and best.pt use it")
    return ema


def _init_weights(model: torch.nn.Module, path: str, log: Log) -> None:
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


def _resume_state(run_dir: Path, resume: str | bool) -> dict[str, Any] | None:
    if not resume:
        return None
    path = Path(resume) if isinstance(resume, str) else Path(run_dir) / "last.pt"
    if not path.exists():
        raise CheckpointError(f"--resume: no checkpoint at {path}; start without --resume")
    return load_checkpoint(path)


def resume_config(run_dir: str | Path, resume: str | bool, overrides: list[str]) -> Config:
    """The config of the run being resumed, with explicit `key=value` overrides on top (e.g. more epochs)."""
    from facerec.config import apply_overrides

    state = _resume_state(Path(run_dir), resume or True)
    return apply_overrides(config_from_dict(state["config"]), overrides)


def _check_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise DataError(f"cannot write to the output folder {run_dir} ({err}); choose another --out") from None
