"""insightface's verification packs (lfw.bin, cfp_fp.bin, agedb_30.bin, ...): read safely, check, decode.

A pack is a pickle of `(bins, issame_list)`: `bins` holds 2N encoded images (JPEG or PNG) and pair i is
`bins[2i]`, `bins[2i + 1]`; `issame_list` holds N bools. The classic packs were written under Python 2, each image
a `str`, so a pack is read with `encoding="bytes"` (Python 3 packs hold `bytes`, which that leaves alone); some
packs hold each image as the numpy uint8 array `cv2.imencode` returns.

Unpickling a file runs whatever callable it names (a GLOBAL opcode, then REDUCE). `read_pack` therefore uses an
unpickler whose `find_class` resolves only the three numpy names that rebuilding an array needs, each to a guarded
stand-in: `_reconstruct` accepts only the empty array numpy's own pickles start from, `dtype` only uint8, and
`ndarray` is a token that cannot be called; and `_codecs.encode(text, "latin1")`, which is how Python 3 writes
bytes at protocol 2. Every other global (os.system, builtins.eval, subprocess.Popen, ...)
is refused before anything is called, with a DataError that names the file and the global.
"""

from __future__ import annotations

import io
import pickle
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from facerec.data.images import decode_image
from facerec.errors import DataError

_UNPICKLING_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    AttributeError,
    IndexError,
    KeyError,
    OverflowError,
    RecursionError,
    MemoryError,
    struct.error,
)


@dataclass
class VerificationPack:
    """A read pack: `images` the 2N encoded images (pair i is images[2i], images[2i + 1]), `issame` (N,) bool."""

    path: Path
    images: list[bytes]
    issame: np.ndarray

    def __len__(self) -> int:
        return int(self.issame.shape[0])

    @property
    def name(self) -> str:
        """The file's stem ("lfw" for lfw.bin): the pack's name in tables and metric names."""
        return self.path.stem


class _NdarrayToken:
    """What `numpy.ndarray` resolves to: the subtype argument of `_reconstruct`, never called itself (calling
    ndarray(shape) from a pickle would allocate whatever the file asks for)."""

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        raise DataError("numpy.ndarray called directly; packs only rebuild arrays through _reconstruct")


_NDARRAY = _NdarrayToken()


def _reconstruct(subtype: Any, shape: Any, typecode: Any) -> np.ndarray:
    """numpy's `_reconstruct` as a pickled array calls it: an empty int8 array that BUILD then fills from bytes
    in the file (`ndarray.__setstate__` checks their length against the shape). Anything else is refused."""
    expected = (
        type(shape) is tuple and shape == (0,) and isinstance(typecode, str | bytes) and typecode in ("b", b"b")
    )
    if subtype is not _NDARRAY or not expected:
        raise DataError(
            f"numpy _reconstruct called with {type(subtype).__name__}, {shape!r:.40}, {typecode!r:.20}"
        )
    return np.empty(0, dtype=np.int8)


def _dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
    """numpy's `dtype` as a pickled uint8 array calls it; any other type (object arrays above all) is refused."""
    if not isinstance(spec, str | bytes) or spec not in ("u1", b"u1"):
        raise DataError(f"numpy dtype {spec!r:.40}: packs hold uint8 arrays (encoded images) only")
    return np.dtype("u1", align=False, copy=True)  # a copy: BUILD's __setstate__ must not touch numpy's own


def _latin1(text: Any, encoding: Any) -> bytes:
    """`_codecs.encode(text, "latin1")`: how Python 3 writes bytes at pickle protocol 2 (packs written by Python 3
    for Python 2 readers); only that call is accepted."""
    if not isinstance(text, str) or encoding != "latin1":
        raise DataError(f"_codecs.encode called with {type(text).__name__}, {encoding!r:.20}")
    return text.encode("latin1")


_ALLOWED: dict[tuple[str, str], Any] = {
    ("_codecs", "encode"): _latin1,  # bytes at protocol 2, written by Python 3
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # numpy 1.x pickles
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # numpy 2.x pickles
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _dtype,
}


