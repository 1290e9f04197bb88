"""Where a training step's time goes: facerec's step (as bench/train_throughput.py times it) under torch.profiler.

Prints the kernels with the most device time, the share of the step's wall time the device was busy (below 100%:
launch or host overhead; near 100%: the kernels themselves are the limit), and the model's arithmetic rate from
its FLOP count (torch.utils.flop_counter: forward + backward per image).

    python bench/profile_step.py [--model resnet34] [--batch-size 256] [--steps 5] [--device cuda] [--compile]
                                 [--amp auto|bf16|fp16|off]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
from _common import device_from, hardware, sync
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from facerec.data.augment import get_preset
from facerec.engine.build import resolve_amp, use_channels_last
from facerec.engine.optim import build_optimizer
from facerec.engine.schedule import LRSchedule
from facerec.engine.train import StepOptions, StepParts, train_one_epoch
from facerec.losses.base import build_combined_loss
from facerec.models.embedder import FaceEmbedder


def train_flops_per_image(model_name: str, size: int) -> float:
    model = FaceEmbedder(model_name, 256, image_size=size)
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(2, 3, size, size)).sum().backward()
    return counter.get_total_flops() / 2


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet34")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--device", default="auto")
    p.add_argument("--rows", type=int, default=15)
    p.add_argument("--compile", action="store_true", help="profile the step under torch.compile (train.compile)")
    p.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"], default="auto", help="train.amp")
    args = p.parse_args()
    device = device_from(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    print(f"device {device}: {hardware(device)}")
    cl = use_channels_last("auto", device)
    torch.manual_seed(0)
    model = FaceEmbedder(args.model, 256, image_size=args.image_size).to(
        device, memory_format=torch.channels_last if cl else torch.contiguous_format
    )
    loss_fn = build_combined_loss([("softmax", 1.0, {})], embedding_dim=256, num_classes=args.classes).to(device)
    opt = build_optimizer(model, loss_fn, "sgd", 0.01, 5e-4)
    train_model = torch.compile(model) if args.compile else model  # compiled during the warm-up steps
    n = args.batch_size * 4
    images = torch.randint(0, 256, (n, args.image_size, args.image_size, 3), dtype=torch.uint8, device=device)
    labels = torch.randint(0, args.classes, (n,), device=device)

    def stream():
        while True:
            for i in range(0, n, args.batch_size):
                yield images[i : i + args.batch_size], labels[i : i + args.batch_size]

    batches = stream()
    schedule = LRSchedule(0.01, 1, 10**6, "constant")
    aug_gen = torch.Generator(device=device).manual_seed(0)

    opts = StepOptions(device, amp=resolve_amp(args.amp, device), channels_last=cl, log_every=10**9)

    def run(steps: int) -> None:  # one StepOptions throughout: fp16's loss scale carries over from the warm-up
        step_opts = dataclasses.replace(opts, max_steps=steps)
        parts = StepParts(train_model, loss_fn, opt, schedule, get_preset("standard"), step_opts)
        train_one_epoch(parts, batches, aug_gen, steps=steps)

    run(args.warmup)
    sync(device)
    t0 = time.perf_counter()
    run(args.steps)
    wall = (time.perf_counter() - t0) / args.steps
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        run(args.steps)
    key = "device_time_total" if cuda else "cpu_time_total"
    events = prof.key_averages()
    try:
        print(events.table(sort_by=key, row_limit=args.rows, max_name_column_width=60))
    except (AttributeError, KeyError):  # older torch: CUDA-named columns
        print(events.table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=60))
    flops = train_flops_per_image(args.model, args.image_size)
    rate = args.batch_size / wall
    mode = f"{'compiled' if args.compile else 'eager'} {resolve_amp(args.amp, device)}"
    print(
        f"{args.model} {mode}, batch {args.batch_size}: {wall * 1e3:.1f} ms/step, {rate:,.0f} img/s unprofiled; "
        f"{flops / 1e9:.1f} GFLOP/img (train) -> {flops * rate / 1e12:.0f} TFLOP/s"
    )
    if cuda:
        from torch.autograd import DeviceType

        own = [
            getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
            for e in events
            if e.device_type == DeviceType.CPU
        ]  # kernel time counted once, at its op
        busy = sum(own) / 1e6 / args.steps  # us -> s per step
        print(f"device busy {busy * 1e3:.1f} ms per step = {busy / wall:.0%} of the unprofiled step")


if __name__ == "__main__":
    main()
