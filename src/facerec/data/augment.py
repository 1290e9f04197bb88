"""Batched augmentation as tensor ops (one call per batch, on the batch's device): no per-image Python work.

Input: uint8 images (B, H, W, 3). Output: float (B, 3, H, W) in [-1, 1], the network's input.
Presets: none, flip, standard (flip + small affine jitter + colour), strong (more of both + random grayscale),
robust (strong + random loss of resolution), adaface (flip, and each with probability 0.2 a crop, a loss of
resolution down to a fifth of the side, strong colour jitter: AdaFace's training augmentation). Every amount is
relative to the image side (shift and zoom are fractions of it, rotation is in degrees, loss of resolution a
factor), so a preset frames a 112x112 face as it frames a 64x64 one (tests/test_image_size.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentSpec:
    flip: bool = False
    scale: float = 0.0  # zoom in/out by up to this fraction
    shift: float = 0.0  # translate by up to this fraction of the side
    rotate: float = 0.0  # degrees
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    grayscale: float = 0.0  # probability
    low_res: float = (
        0.0  # probability of losing resolution: down by one of `low_res_factors` (antialiased), back up
    )
    low_res_factors: tuple[float, ...] = (1.5, 2.0, 3.0)  # fixed sizes: no data-dependent shapes (no host sync)
    crop: float = 0.0  # probability of keeping only a random box (20-100% of the area) and blacking out the rest
    colour_p: float = 1.0  # probability that an image gets the colour jitter (brightness, contrast, saturation)


LOW_RES_FACTORS = AugmentSpec().low_res_factors


PRESETS: dict[str, AugmentSpec] = {
    "none": AugmentSpec(),
    "flip": AugmentSpec(flip=True),
    "standard": AugmentSpec(
        flip=True, scale=0.08, shift=0.06, rotate=8, brightness=0.2, contrast=0.2, saturation=0.2
    ),
    "strong": AugmentSpec(
        flip=True, scale=0.15, shift=0.1, rotate=15, brightness=0.3, contrast=0.3, saturation=0.3, grayscale=0.1
    ),
    # strong + a fifth of the images down-and-up resampled: bench/shift.py measured a strong-only model at val AUC
    # 0.79 on 4x-downscaled probes (0.90 for the standard one); see docs/benchmarks.md, "Domain shift"
    "robust": AugmentSpec(
        flip=True,
        scale=0.15,
        shift=0.1,
        rotate=15,
        brightness=0.3,
        contrast=0.3,
        saturation=0.3,
        grayscale=0.1,
        low_res=0.2,
    ),
    # AdaFace (Kim et al., CVPR 2022; its dataset/augmenter.py): flips, and each of three with probability 0.2: a
    # random crop (RandomResizedCrop scale 0.2-1, ratio 3/4-4/3) kept in place on black, a loss of resolution to
    # a side ratio of 0.2-1 (here one of 0.8, 0.6, 0.4, 0.2: fixed shapes), and colour jitter of 0.5
    "adaface": AugmentSpec(
        flip=True,
        brightness=0.5,
        contrast=0.5,
        saturation=0.5,
        colour_p=0.2,
        low_res=0.2,
        low_res_factors=(1.25, 5 / 3, 2.5, 5.0),
        crop=0.2,
    ),
}


def get_preset(name: str) -> AugmentSpec:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown augmentation preset {name!r}; choose one of {sorted(PRESETS)}") from None


def to_input(images: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1]."""
    x = images.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _uniform(n: int, amount: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return (torch.rand(n, generator=generator, device=device) * 2 - 1) * amount


def augment(x: torch.Tensor, spec: AugmentSpec, generator: torch.Generator, inplace: bool = False) -> torch.Tensor:
    """Augment a float batch (B, 3, H, W) in [-1, 1]; `generator` must live on x's device.

    `inplace=True` lets the flip-only preset mirror the chosen images inside `x` (pass a fresh batch, as the
    training step does): on the CPU that moves half the bytes of a full flip-and-select.
    """
    b, dev = x.shape[0], x.device
    if spec.scale or spec.shift or spec.rotate or spec.flip:
        angle = _uniform(b, math.radians(spec.rotate), generator, dev)
        zoom = 1.0 + _uniform(b, spec.scale, generator, dev)
        sign = torch.ones(b, device=dev)
        if spec.flip:
            sign = torch.where(torch.rand(b, generator=generator, device=dev) < 0.5, -1.0, 1.0)
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.zeros(b, 2, 3, device=dev)
        theta[:, 0, 0], theta[:, 0, 1] = cos * sign, -sin
        theta[:, 1, 0], theta[:, 1, 1] = sin * sign, cos
        theta[:, 0, 2] = _uniform(b, 2 * spec.shift, generator, dev)
        theta[:, 1, 2] = _uniform(b, 2 * spec.shift, generator, dev)
        if spec.scale or spec.shift or spec.rotate:
            grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        elif inplace and dev.type == "cpu":  # flip only: exact; index the chosen images (no device to sync)
            chosen = (sign < 0).nonzero().squeeze(1)
            x[chosen] = x[chosen].flip(3)
        else:  # flip only: exact, no resampling; no data-dependent shapes (no host sync on a GPU)
            x = torch.where((sign < 0).view(b, 1, 1, 1), x.flip(3), x)
    if spec.crop:
        x = _crop(x, spec.crop, generator)
    if spec.low_res:
        x = _low_res(x, spec.low_res, generator, by_index=dev.type == "cpu", factors=spec.low_res_factors)
    if spec.brightness or spec.contrast or spec.saturation or spec.grayscale:
        before = x
        x = (x + 1) * 0.5  # colour maths in [0, 1]
        gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)  # (B, 1, H, W)
        if spec.saturation:
            s = (1 + _uniform(b, spec.saturation, generator, dev)).view(b, 1, 1, 1)
            x = gray + (x - gray) * s
        if spec.grayscale:
            g = (torch.rand(b, generator=generator, device=dev) < spec.grayscale).view(b, 1, 1, 1)
            x = torch.where(g, gray.expand_as(x), x)
        if spec.contrast:
            c = (1 + _uniform(b, spec.contrast, generator, dev)).view(b, 1, 1, 1)
            mean = gray.mean(dim=(2, 3), keepdim=True)
            x = mean + (x - mean) * c
        if spec.brightness:
            x = x * (1 + _uniform(b, spec.brightness, generator, dev)).view(b, 1, 1, 1)
        x = x.clamp(0, 1) * 2 - 1
        if spec.colour_p < 1:
            keep = torch.rand(b, generator=generator, device=dev) >= spec.colour_p
            x = torch.where(keep.view(b, 1, 1, 1), before.clamp(-1, 1), x)
    return x


