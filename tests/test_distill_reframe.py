"""Re-framing crops for a teacher of another alignment template: the landmarks land on the teacher's template."""

from __future__ import annotations

import numpy as np

from facerec.distillation.reframe import reframe
from facerec.photos.warp import template_points


def _dots(points: np.ndarray, side: int) -> np.ndarray:
    """A black (side, side, 3) crop with a white 3x3 dot on each landmark."""
    img = np.zeros((side, side, 3), np.uint8)
    for x, y in points:
        c, r = int(x), int(y)  # continuous coordinates: pixel (r, c) covers [c, c+1) x [r, r+1)
        img[r - 1 : r + 2, c - 1 : c + 2] = 255
    return img


def test_facehw_crops_reframed_onto_the_arcface_template() -> None:
    crop = _dots(template_points("facehw", 64), 64)
    out = reframe(crop[None], "facehw", "arcface", 112)[0]
    assert out.shape == (112, 112, 3)
    for x, y in template_points("arcface", 112):
        assert out[int(y), int(x)].min() > 100, (x, y)  # every landmark's dot lands on the teacher's template
    assert out[5:15, 5:15].max() == 0  # the background stays background


def test_the_same_template_is_only_a_resize() -> None:
    crop = _dots(template_points("facehw", 64), 64)
    same = reframe(crop[None], "facehw", "facehw", 64)[0]
    assert np.abs(same.astype(int) - crop.astype(int)).mean() < 1.0
