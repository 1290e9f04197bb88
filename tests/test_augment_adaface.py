"""The `adaface` augmentation preset (data/augment.py): a crop kept in place on black, a loss of resolution to
one of four side ratios, and colour jitter, each for about a fifth of the images; the older presets unchanged."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from facerec.data.augment import PRESETS, AugmentSpec, _crop, augment, get_preset


def _kept_box(mask: torch.Tensor) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1) of the True pixels of an (H, W) mask when they form one full rectangle, else None."""
    rows, cols = mask.any(1).nonzero().squeeze(1), mask.any(0).nonzero().squeeze(1)
    if not len(rows):
        return None
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    box = torch.zeros_like(mask)
    box[y0:y1, x0:x1] = True
    return (y0, y1, x0, x1) if torch.equal(box, mask) else None


def test_crop_keeps_one_box_in_place_and_blacks_out_the_rest():
    x = torch.rand(200, 3, 32, 32) * 1.8 - 0.9  # never exactly -1, so black pixels are the crop's
    y = _crop(x, 1.0, torch.Generator().manual_seed(0))
    areas = []
    for xi, yi in zip(x, y):
        kept = (yi == xi).all(0)
        assert torch.equal((yi[:, ~kept] == -1).all(0), torch.ones((~kept).sum(), dtype=torch.bool))
        box = _kept_box(kept)
        assert box is not None  # one rectangle, where the face was: not moved, not resized
        areas.append((box[1] - box[0]) * (box[3] - box[2]) / 32**2)
    areas_t = torch.tensor(areas)
    # RandomResizedCrop's area is uniform in [0.2, 1] (less where a box wider or taller than the image is clipped)
    assert areas_t.min() >= 0.1 and areas_t.max() <= 1.0
    assert 0.45 < areas_t.mean() < 0.65 and (areas_t < 0.35).sum() > 10 and (areas_t > 0.85).sum() > 10


def test_crop_probability_and_seed():
    x = torch.rand(400, 3, 16, 16) * 1.8 - 0.9
    y = _crop(x, 0.2, torch.Generator().manual_seed(1))
    cropped = (y != x).flatten(1).any(1)
    assert 50 < cropped.sum() < 110  # about a fifth (80 expected; a box can also cover the whole image)
    assert torch.equal(y, _crop(x, 0.2, torch.Generator().manual_seed(1)))
    assert torch.equal(_crop(x, 0.0, torch.Generator().manual_seed(1)), x)


def test_colour_probability_applies_the_jitter_to_a_share_of_the_images():
    x = torch.rand(400, 3, 8, 8) * 1.6 - 0.8
    only_colour = AugmentSpec(brightness=0.5, contrast=0.5, saturation=0.5, colour_p=0.25)
    y = augment(x, only_colour, torch.Generator().manual_seed(2))
    changed = (y != x).flatten(1).any(1)
    assert 70 < changed.sum() < 130  # 100 expected
    everyone = augment(x, dataclasses.replace(only_colour, colour_p=1.0), torch.Generator().manual_seed(2))
    assert torch.equal(y[changed], everyone[changed])  # the chosen images get exactly the colour_p=1 jitter


def test_adaface_preset_resolution_levels_and_range():
    spec = get_preset("adaface")
    assert spec.low_res_factors == pytest.approx((1.25, 5 / 3, 2.5, 5.0))  # side ratios 0.8, 0.6, 0.4, 0.2
    assert (spec.low_res, spec.crop, spec.colour_p, spec.flip) == (0.2, 0.2, 0.2, True)
    x = torch.rand(300, 3, 20, 20) * 2 - 1
    y = augment(x, spec, torch.Generator().manual_seed(3))
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1
    # flips aside, about 0.8^3 = 51% of the images come out untouched
    untouched = ((y == x) | (y == x.flip(3))).flatten(1).all(1)
    assert 0.38 < untouched.float().mean() < 0.64


@pytest.mark.parametrize("name", ["standard", "strong", "robust"])
def test_older_presets_take_none_of_the_new_steps(name):
    spec = PRESETS[name]
    assert (spec.crop, spec.colour_p, spec.low_res_factors) == (0.0, 1.0, (1.5, 2.0, 3.0))
