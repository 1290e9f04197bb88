"""Embeddings/s on the CPU: PyTorch (inference.model.FaceModel) vs ONNX Runtime (inference.onnx.OnnxFaceModel).

Same model (random weights: speed does not depend on them), same uint8 batches, same thread count, both through
their public `embed` (preprocessing included; flip TTA off: with it, both do two passes). Each rate is the median
of --repeats timed passes after a warm-up; "cpu" rates are images per CPU-second of this process, which other
processes competing for the cores distort less than wall-clock rates (use --threads 1 there: idle threads that
spin-wait count as CPU time). The ratios ONNX Runtime / PyTorch are printed last.

    python bench/inference_onnx.py [--models facenet_s,resnet18 | --checkpoint models/facehw.pt] [--images 512]
                                   [--batch-size 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import hardware

from facerec.config import config_from_dict, config_to_dict
from facerec.engine.build import build_loss_fn, build_model
from facerec.engine.checkpoint import load_checkpoint, save_checkpoint
from facerec.inference.export import export_onnx
from facerec.inference.load import load
from facerec.inference.onnx import OnnxFaceModel


def checkpoint(folder: Path, backbone: str, image_size: int) -> Path:
    cfg = config_from_dict({"model": {"backbone": backbone}, "data": {"image_size": image_size}})
    model, loss_fn = build_model(cfg), build_loss_fn(cfg, 10)
    state = {
        "config": config_to_dict(cfg),
        "classes": [str(i) for i in range(10)],
        "model": model.state_dict(),
        "loss": loss_fn.state_dict(),
        "scoring": "cosine",
        "threshold": 0.3,
    }
    return save_checkpoint(state, folder / f"{backbone}.pt")


def rate(model, images: torch.Tensor, batch: int, repeats: int) -> tuple[float, float, torch.Tensor]:
    """(median images/s wall, median images/s per CPU-second, embeddings of the last pass)."""
    model.embed(images[:batch], flip=False)  # warm-up: allocator, kernel selection
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        out = torch.cat([model.embed(images[s : s + batch], flip=False) for s in range(0, len(images), batch)])
        walls.append(len(images) / (time.perf_counter() - w))
        cpus.append(len(images) / max(time.process_time() - c, 1e-9))
    return statistics.median(walls), statistics.median(cpus), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="facenet_s,resnet18", help="backbones with random weights")
    ap.add_argument("--checkpoint", help="bench this trained model instead of --models")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch and ONNX Runtime threads")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.checkpoint:  # the model's own input size
        args.image_size = int(load_checkpoint(args.checkpoint)["config"]["data"]["image_size"])
    import onnxruntime

    print(
        f"cpu: {hardware(torch.device('cpu'))}; onnxruntime {onnxruntime.__version__} with {args.threads} "
        f"threads; {args.images} images of {args.image_size}x{args.image_size}, batch {args.batch_size}, "
        f"median of {args.repeats}"
    )
    g = torch.Generator().manual_seed(0)
    images = torch.randint(
        0, 256, (args.images, args.image_size, args.image_size, 3), dtype=torch.uint8, generator=g
    )
    print(
        f"{'model':<12} {'torch emb/s':>12} {'ort emb/s':>10} {'torch /cpu-s':>13} {'ort /cpu-s':>11} "
        f"{'max rel diff':>13} {'ratio':>6}"
    )
    ratios = []
    names = [Path(args.checkpoint).name] if args.checkpoint else args.models.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            ckpt = args.checkpoint or checkpoint(Path(tmp), name, args.image_size)
            onnx_path, _ = export_onnx(ckpt, Path(tmp) / f"{name}.onnx")
            torch_model, ort_model = load(ckpt), OnnxFaceModel(onnx_path, threads=args.threads)
            t_wall, t_cpu, t_out = rate(torch_model, images, args.batch_size, args.repeats)
            o_wall, o_cpu, o_out = rate(ort_model, images, args.batch_size, args.repeats)
            diff = float((o_out - t_out).abs().max() / t_out.abs().max())
            ratios.append((o_wall / t_wall, o_cpu / t_cpu))
            print(
                f"{name:<12} {t_wall:>12.1f} {o_wall:>10.1f} {t_cpu:>13.1f} {o_cpu:>11.1f} {diff:>13.1e} "
                f"{ratios[-1][0]:>5.2f}x",
                flush=True,
            )
    print(
        "ratio ONNX Runtime / PyTorch: "
        + ", ".join(f"{n} {c:.2f}x per CPU-second, {w:.2f}x wall-clock" for n, (w, c) in zip(names, ratios))
    )


if __name__ == "__main__":
    main()
