"""The one image decoder: a path, bytes, a PIL image or an array -> the RGB uint8 (S, S, 3) crop a model sees.

Training data, `facerec.load(...).embed`, the ONNX backend and the service's uploads all decode through
`decode_image`, so one photo gives the same pixels everywhere. Files and bytes are turned upright by their EXIF
orientation (phone photos); images already in memory are taken as they are. Every decode refuses images above
`max_pixels` before decoding them (a 64k x 64k PNG would need 12 GiB as RGB).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps

from facerec.errors import DataError

ImageLike = str | Path | bytes | Image.Image | np.ndarray
OnResize = Callable[[int, int], None]  # told (width, height) of an image that is resized to the model's size
MAX_PIXELS = 64_000_000
_EXIF_ORIENTATION = 0x0112
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError)


def decode_image(
    source: ImageLike | BinaryIO, size: int, *, max_pixels: int = MAX_PIXELS, on_resize: OnResize | None = None
) -> np.ndarray:
    """Any image -> RGB uint8 (size, size, 3).

    Images already size x size are not resampled; others are resized with antialiased bilinear filtering (the
    aspect ratio is not kept: faces are square crops), and `on_resize(width, height)` is told their size. Big
    JPEGs are DCT-downscaled while decoding (PIL draft mode), which is much faster. Raises DataError naming the
    file: it does not exist, is not an image (or is corrupt), or has more than `max_pixels` pixels.
    """
    if isinstance(source, Image.Image):
        return _resized(_to_rgb(source), size, on_resize)
    if isinstance(source, np.ndarray):
        return _resized(_to_rgb(_from_array(source)), size, on_resize)
    with _opened(source, max_pixels) as img:
        if on_resize is not None and img.size != (size, size):
            on_resize(*img.size)  # the file's own size (a JPEG draft below may shrink it first)
            on_resize = None
        if img.format == "JPEG" and (img.width > size or img.height > size):
            img.draft(img.mode, (size, size))  # keeps both sides >= size
        return _resized(_to_rgb(_upright(img)), size, on_resize)


def open_image(source: ImageLike | BinaryIO, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Any image -> upright 8-bit RGB PIL image at its own size (for face detection, which needs the whole photo).
    Raises DataError as `decode_image` does."""
    if isinstance(source, Image.Image):
        return _to_rgb(source)
    if isinstance(source, np.ndarray):
        return _to_rgb(_from_array(source))
    with _opened(source, max_pixels) as img:
        return _to_rgb(_upright(img))


def load_image(path: str | Path | BinaryIO, size: int, *, max_pixels: int = MAX_PIXELS) -> np.ndarray | None:
    """`decode_image`, or None for a file that is missing, unreadable or too large: the dataset loaders count
    and report such files instead of stopping a run for one broken image."""
    try:
        return decode_image(path, size, max_pixels=max_pixels)
    except DataError:
        return None


def decode_batch(
    images: Sequence[ImageLike] | torch.Tensor, size: int, on_resize: OnResize | None = None
) -> torch.Tensor:
    """Paths, bytes, PIL images, HxWx3 arrays, or a uint8 (N, H, W, 3) tensor -> uint8 (N, size, size, 3).

    A tensor is taken as already decoded: passed through as it is when H = W = size, else each image is resized
    as `decode_image` resizes an array (antialiased bilinear), so a tensor and the same images as arrays give the
    same pixels. `on_resize(width, height)` is told the size of every image that is resized. DataError for a
    tensor that is not uint8 (N, H, W, 3).
    """
    if isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[3] != 3:
            raise DataError(
                f"expected decoded images as a uint8 (N, H, W, 3) tensor, got {images.dtype} "
                f"{tuple(images.shape)}; pass paths, PIL images or arrays instead, or convert to uint8 RGB"
            )
        if images.shape[1:3] == (size, size):
            return images
        if images.shape[0] == 0:
            return torch.zeros(0, size, size, 3, dtype=torch.uint8)
        arrays = images.cpu().numpy()
        return torch.from_numpy(np.stack([decode_image(a, size, on_resize=on_resize) for a in arrays]))
    if not images:
        return torch.zeros(0, size, size, 3, dtype=torch.uint8)
    return torch.from_numpy(np.stack([decode_image(item, size, on_resize=on_resize) for item in images]))


@contextmanager
def _opened(source: str | Path | bytes | BinaryIO, max_pixels: int) -> Iterator[Image.Image]:
    """The opened image (header read, pixels not yet decoded), size-checked; every failure, while opening or
    while the caller decodes, becomes a DataError that names the file."""
    name = _name(source)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            _check_pixels(img, max_pixels, name)
            yield img
    except FileNotFoundError:
        raise DataError(f"image {name} does not exist") from None
    except IsADirectoryError:
        raise DataError(f"{name} is a folder, not an image file") from None
    except _DECODE_ERRORS as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"cannot read image {name}: not an image, or corrupt ({err})") from None


def _name(source: object) -> str:
    if isinstance(source, str | Path):
        return str(source)
    return "(image bytes)" if isinstance(source, bytes | io.BytesIO) else repr(source)


def _check_pixels(img: Image.Image, max_pixels: int, name: str) -> None:
    if img.width * img.height > max_pixels:
        raise DataError(
            f"image {name}: {img.width}x{img.height} = {img.width * img.height} pixels is above the limit of "
            f"{max_pixels}; shrink it first"
        )


def _from_array(array: np.ndarray) -> Image.Image:
    """(H, W) grey or (H, W, 3|4) uint8 -> a PIL image; anything else is a DataError that says what is needed."""
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise DataError(f"expected an (H, W, 3) RGB image array, got shape {tuple(array.shape)}")
    if array.dtype != np.uint8:
        raise DataError(f"expected a uint8 image array (0-255), got {array.dtype}; convert with .astype(np.uint8)")
    return Image.fromarray(np.ascontiguousarray(array))


def _resized(rgb: Image.Image, size: int, on_resize: OnResize | None = None) -> np.ndarray:
    """PIL's bilinear resize is antialiased: its filter widens with the shrink factor."""
    if rgb.size != (size, size):
        if on_resize is not None:
            on_resize(*rgb.size)
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation (phone photos) so faces are upright; a no-op for most files."""
    orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    if orientation == 1:
        return img
    return ImageOps.exif_transpose(img)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any mode to 8-bit RGB; 16/32-bit integer images are scaled down instead of clipped to white."""
    if img.mode == "RGB":
        img.load()
        return img
    if img.mode.startswith("I"):  # I;16, I;16B, I: PIL's convert would clip values > 255
        values = np.asarray(img).astype(np.int64)
        if values.max(initial=0) > 255:
            values = values.clip(0, 65535) >> 8
        return Image.fromarray(values.clip(0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode == "F":
        return Image.fromarray(np.asarray(img).clip(0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # avoids PIL's palette-transparency warning; alpha is then dropped
    return img.convert("RGB")
