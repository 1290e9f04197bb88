"""Verification under domain shift: val-pair ROC AUC when the probe photo is taken in other conditions.

Models are used on faces from other sources, lighting and cameras than they were trained on. This benchmark takes
the labelled verification pairs of a dataset (default: facehw's val pairs, identities unseen in training) and
scores each pair as (reference image as it is, probe image under a shift): enrolment in one condition, the probe
in another. Every shift is a fixed, seeded transform of the uint8 64x64 crops:

    clean        none (the val AUC of `facerec evaluate`)
    dark         brightness x0.4 (under-exposed)
    bright       brightness x1.6, clipped (over-exposed)
    contrast     contrast x0.4 around the image mean (haze, flat light)
    side_light   a left-to-right ramp of illumination, x0.3 to x1.3 (one-sided lighting)
    warm_cast    channel gains (1.25, 1.0, 0.7) (tungsten light / white balance)
    grayscale    luma only (an infrared or black-and-white camera)
    blur         Gaussian blur, radius 1.2 px (focus, motion)
    low_res      down to 16x16 and back up (a face far from the camera)
    jpeg         JPEG quality 15 (compressed uploads)
    noise        Gaussian noise, sigma 12 grey levels (a dark sensor)

Scores come from the project's one scoring path (`FaceModel.embed` with flip TTA, the checkpoint's
own cosine / Euclidean scoring, `evaluate_pairs`). Several checkpoints are compared side by side in one run; the
last line is the ratio of each model's mean AUC margin above chance under shift to the first model's.

    python bench/shift.py --checkpoints models/facehw.pt runs/x/best.pt [--data DIR] [--pairs N] [--shifts a,b]
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from _common import data_root, hardware
from PIL import Image, ImageFilter

from facerec.data.hw2p2 import detect_layout
from facerec.data.pairset import load_pairset
from facerec.engine.evaluate import evaluate_pairs, score_pairs
from facerec.inference.load import load

Shift = Callable[[np.ndarray, np.random.Generator], np.ndarray]  # one uint8 (S, S, 3) image -> the same shape


def _gain(img: np.ndarray, gain: np.ndarray | float) -> np.ndarray:
    return np.clip(img.astype(np.float32) * gain, 0, 255).round().astype(np.uint8)


def _pil(img: np.ndarray, fn: Callable[[Image.Image], Image.Image]) -> np.ndarray:
    return np.asarray(fn(Image.fromarray(img)).convert("RGB"))


def _contrast(img: np.ndarray, _: np.random.Generator) -> np.ndarray:
    x = img.astype(np.float32)
    mean = x.mean(axis=(0, 1), keepdims=True)
    return np.clip(mean + (x - mean) * 0.4, 0, 255).round().astype(np.uint8)


def _side_light(img: np.ndarray, _: np.random.Generator) -> np.ndarray:
    ramp = np.linspace(0.3, 1.3, img.shape[1], dtype=np.float32)
    return _gain(img, ramp[None, :, None])


def _grayscale(img: np.ndarray, _: np.random.Generator) -> np.ndarray:
    return _pil(img, lambda im: im.convert("L"))


def _low_res(img: np.ndarray, _: np.random.Generator) -> np.ndarray:
    size = img.shape[:2][::-1]
    return _pil(img, lambda im: im.resize((16, 16), Image.BILINEAR).resize(size, Image.BILINEAR))


def _jpeg(img: np.ndarray, _: np.random.Generator) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=15)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def _noise(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.clip(img + rng.normal(0.0, 12.0, img.shape), 0, 255).round().astype(np.uint8)


SHIFTS: dict[str, Shift] = {
    "clean": lambda img, _: img,
    "dark": lambda img, _: _gain(img, 0.4),
    "bright": lambda img, _: _gain(img, 1.6),
    "contrast": _contrast,
    "side_light": _side_light,
    "warm_cast": lambda img, _: _gain(img, np.array([1.25, 1.0, 0.7], dtype=np.float32)),
    "grayscale": _grayscale,
    "blur": lambda img, _: _pil(img, lambda im: im.filter(ImageFilter.GaussianBlur(1.2))),
    "low_res": _low_res,
    "jpeg": _jpeg,
    "noise": _noise,
}


def shifted(images: torch.Tensor, name: str, seed: int = 0) -> torch.Tensor:
    """The uint8 (N, S, S, 3) images under shift `name` (seeded: the same pixels in every run)."""
    rng = np.random.default_rng(seed)
    fn = SHIFTS[name]
    return torch.from_numpy(np.stack([fn(img, rng) for img in images.numpy()]))


def shift_aucs(
    fm, images: torch.Tensor, idx_a: torch.Tensor, idx_b: torch.Tensor, labels: torch.Tensor, names=SHIFTS
) -> dict[str, float]:
    """Val AUC of one model under each shift in `names`: pairs (images[a] as they are, images[b] shifted)."""
    ref = fm.embed(images)
    out = {}
    for name in names:
        probe = ref if name == "clean" else fm.embed(shifted(images, name))
        scores = score_pairs(torch.cat([ref, probe]), idx_a, idx_b + ref.shape[0], fm.scoring)
        out[name] = evaluate_pairs(scores, labels)["auc"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoints", nargs="+", required=True, help="checkpoints to compare (first: the base)")
    p.add_argument("--data", help="dataset with labelled val pairs (default $FACEREC_DATA, ../shared/data/facehw)")
    p.add_argument("--pairs", type=int, default=0, help="score the first N pairs only (default: all)")
    p.add_argument("--shifts", default=",".join(SHIFTS), help="comma-separated, from: " + ", ".join(SHIFTS))
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    names = args.shifts.split(",")
    unknown = sorted(set(names) - set(SHIFTS))
    if unknown:
        raise SystemExit(f"unknown shifts {unknown}; choose from {list(SHIFTS)}")
    if "clean" not in names:
        names.insert(0, "clean")
    layout = detect_layout(data_root(args.data))
    if layout.pairs_val is None:
        raise SystemExit(f"{layout.root} has no labelled val pair file (verification_pairs_val.txt)")
    models = [load(c) for c in args.checkpoints]
    sizes = {m.image_size for m in models}
    if len(sizes) != 1:
        raise SystemExit(f"the checkpoints take different image sizes {sorted(sizes)}; compare like with like")
    ps = load_pairset(layout.pairs_val, layout.root, layout.verification, sizes.pop())
    idx_a, idx_b, labels = ps.idx_a, ps.idx_b, ps.labels
    if args.pairs:
        idx_a, idx_b, labels = idx_a[: args.pairs], idx_b[: args.pairs], labels[: args.pairs]
    used = torch.unique(torch.cat([idx_a, idx_b]))  # embed only the images the chosen pairs use
    remap = torch.full((ps.images.shape[0],), -1, dtype=torch.long)
    remap[used] = torch.arange(used.numel())
    images, idx_a, idx_b = ps.images[used], remap[idx_a], remap[idx_b]
    print(f"{hardware(torch.device('cpu'))}")
    print(f"{len(labels)} pairs ({int(labels.sum())} same), {images.shape[0]} images from {layout.pairs_val}")
    t0 = time.perf_counter()
    clean = [m.embed(images) for m in models]  # any model file, ensembles (facerec.inference.ensemble) too
    aucs: dict[str, list[float]] = {}
    for name in names:
        probe_images = images if name == "clean" else shifted(images, name)
        row = []
        for m, ref in zip(models, clean):
            probe = ref if name == "clean" else m.embed(probe_images)
            # reference side as it is, probe side shifted: (ref[a], probe[b])
            scores = score_pairs(torch.cat([ref, probe]), idx_a, idx_b + ref.shape[0], m.scoring)
            row.append(evaluate_pairs(scores, labels)["auc"])
        aucs[name] = row
        print(f"  {name:<11} " + "  ".join(f"{a:.4f}" for a in row), flush=True)
    print(f"({time.perf_counter() - t0:.0f} s)\n")
    header = "| shift | " + " | ".join(Path(c).as_posix() for c in args.checkpoints) + " |"
    print(header)
    print("|---|" + "---:|" * len(models))
    for name, row in aucs.items():
        print(f"| {name} | " + " | ".join(f"{a:.4f}" for a in row) + " |")
    shifted_names = [n for n in aucs if n != "clean"]
    if not shifted_names:
        return
    means = [float(np.mean([aucs[n][i] for n in shifted_names])) for i in range(len(models))]
    print("| mean under shift | " + " | ".join(f"{a:.4f}" for a in means) + " |")
    kept = [(mu - 0.5) / max(aucs["clean"][i] - 0.5, 1e-9) for i, mu in enumerate(means)]
    print("| kept margin above chance | " + " | ".join(f"{k:.1%}" for k in kept) + " |")
    ratios = ", ".join(f"{(mu - 0.5) / max(means[0] - 0.5, 1e-9):.3f}x" for mu in means[1:])
    if ratios:
        print(f"mean AUC margin above chance under shift, each model / the first: {ratios}")


if __name__ == "__main__":
    main()
