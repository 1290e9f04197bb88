"""Uploaded bytes -> the uint8 (S, S, 3) face crop the model sees, with the service's input limits.

Every way an upload can be bad maps to a 4xx status, never a 5xx: too many bytes or pixels (413), a content
type or image format that is not accepted (415), bytes that do not decode (400), no face found when aligning (422).
Decoding is `data.images.decode_image` on the bytes (without an aligner) or `data.images.open_image` (with one), so
the service sees exactly what `facerec.load(...).embed(path)` sees for the same file.
"""

from __future__ import annotations

import base64
import io
import struct
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, UnidentifiedImageError

from facerec.data.images import MAX_PIXELS, decode_image, open_image
from facerec.errors import DataError
from facerec.serve.ports import Aligner

MiB = 1 << 20
CONTENT_TYPES: frozenset[str] = frozenset({"image/jpeg", "image/png", "image/webp", "image/bmp"})
FORMATS: frozenset[str] = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP"})  # MPO: JPEGs of some phone cameras
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error)


class UploadError(Exception):
    """A client error in an upload: `status` is the HTTP status to answer with, `detail` says what to fix."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 10 * MiB  # per uploaded image
    max_pixels: int = MAX_PIXELS  # width x height, checked from the header before decoding (bomb guard)
    content_types: frozenset[str] = field(default=CONTENT_TYPES)
    max_files: int = 10  # images per enroll request

    @property
    def max_request_bytes(self) -> int:
        """The whole request body: two images (verify) plus room for the multipart framing and form fields."""
        return 2 * self.max_bytes + 64 * 1024


def check_content_type(content_type: str | None, limits: Limits, name: str) -> None:
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype not in limits.content_types:
        raise UploadError(
            415,
            f"{name}: content type {ctype or 'missing'!r} is not accepted; "
            f"send one of {sorted(limits.content_types)}",
        )


def _open(data: bytes, limits: Limits, name: str) -> Image.Image:
    """Open (header only) and check the format and the pixel count before anything is decoded."""
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        raise UploadError(413, f"{name}: image too large ({err})") from None
    except (UnidentifiedImageError, *_DECODE_ERRORS):
        raise UploadError(400, f"{name}: not a decodable image (corrupt, truncated, or not an image)") from None
    if img.format not in FORMATS:
        raise UploadError(415, f"{name}: image format {img.format} is not accepted; send JPEG, PNG, WebP or BMP")
    if img.width * img.height > limits.max_pixels:
        raise UploadError(
            413,
            f"{name}: {img.width}x{img.height} = {img.width * img.height} pixels is over the "
            f"limit of {limits.max_pixels}; downscale the photo",
        )
    return img


def decode_face(
    data: bytes, size: int, limits: Limits, name: str = "image", aligner: Aligner | None = None
) -> np.ndarray:
    """Uploaded bytes -> uint8 (size, size, 3) RGB: resized by decode_image, or aligned by `aligner`."""
    if not data:
        raise UploadError(400, f"{name}: the file is empty")
    if len(data) > limits.max_bytes:
        raise UploadError(413, f"{name}: {len(data)} bytes is over the limit of {limits.max_bytes} bytes")
    _open(data, limits, name)  # the format and pixel checks, from the header
    try:
        if aligner is None:
            return decode_image(data, size, max_pixels=limits.max_pixels)
        rgb = open_image(data, max_pixels=limits.max_pixels)
    except DataError:
        raise UploadError(400, f"{name}: the image could not be decoded (corrupt or truncated?)") from None
    face = aligner.align(rgb)
    if face is None:
        raise UploadError(422, f"{name}: no face found; upload a photo with one clearly visible face")
    return decode_image(np.asarray(face, dtype=np.uint8) if not isinstance(face, Image.Image) else face, size)


def png_base64(crop: np.ndarray) -> str:
    """uint8 (S, S, 3) -> a data: URL of its PNG, for an <img src=...>."""
    buf = io.BytesIO()
    Image.fromarray(crop).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
