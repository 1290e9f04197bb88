"""Embeddings/s of FaceEmbedder models from uint8 images, on the CPU and, when there is one, on the GPU.

plain     fp32, NCHW, torch.no_grad: model(to_input(batch)).
facerec   facerec.engine.evaluate.embed, the one path that validation, `facerec evaluate/predict/verify` and the
          API use, with channels_last; flip TTA off here (with it, two forward passes per embedding).
bf16      (CUDA only) the same under bf16 autocast: what embed() would gain from autocast (it does not use it).
Inputs are random uint8 images (speed does not depend on content); decoding is bench/datapath.py's subject.
CPU: one torch thread by default, rate = embeddings per CPU-second of the process (per core, not distorted by
other processes competing for the cores). CUDA: wall-clock embeddings/s.

    python bench/inference.py [--models facenet_s,resnet18,resnet34] [--images 1024] [--gpu-only | --cpu-only]
"""

from __future__ import annotations

import argparse
import copy
import math

import torch
from _common import Timer, hardware, sync

from facerec.data.augment import to_input
from facerec.engine.evaluate import embed
from facerec.models.embedder import FaceEmbedder


@torch.no_grad()
def plain(model: torch.nn.Module, images: torch.Tensor, device: torch.device, batch: int) -> None:
    for start in range(0, len(images), batch):
        model(to_input(images[start : start + batch].to(device))).cpu()


def rate(fn, images: torch.Tensor, device: torch.device) -> float:
    fn(images[: min(len(images), 64)])  # warm-up: kernels, allocator, cuDNN autotuning
    sync(device)
    with Timer() as t:
        fn(images)
        sync(device)
    cpu, wall = t.rates(len(images))
    return cpu if device.type == "cpu" else wall


def best_of(fns: list, images: torch.Tensor, device: torch.device, repeat: int) -> list[float]:
    """The best rate of each variant over `repeat` rounds, the variants alternating (drift hits all alike)."""
    rounds = [[rate(fn, images, device) for fn in fns] for _ in range(repeat)]
    return [max(r[i] for r in rounds) for i in range(len(fns))]


def variants(name: str, args: argparse.Namespace, device: torch.device) -> list:
    """plain, facerec (and bf16 on CUDA): callables that embed a uint8 batch."""
    nchw = FaceEmbedder(name, 256, image_size=args.image_size).to(device).eval()
    nhwc = copy.deepcopy(nchw).to(memory_format=torch.channels_last)

    def ours(x: torch.Tensor) -> None:
        embed(nhwc, x, device, args.batch_size, flip=False, channels_last=True)

    def ours_bf16(x: torch.Tensor) -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            ours(x)

    fns = [lambda x: plain(nchw, x, device, args.batch_size), ours]
    return fns + ([ours_bf16] if device.type == "cuda" else [])


def bench_device(args: argparse.Namespace, device: torch.device) -> list[float]:
    print(f"device {device}: {hardware(device)}")
    g = torch.Generator().manual_seed(0)
    shape = (args.images, args.image_size, args.image_size, 3)
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
    cols = ["plain", "facerec"] + (["bf16"] if device.type == "cuda" else [])
    unit = " emb/CPU-s" if device.type == "cpu" else " emb/s"
    print(f"{'model':<10} " + " ".join(f"{c + unit:>18}" for c in cols) + f" {'ratio':>7}")
    ratios = []
    for name in args.models.split(","):
        row = best_of(variants(name, args, device), images, device, args.repeat)
        ratios.append(row[1] / row[0])
        print(f"{name:<10} " + " ".join(f"{v:>18.1f}" for v in row) + f" {ratios[-1]:>6.2f}x", flush=True)
    return ratios


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="facenet_s,resnet18,resnet34")
    p.add_argument("--images", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--cpu-only", action="store_true")
    p.add_argument("--gpu-only", action="store_true", help="skip the CPU rows (a lent GPU's time is short)")
    p.add_argument("--threads", type=int, default=1, help="torch threads on the CPU (default 1: per-core rates)")
    p.add_argument("--repeat", type=int, default=2, help="rounds; the best rate of each variant counts")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    devices = [] if args.gpu_only else [torch.device("cpu")]
    if torch.cuda.is_available() and not args.cpu_only:
        torch.backends.cudnn.benchmark = True
        devices.append(torch.device("cuda"))
    if not devices:
        p.error("--gpu-only, but no CUDA GPU is visible")
    ratios = [r for d in devices for r in bench_device(args, d)]
    gmean = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    print(f"ratio facerec / plain (geometric mean over {len(ratios)} model-device pairs): {gmean:.2f}x")


if __name__ == "__main__":
    main()