class _PackUnpickler(pickle.Unpickler):
    """Resolves only `_ALLOWED`'s names; any other global is a DataError naming the file and the global."""

    def __init__(self, data: bytes, source: Path) -> None:
        super().__init__(io.BytesIO(data), encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED.get((module, name))
        if allowed is None:
            raise DataError(
                f"{self.source}: refused to read: it names the global {module}.{name}, which a verification pack "
                "never holds (only images as bytes or uint8 arrays, and bools); nothing in it was run. Use packs "
                "from a source you trust"
            )
        return allowed


def read_pack(path: str | Path) -> VerificationPack:
    """Read and check a .bin pack without running code from it (module notes).

    Raises DataError naming the file: it does not exist, is not a pickle, names a global other than numpy's array
    parts, or does not hold `(bins, issame_list)` with len(bins) == 2 * len(issame_list).
    """
    path = Path(path).expanduser()
    try:
        data = path.read_bytes()  # whole: a length field in the file then cannot make a read allocate more
    except FileNotFoundError:
        raise DataError(f"verification pack {path} does not exist") from None
    except OSError as err:
        raise DataError(f"cannot read verification pack {path} ({err})") from None
    try:
        content = _PackUnpickler(data, path).load()
    except DataError as err:
        raise DataError(str(err) if str(err).startswith(str(path)) else f"{path}: {err}") from None
    except _UNPICKLING_ERRORS as err:
        raise DataError(
            f"{path} is not a readable verification pack ({type(err).__name__}: {err}); insightface packs are "
            "pickles of (bins, issame_list)"
        ) from None
    bins, issame = _split(content, path)
    return VerificationPack(path, _images(bins, path), _labels(issame, path))


def _split(content: Any, path: Path) -> tuple[list[Any] | tuple[Any, ...], list[Any] | tuple[Any, ...]]:
    if not isinstance(content, tuple | list) or len(content) != 2:
        raise DataError(f"{path}: expected a pickle of (bins, issame_list), found {_what(content)}")
    bins, issame = content
    for name, value in (("bins", bins), ("issame_list", issame)):
        if not isinstance(value, list | tuple):
            raise DataError(f"{path}: {name} must be a list, found {_what(value)}")
    if not issame:
        raise DataError(f"{path}: issame_list is empty: the pack holds no pairs")
    if len(bins) != 2 * len(issame):
        raise DataError(
            f"{path}: {len(bins)} images for {len(issame)} pairs; a pack holds two images per pair "
            f"(len(bins) == 2 * len(issame_list))"
        )
    return bins, issame


def _images(bins: list[Any] | tuple[Any, ...], path: Path) -> list[bytes]:
    """Each image as encoded bytes; uint8 arrays (cv2.imencode's output) are flattened to their bytes."""
    out = []
    for i, item in enumerate(bins):
        if isinstance(item, bytes):
            out.append(item)
        elif isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.dtype.names is None:
            out.append(item.reshape(-1).tobytes())
        else:
            raise DataError(
                f"{path}: image {i} is {_what(item)}; packs hold encoded images as bytes or uint8 arrays"
            )
    return out


def _labels(issame: list[Any] | tuple[Any, ...], path: Path) -> np.ndarray:
    for i, value in enumerate(issame):
        if type(value) not in (bool, int) or value not in (0, 1):
            raise DataError(f"{path}: issame_list[{i}] is {_what(value)}; it must be a bool (True: same person)")
    return np.asarray(issame, dtype=bool)


def _what(value: Any) -> str:
    """A short description of an unexpected value for an error message."""
    if isinstance(value, np.ndarray):
        return f"a numpy {value.dtype} array of shape {value.shape}"
    if isinstance(value, tuple | list):
        return f"a {type(value).__name__} of {len(value)} items"
    return f"{type(value).__name__} {value!r:.40}"


def decode_images(pack: VerificationPack, start: int, stop: int, size: int, num_workers: int = 2) -> np.ndarray:
    """Images `start:stop` of the pack decoded to uint8 (n, size, size, 3) (`decode_image`: resized when the
    pack's size differs); an undecodable image is a DataError naming the pack and the image's index."""
    indices = range(start, min(stop, len(pack.images)))
    out = np.empty((len(indices), size, size, 3), dtype=np.uint8)

    def work(k: int) -> None:
        i = indices[k]
        try:
            out[k] = decode_image(pack.images[i], size)
        except DataError as err:
            raise DataError(f"{pack.path}: image {i} (pair {i // 2}) cannot be decoded: {err}") from None

    if num_workers <= 1:
        for k in range(len(indices)):
            work(k)
    else:
        with ThreadPoolExecutor(num_workers) as pool:
            list(pool.map(work, range(len(indices))))  # list(): re-raises a worker's error here
    return out


def decode_pack(pack: VerificationPack, size: int, num_workers: int = 2) -> torch.Tensor:
    """Every image of the pack as uint8 (2N, size, size, 3), in pack order (training decodes its packs once)."""
    return torch.from_numpy(decode_images(pack, 0, len(pack.images), size, num_workers))


def source_size(pack: VerificationPack) -> tuple[int, int]:
    """(width, height) of the pack's first image, read from its header (packs hold one size: 112x112 mostly)."""
    try:
        with Image.open(io.BytesIO(pack.images[0])) as img:
            return img.size
    except (OSError, ValueError, SyntaxError) as err:
        raise DataError(f"{pack.path}: image 0 cannot be decoded: {err}") from None
