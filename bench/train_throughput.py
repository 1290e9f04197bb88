"""Training images/s: a typical student pipeline against facerec's, same model, batch size, loss and device.

student  torchvision ImageFolder + PIL decode + per-image transforms (flip, ToTensor, Normalize) in DataLoader
         workers; fp32, NCHW; `loss.item()` every step, as the starter notebooks' progress bars do.
facerec  the training images decoded once into a uint8 tensor (a pack, memory-mapped, or the decoded-image cache),
         held on the GPU when they fit, batches by indexing (facerec.engine.data.epoch_batches), batched
         augmentation on the device ("standard" preset), channels_last where the trainer uses it, bf16 autocast on
         CUDA (--amp fp16: fp16 with loss scaling, which lets cuDNN run the BatchNorms), fused optimiser; the step
         is facerec.engine.train.train_one_epoch: what `facerec train` runs.
         --compile adds a column: the same under torch.compile (train.compile=true); the ratio uses the best.
Both train FaceEmbedder(MODEL) with the softmax loss and SGD (momentum 0.9); `--warmup` steps are run first and
not timed. The one-off decode of the dataset is reported separately (it is paid once, not every epoch).
On CUDA the rate is wall-clock images/s, with --workers DataLoader workers (default: all cores). On CPU the default
is one torch thread and no workers (decoding in the training process, where it competes for the same cores anyway),
and the rate that counts is images per CPU-second of the process: per core, and not distorted by other processes
competing for the cores. Wall-clock rates are printed beside it.

    python bench/train_throughput.py [--models resnet34,resnet18,facenet_s] [--steps 10] [--batch-size 128]
                                     [--compile MODELS|all] [--device cuda] [--amp auto|bf16|fp16|off]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os

import torch
from _common import Timer, data_root, decoded_images, device_from, hardware, sync, train_dir
from torch.utils.data import DataLoader
from torchvision import transforms as T
from torchvision.datasets import ImageFolder

from facerec.config import Config, apply_overrides, load_config, recipe_path
from facerec.data.augment import get_preset
from facerec.data.memory import ImageSet
from facerec.data.sampler import RandomBatchSampler
from facerec.engine.build import build_loss_fn, build_model, resolve_amp, use_channels_last
from facerec.engine.data import epoch_batches, images_on_gpu
from facerec.engine.optim import build_optimizer
from facerec.engine.schedule import LRSchedule
from facerec.engine.train import StepOptions, StepParts, train_one_epoch
from facerec.losses.base import build_combined_loss
from facerec.models.embedder import FaceEmbedder


def _parts(
    recipe: Config | None, model_name: str, classes: int, size: int, device: torch.device, channels_last: bool
):
    """Model, loss and optimiser, the same for both sides: `recipe`'s model and loss (--recipe), else 256-d +
    softmax."""
    torch.manual_seed(0)
    if recipe is not None:
        cfg = apply_overrides(recipe, [f"model.backbone={model_name}", f"data.image_size={size}"])
        model, loss = build_model(cfg), build_loss_fn(cfg, classes)
    else:
        model = FaceEmbedder(model_name, 256, image_size=size)
        loss = build_combined_loss([("softmax", 1.0, {})], embedding_dim=256, num_classes=classes)
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    loss = loss.to(device)
    return model, loss, build_optimizer(model, loss, "sgd", 0.01, 5e-4)


def student(args: argparse.Namespace, model_name: str, device: torch.device) -> tuple[float, float]:
    """images/s of the ImageFolder + DataLoader + fp32 loop."""
    tf = T.Compose(
        [
            T.Resize((args.image_size, args.image_size)),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize([0.5] * 3, [0.5] * 3),
        ]
    )
    data = ImageFolder(str(train_dir(data_root(args.data))), transform=tf)
    loader = DataLoader(
        data,
        args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        drop_last=True,
        pin_memory=device.type == "cuda",
    )
    model, loss_fn, opt = _parts(
        args.recipe_cfg, model_name, len(data.classes), args.image_size, device, channels_last=False
    )
    model.train()

    def epochs():  # epoch after epoch, as a training script's loop does (workers restart each epoch)
        while True:
            yield from loader

    batches = epochs()

    def step() -> float:
        x, y = next(batches)
        x, y = x.to(device), y.to(device)
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(args.warmup):
        step()
    sync(device)
    with Timer() as t:
        for _ in range(args.steps):
            step()  # ends with .item(): the device has finished
    return t.rates(args.steps * args.batch_size)


def ours(
    args: argparse.Namespace, model_name: str, device: torch.device, images: ImageSet, compile: bool = False
) -> tuple[float, float]:
    """images/s of facerec's training step on the decoded uint8 tensor, batches as `facerec train` makes them."""
    cl = use_channels_last("auto", device)
    model, loss_fn, opt = _parts(args.recipe_cfg, model_name, len(images.classes), args.image_size, device, cl)
    train_model = torch.compile(model) if compile else model
    gen = torch.Generator().manual_seed(0)
    aug_gen = torch.Generator(device=device).manual_seed(0)
    sampler = RandomBatchSampler(len(images), args.batch_size)

    def epochs():
        while True:
            yield from epoch_batches(images, sampler, gen, device)

    stream = epochs()
    schedule = LRSchedule(0.01, 1, args.warmup + args.steps, "constant")

    opts = StepOptions(device, amp=resolve_amp(args.amp, device), channels_last=cl, log_every=10**9)
    preset = get_preset(args.recipe_cfg.data.augment if args.recipe_cfg is not None else "standard")

    def run(n: int) -> None:  # one StepOptions throughout: fp16's loss scale carries over from the warm-up
        parts = StepParts(train_model, loss_fn, opt, schedule, preset, dataclasses.replace(opts, max_steps=n))
        train_one_epoch(parts, stream, aug_gen, steps=n)

    if args.warmup:
        run(args.warmup)  # with --compile, the compilation happens here
    sync(device)
    with Timer() as t:
        run(args.steps)  # reads its sums at the end: the device has finished
    return t.rates(args.steps * args.batch_size)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="HW2P2 root or identity folders (default $FACEREC_DATA, ../shared/data/facehw)")
    p.add_argument("--pack", help="a pack made by `facerec pack` (default: the decoded-image cache)")
    p.add_argument("--models", default="resnet34,resnet18,facenet_s")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--workers", type=int, help="student DataLoader workers (default: 0 on CPU, all cores on CUDA)")
    p.add_argument("--threads", type=int, help="torch threads (default: 1 on CPU, torch's default on CUDA)")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"], default="auto", help="facerec's train.amp")
    p.add_argument(
        "--recipe",
        help="take embedding size, dropout, neck, loss and augmentation from this recipe "
        "(e.g. gpu_resnet34; default: 256-d, softmax, standard augmentation)",
    )
    p.add_argument(
        "--compile",
        default="",
        metavar="MODELS",
        help="also time facerec under torch.compile for these models (comma-separated, or all)",
    )
    args = p.parse_args()
    args.recipe_cfg = load_config(recipe_path(args.recipe)) if args.recipe else None
    device = device_from(args.device)
    cpu = device.type == "cpu"
    if args.workers is None:
        args.workers = 0 if cpu else os.cpu_count() or 2
    if args.threads or cpu:
        torch.set_num_threads(args.threads or 1)
    per_cpu = cpu and args.workers == 0  # images per CPU-second is complete only without worker processes
    if device.type == "cuda":  # as `facerec train` does
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    images, source = decoded_images(data_root(args.data), args.image_size, args.pack)
    if device.type == "cuda":
        images = images_on_gpu(images, device, log=lambda m: None)
    print(f"device {device}: {hardware(device)}")
    print(
        f"facerec images: {source}; batch {args.batch_size}, {args.steps} timed steps after {args.warmup}; "
        f"student DataLoader workers {args.workers}; facerec channels_last {use_channels_last('auto', device)}, "
        f"autocast {resolve_amp(args.amp, device)}"
    )
    unit = "img/CPU-s" if per_cpu else "img/s"
    k = 0 if per_cpu else 1
    compiled = set(args.models.split(",")) if args.compile == "all" else set(filter(None, args.compile.split(",")))
    extra = f" {'+compile ' + unit:>16}" if compiled else ""
    print(f"{'model':<10} {'student ' + unit:>16} {'facerec ' + unit:>16}{extra} {'ratio':>7}   (wall img/s)")
    ratios = []
    for name in args.models.split(","):
        s = student(args, name, device)
        o = ours(args, name, device, images)
        c = ours(args, name, device, images, compile=True) if name in compiled else None
        best = max(o, c or o, key=lambda r: r[k])
        ratios.append(best[k] / s[k])
        col = f" {c[k]:>16.1f}" if c else (f" {'-':>16}" if compiled else "")
        wall = f"{s[1]:.1f}, {o[1]:.1f}" + (f", {c[1]:.1f}" if c else "")
        print(f"{name:<10} {s[k]:>16.1f} {o[k]:>16.1f}{col} {ratios[-1]:>6.2f}x   ({wall})", flush=True)
    gmean = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    print(f"ratio facerec / student, {unit} (geometric mean over {len(ratios)} models): {gmean:.2f}x")


if __name__ == "__main__":
    main()
