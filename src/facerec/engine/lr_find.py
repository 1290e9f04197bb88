"""The learning-rate range test (`facerec lr-find`): train a fresh model for a few hundred steps while the learning
rate grows geometrically from `start` to `end`, record the loss, and suggest `optim.lr`.

Each step is `engine.train.train_one_epoch` over one batch (one `train_step`), so the test runs the very step
`facerec train` runs (the config's model, loss, optimiser, augmentation, AMP, gradient clipping, non-finite-step
skipping). The loss is smoothed with a bias-corrected exponential average (the range test of Smith, "Cyclical
Learning Rates for Training Neural Networks", 2017, as fastai runs it); the sweep stops once the smoothed loss
passes `diverge` times its minimum, or a step is not finite. The suggestion is the learning rate where the
smoothed loss was lowest: the peak rate of a warm-up + cosine schedule (Smith's "max_lr"), which is how the
recipes use `optim.lr`. The rate of steepest descent, lower, is reported as the cautious choice. On facehw with
the `cpu` recipe they were 0.087 and 0.014; 4-epoch runs at 0.1 and at 0.0142 reached val AUC 0.943 and 0.863
(README).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from facerec.config import Config
from facerec.data.augment import get_preset
from facerec.data.folder import DataError
from facerec.data.hw2p2 import detect_layout
from facerec.data.pack import is_pack
from facerec.data.recordset import is_recordio
from facerec.engine.build import build_loss_fn, build_model, resolve_amp, resolve_device, use_channels_last
from facerec.engine.data import epoch_batches, load_train_images, make_sampler
from facerec.engine.log import Log, echo
from facerec.engine.optim import build_optimizer
from facerec.engine.train import StepOptions, StepParts, train_one_epoch


@dataclass
class LRFindResult:
    lrs: list[float]  # one per step taken
    losses: list[float]  # each step's loss (NaN for a skipped, non-finite step)
    smoothed: list[float]
    suggestion: float | None  # where the smoothed loss was lowest; None if it never fell or still fell at the end
    steepest: float | None  # where the smoothed loss fell fastest per decade, before its minimum
    stopped_at: float | None  # the learning rate at which the sweep stopped early (diverged), else None


class GeometricSweep:
    """lr_at(i) = start * (end / start) ** (i / (steps - 1)): `steps` rates from `start` to `end`, log-spaced."""

    def __init__(self, start: float, end: float, steps: int) -> None:
        if not (0 < start < end and math.isfinite(end)):
            raise ValueError(f"the learning-rate range must satisfy 0 < start < end, got start={start}, end={end}")
        if steps < 5:
            raise ValueError(f"the range test needs at least 5 steps, got {steps}")
        self.start, self.end, self.steps = start, end, steps

    def lr_at(self, step: int) -> float:
        return self.start * (self.end / self.start) ** (min(step, self.steps - 1) / (self.steps - 1))


class Smoother:
    """Bias-corrected exponential moving average, one loss at a time; a non-finite loss leaves it where it was."""

    def __init__(self, beta: float = 0.9) -> None:
        self.beta, self.avg, self.n = beta, 0.0, 0

    def add(self, loss: float) -> float:
        if math.isfinite(loss):
            self.n += 1
            self.avg = self.beta * self.avg + (1 - self.beta) * loss
        return self.avg / (1 - self.beta**self.n) if self.n else float("nan")


def smooth(losses: list[float], beta: float = 0.9) -> list[float]:
    """The `Smoother`'s value after each loss."""
    smoother = Smoother(beta)
    return [smoother.add(v) for v in losses]


def lowest_loss(lrs: list[float], smoothed: list[float], skip_start: int = 3) -> float | None:
    """The learning rate where `smoothed` is lowest; None when that is within the first `skip_start` + 2 steps
    (the loss never fell) or at the last step (it still fell at the end of the range)."""
    y = np.asarray(smoothed, dtype=float)
    if not np.isfinite(y).any():
        return None
    i = int(np.nanargmin(y))
    return None if i < skip_start + 2 or i == len(y) - 1 else float(lrs[i])


def steepest_descent(lrs: list[float], smoothed: list[float], skip_start: int = 3) -> float | None:
    """The learning rate of the steepest descent of `smoothed` against log10(lr), among the steps before the
    minimum (the first `skip_start` steps are left out: the average is still settling there). None when the loss
    never fell."""
    y = np.asarray(smoothed, dtype=float)
    x = np.log10(np.asarray(lrs, dtype=float))
    if len(y) < skip_start + 3 or not np.isfinite(y).any():
        return None
    stop = int(np.nanargmin(y)) + 1  # up to and including the minimum
    if stop - skip_start < 3:
        return None
    slope = np.gradient(y[skip_start:stop], x[skip_start:stop])
    i = int(np.nanargmin(slope))
    return float(lrs[skip_start + i]) if slope[i] < 0 else None


