"""The geometry of alignment: the 5-point templates of the training framings, the similarity fit and the warp.

The training data (facehw, HW2P2) are 64x64 crops aligned on five MTCNN landmarks with a similarity transform.
`TEMPLATE_64` is where those landmarks sit in the training crops, measured on the data itself (docs/alignment.md),
so a photo warped here onto it is framed like a training image. insightface's training sets (CASIA-WebFace, MS1M,
Glint360K) and verification packs are 112x112 crops aligned on its 5-point `arcface_dst`: `TEMPLATE_ARCFACE_112`.
`TEMPLATES` names both; `template_points` scales one to any crop size. Pure numpy + PIL: no detector needed.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image

from facerec.errors import DataError

# (x, y) in 64x64 pixel coordinates (continuous: the image spans [0, 64]), image-left eye first: left eye,
# right eye, nose tip, left and right mouth corner. Measured on the data (docs/alignment.md): 145 lfw_tiny photos
# registered onto their facehw crops give the dataset's own transform; our MTCNN landmarks mapped through it,
# averaged. The mean landmarks MTCNN finds in facehw crops (`measure_template`) agree within 0.4 px.
TEMPLATE_64 = np.array(
    [[23.10, 30.40], [41.33, 30.23], [32.43, 41.14], [24.44, 50.35], [40.18, 50.26]], dtype=np.float64
)
# insightface's `arcface_dst` (insightface/utils/face_align.py), the framing of its 112x112 data, given there in
# OpenCV's pixel-index coordinates (pixel i's centre at i): + 0.5 puts it in the continuous coordinates used here,
# so that it scales exactly to other sizes and a crop warped here matches cv2.warpAffine's.
ARCFACE_DST = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
TEMPLATE_ARCFACE_112 = ARCFACE_DST + 0.5
# name -> (landmarks (5, 2), the crop side they are given for); `data.align_template` chooses one
TEMPLATES: dict[str, tuple[np.ndarray, int]] = {
    "facehw": (TEMPLATE_64, 64),
    "arcface": (TEMPLATE_ARCFACE_112, 112),
}
DEFAULT_TEMPLATE = "facehw"
LANDMARKS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
_MIN_WARP_SCALE = 0.4  # below this the photo is first shrunk with antialiasing (bilinear warps alias)


def template_points(name: str, size: int) -> np.ndarray:
    """The landmarks (5, 2) of template `name` ("facehw" or "arcface") in a `size` x `size` crop: the template
    scaled by size / its own side (continuous coordinates scale exactly). ValueError naming the choices."""
    try:
        points, side = TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown alignment template {name!r}; choose one of {', '.join(TEMPLATES)}") from None
    if size < 1:
        raise ValueError(f"the crop size must be a positive number of pixels, got {size}")
    return points * (size / side)


def measure_template(crops: list[Any], aligner: Any) -> tuple[np.ndarray, int]:
    """(mean landmarks (5, 2) in the crops' pixel coordinates, crops with a face) of already-aligned crops, with
    a photos.align.FaceAligner's `detect`: how `TEMPLATE_64` was measured on the training data."""
    points = [faces[0].landmarks for faces in map(aligner.detect, crops) if faces]
    if not points:
        raise DataError(f"no face found in any of the {len(crops)} crops")
    return np.mean(points, axis=0), len(points)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares 2D similarity (rotation, uniform scale, translation) mapping src (K, 2) onto dst (K, 2).

    Umeyama (1991), "Least-squares estimation of transformation parameters between two point patterns", without
    reflections. Returns M (2, 3) with dst ~ M @ [x, y, 1].
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(f"need two (K, 2) point sets with K >= 2, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    var = (s0**2).sum() / len(src)
    if var <= 0:
        raise ValueError("the source points coincide; no similarity transform is defined")
    u, sig, vt = np.linalg.svd(d0.T @ s0 / len(src))
    d = np.diag([1.0, -1.0 if np.linalg.det(u) * np.linalg.det(vt) < 0 else 1.0])
    rot = u @ d @ vt
    scale = float((sig * np.diag(d)).sum() / var)
    t = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, t[:, None]])


def transform_points(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) affine matrix to (K, 2) points."""
    return np.asarray(points, np.float64) @ m[:, :2].T + m[:, 2]


def warp_similarity(img: Image.Image, m: np.ndarray, size: int) -> Image.Image:
    """The size x size output of the similarity `m` (photo -> crop coordinates), bilinear.

    The facehw crops were warped directly with bilinear sampling (which matches them best, docs/alignment.md);
    when the photo must shrink more than 1/`_MIN_WARP_SCALE` times, it is first resized with antialiasing so
    the warp does not alias.
    """
    scale = math.sqrt(abs(np.linalg.det(m[:, :2])))
    if scale < _MIN_WARP_SCALE:
        f = scale / _MIN_WARP_SCALE
        new_size = (max(1, round(img.width * f)), max(1, round(img.height * f)))
        small = img.resize(new_size, Image.Resampling.BILINEAR, reducing_gap=2.0)
        fx, fy = small.width / img.width, small.height / img.height
        m = m @ np.array([[1 / fx, 0, 0], [0, 1 / fy, 0], [0, 0, 1]])  # crop <- small photo
        img = small
    inv = np.linalg.inv(np.vstack([m, [0.0, 0.0, 1.0]]))[:2]
    return img.transform((size, size), Image.Transform.AFFINE, inv.ravel().tolist(), Image.Resampling.BILINEAR)