def _crop(x: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Each image with probability `p` keeps only a random box and is black (-1) elsewhere, the face staying where
    it was: torchvision's RandomResizedCrop box (area 20-100% of the image, aspect ratio log-uniform in 3/4-4/3;
    a box that does not fit is clipped to the image), as AdaFace pastes its crop back onto a black image. It
    teaches the model faces that are partly cut off or hidden. No data-dependent shapes: a mask over the batch."""
    b, dev = x.shape[0], x.device
    h, w = x.shape[-2:]
    area = 0.2 + 0.8 * torch.rand(b, generator=generator, device=dev)
    ratio = torch.exp(math.log(3 / 4) + math.log(16 / 9) * torch.rand(b, generator=generator, device=dev))
    bw = (torch.sqrt(area * ratio) * w).clamp(max=w)  # box sides in pixels
    bh = (torch.sqrt(area / ratio) * h).clamp(max=h)
    x0 = torch.rand(b, generator=generator, device=dev) * (w - bw)
    y0 = torch.rand(b, generator=generator, device=dev) * (h - bh)
    cols = torch.arange(w, device=dev, dtype=x.dtype) + 0.5  # pixel centres
    rows = torch.arange(h, device=dev, dtype=x.dtype) + 0.5
    inside_x = (cols >= x0[:, None]) & (cols < (x0 + bw)[:, None])  # (B, W)
    inside_y = (rows >= y0[:, None]) & (rows < (y0 + bh)[:, None])  # (B, H)
    chosen = torch.rand(b, generator=generator, device=dev) < p
    keep = (inside_y[:, :, None] & inside_x[:, None, :]) | ~chosen[:, None, None]  # (B, H, W)
    return torch.where(keep[:, None], x, torch.full_like(x, -1.0))


def _resample(x: torch.Tensor, factor: float) -> torch.Tensor:
    h, w = x.shape[-2:]
    small = F.interpolate(
        x,
        size=(max(1, round(h / factor)), max(1, round(w / factor))),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


def _low_res(
    x: torch.Tensor,
    p: float,
    generator: torch.Generator,
    by_index: bool,
    factors: tuple[float, ...] = LOW_RES_FACTORS,
) -> torch.Tensor:
    """Each image with probability `p` loses resolution: resampled down by one of `factors` (chosen
    uniformly; antialiased bilinear) and back up to its size (bilinear), as a face far from the camera, a small
    crop upscaled or an out-of-focus photo look. Without it, a model can lean on detail that such photos lack.

    `by_index` resamples only the chosen images (the CPU's way: a fifth of the work at p = 0.2); otherwise every
    image is resampled and the chosen ones selected, with no data-dependent shapes (no host sync on a GPU).
    """
    b = x.shape[0]
    u = torch.rand(b, generator=generator, device=x.device)
    level = (u / p * len(factors)).long()  # < len for the chosen images (u < p), >= len for the rest
    out = x.clone() if by_index else x
    for i, factor in enumerate(factors):
        if by_index:
            idx = (level == i).nonzero().squeeze(1)
            if idx.numel():
                out[idx] = _resample(x[idx], factor)
        else:
            out = torch.where((level == i).view(b, 1, 1, 1), _resample(x, factor), out)
    return out
