"""Batched augmentation as tensor ops (one call per batch, on the batch's device): no per-image Python work.

Input: uint8 images (B, H, W, 3). Output: float (B, 3, H, W) in [-1, 1], the network's input.
Presets: none, flip, standard (flip + small affine jitter + colour), strong (more of both + random grayscale),
robust (strong + random loss of resolution). Every amount is relative to the image side (shift and zoom are
fractions of it, rotation is in degrees, loss of resolution a factor), so a preset frames a 112x112 face as it
frames a 64x64 one (tests/test_image_size.py).
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
    low_res: float = 0.0  # probability of losing resolution: down by one of LOW_RES_FACTORS (antialiased), back up


LOW_RES_FACTORS = (1.5, 2.0, 3.0)  # fixed sizes: no data-dependent shapes (no host sync, one compiled graph)


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
    if spec.low_res:
        x = _low_res(x, spec.low_res, generator, by_index=dev.type == "cpu")
    if spec.brightness or spec.contrast or spec.saturation or spec.grayscale:
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
    return x


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


def _low_res(x: torch.Tensor, p: float, generator: torch.Generator, by_index: bool) -> torch.Tensor:
    """Each image with probability `p` loses resolution: resampled down by one of LOW_RES_FACTORS (chosen
    uniformly; antialiased bilinear) and back up to its size (bilinear), as a face far from the camera, a small
    crop upscaled or an out-of-focus photo look. Without it, a model can lean on detail that such photos lack.

    `by_index` resamples only the chosen images (the CPU's way: a fifth of the work at p = 0.2); otherwise every
    image is resampled and the chosen ones selected, with no data-dependent shapes (no host sync on a GPU).
    """
    b = x.shape[0]
    u = torch.rand(b, generator=generator, device=x.device)
    level = (u / p * len(LOW_RES_FACTORS)).long()  # < len for the chosen images (u < p), >= len for the rest
    out = x.clone() if by_index else x
    for i, factor in enumerate(LOW_RES_FACTORS):
        if by_index:
            idx = (level == i).nonzero().squeeze(1)
            if idx.numel():
                out[idx] = _resample(x[idx], factor)
        else:
            out = torch.where((level == i).view(b, 1, 1, 1), _resample(x, factor), out)
    return out
