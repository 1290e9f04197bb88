"""Embeddings/s of FaceEmbedder models from uint8 images, on the CPU and, when there is one, on the GPU.

plain     fp32, NCHW, torch.no_grad: model(to_input(batch)).
facerec   facerec.engine.evaluate.embed, the one path that validation, `facerec evaluate/predict/verify` and the
          API use, with channels_last; flip TTA off here (with it, two forward passes per embedding).
bf16      (CUDA only) the same under bf16 autocast: what embed() would gain from autocast (it does not use it).
Inputs are random uint8 images (speed does not depend on content); decoding is bench/datapath.py's subject.

    python bench/inference.py [--models facenet_s,resnet18,resnet34] [--images 1024] [--batch-size 256]
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from _common import hardware, sync

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
    t0 = time.perf_counter()
    fn(images)
    sync(device)
    return len(images) / (time.perf_counter() - t0)


def bench_device(args: argparse.Namespace, device: torch.device) -> list[float]:
    print(f"device {device}: {hardware(device)}")
    g = torch.Generator().manual_seed(0)
    shape = (args.images, args.image_size, args.image_size, 3)
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
    cols = ["plain", "facerec"] + (["bf16"] if device.type == "cuda" else [])
    print(f"{'model':<10} " + " ".join(f"{c + ' emb/s':>14}" for c in cols) + f" {'ratio':>7}")
    ratios = []
    for name in args.models.split(","):
        model = FaceEmbedder(name, 256, image_size=args.image_size).to(device).eval()
        row = [rate(lambda x, m=model: plain(m, x, device, args.batch_size), images, device)]
        model = model.to(memory_format=torch.channels_last)
        row.append(rate(lambda x, m=model: embed(m, x, device, args.batch_size, flip=False, channels_last=True),
                        images, device))
        if device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                row.append(rate(lambda x, m=model: embed(m, x, device, args.batch_size, flip=False,
                                                         channels_last=True), images, device))
        ratios.append(row[1] / row[0])
        print(f"{name:<10} " + " ".join(f"{v:>14.1f}" for v in row) + f" {ratios[-1]:>6.2f}x", flush=True)
    return ratios


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="facenet_s,resnet18,resnet34")
    p.add_argument("--images", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--cpu-only", action="store_true")
    args = p.parse_args()
    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and not args.cpu_only:
        torch.backends.cudnn.benchmark = True
        devices.append(torch.device("cuda"))
    ratios = [r for d in devices for r in bench_device(args, d)]
    gmean = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    print(f"ratio facerec / plain (geometric mean over {len(ratios)} model-device pairs): {gmean:.2f}x")


if __name__ == "__main__":
    main()
