"""Re-framing aligned crops for a teacher aligned on another 5-point template.

The training crops are aligned on one template (`data.align_template`: facehw's own, or insightface's arcface);
a teacher trained on crops of another framing (an insightface ONNX model: arcface at 112x112) sees each crop
warped by the similarity that maps the one template onto the other (photos/warp.py), not merely resized.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from facerec.photos.warp import similarity_transform, template_points, warp_similarity


def reframe(crops: np.ndarray, source: str, target: str, size: int) -> np.ndarray:
    """uint8 (N, S, S, 3) crops aligned on template `source` -> (N, size, size, 3) aligned on `target`."""
    side = crops.shape[1]
    m = similarity_transform(template_points(source, side), template_points(target, size))
    out = np.empty((len(crops), size, size, 3), np.uint8)
    for i, crop in enumerate(crops):
        out[i] = np.asarray(warp_similarity(Image.fromarray(crop), m, size))
    return out