def _sweep_parts(
    cfg: Config, sweep: GeometricSweep, log: Log
) -> tuple[StepParts, Iterator[tuple[torch.Tensor, torch.Tensor]], int]:
    """What the sweep trains, as `facerec train` would build it from `cfg` (the optimiser starts at the sweep's
    first rate); the training batches, epoch after epoch, as long as the sweep needs; the number of images."""
    t, o, d = cfg.train, cfg.optim, cfg.data
    if not d.root:
        raise DataError("no dataset given: pass --data DIR (an HW2P2 folder, identity folders or a pack)")
    if t.threads:
        torch.set_num_threads(t.threads)
    device = resolve_device(t.device)
    torch.manual_seed(t.seed)
    train_dir = Path(d.root) if is_pack(d.root) or is_recordio(d.root) else detect_layout(d.root).train
    images = load_train_images(cfg, train_dir, log)
    model = build_model(cfg)
    loss_fn = build_loss_fn(cfg, len(images.classes)).to(device)
    cl = use_channels_last(t.channels_last, device)
    model = model.to(device, memory_format=torch.channels_last if cl else torch.preserve_format)
    optimizer = build_optimizer(
        model, loss_fn, o.name, sweep.start, o.weight_decay, o.momentum, o.nesterov, o.loss_lr
    )
    sampler = make_sampler(cfg, images, loss_fn)
    opts = StepOptions(device, resolve_amp(t.amp, device), cl, o.grad_clip, log_every=10**9)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = 0
        while True:
            yield from epoch_batches(images, sampler, torch.Generator().manual_seed(t.seed + epoch), device)
            epoch += 1

    parts = StepParts(model, loss_fn, optimizer, sweep, get_preset(d.augment), opts)
    return parts, batches(), len(images)


def find_lr(
    cfg: Config, start: float = 1e-5, end: float = 10.0, steps: int = 100, diverge: float = 4.0, log: Log = echo
) -> LRFindResult:
    """Run the range test on a fresh model built from `cfg` (data.root must be set). The optimiser's groups keep
    their relative rates (`optim.loss_lr`), as in training."""
    sweep = GeometricSweep(start, end, steps)
    parts, stream, n_images = _sweep_parts(cfg, sweep, log)
    gen = torch.Generator(device=parts.opts.device).manual_seed(cfg.train.seed)
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    smoother = Smoother()
    best, stopped_at = math.inf, None
    parts.loss_fn.on_epoch_start(0)  # e.g. a margin warm-up starts where training starts
    log(f"learning-rate range test: {steps} steps, lr {start:g} to {end:g}, on {n_images} images")
    for i in range(steps):
        result = train_one_epoch(parts, iter([next(stream)]), gen, steps=1, global_step=i, log=log)
        lrs.append(sweep.lr_at(i))
        losses.append(float(result["train_loss"]) if result["steps"] else float("nan"))
        current = smoother.add(losses[-1])
        smoothed.append(current)
        best = min(best, current)
        if not math.isfinite(losses[-1]) or current > diverge * best:
            stopped_at = lrs[-1]
            log(
                f"stopped at lr {stopped_at:.3g}: the loss "
                + ("was not finite" if not math.isfinite(losses[-1]) else f"passed {diverge:g}x its minimum")
            )
            break
        if (i + 1) % 20 == 0:
            log(f"step {i + 1}/{steps}  lr {lrs[-1]:.3g}  loss {current:.4f}")
    return LRFindResult(
        lrs, losses, smoothed, lowest_loss(lrs, smoothed), steepest_descent(lrs, smoothed), stopped_at
    )


def write_outputs(result: LRFindResult, out: str | Path) -> list[Path]:
    """OUT/lr_find.csv (lr, loss, smoothed loss per step) and OUT/lr_find.png (the curve, suggestion marked)."""
    from facerec.outputs.plots import plot_lr_find

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    csv = out / "lr_find.csv"
    rows = [
        f"{lr:.6g},{loss:.6g},{s:.6g}"
        for lr, loss, s in zip(result.lrs, result.losses, result.smoothed, strict=True)
    ]
    csv.write_text("lr,loss,smoothed_loss\n" + "\n".join(rows) + "\n")
    png = out / "lr_find.png"
    plot_lr_find(result.lrs, result.smoothed, result.suggestion, result.steepest, png)
    return [csv, png]
