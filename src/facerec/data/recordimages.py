"""The images of a RecordIO training set, decoded when training indexes them (`RecordImages`), or all at once.

MS1M holds 5.8M images: 218 GB as a decoded uint8 array at 112x112, so a big .rec set cannot be decoded up front
the way identity folders are (`data/memory.py`). `RecordImages` stands in for `ImageSet.images (N, S, S, 3)
uint8` and answers what the training and validation code asks of that tensor: `images[idx]` for a LongTensor,
array, list, slice or int decodes those records (in a thread pool) into a uint8 tensor, and `shape`, `dtype`,
`device`, `len()` describe the whole. Nothing is cached, so memory stays bounded by one batch.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from facerec.data.images import decode_image
from facerec.data.recordio import RecordFile, unpack
from facerec.errors import DataError

Log = Callable[[str], None]
_CHUNK = 64  # records per thread-pool task


@dataclass
class RecordIndex:
    """Where each image of a .rec set lives: the encoded image is `lengths[i]` bytes at `starts[i]` of `file`
    (length -1: a record split into parts, read whole from `offsets[i]`); `keys[i]` is its train.idx key and
    `labels[i]` its class. All arrays (N,) int64."""

    file: RecordFile
    keys: np.ndarray
    offsets: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray
    labels: np.ndarray

    def image_bytes(self, row: int) -> bytes:
        key = int(self.keys[row])
        if self.lengths[row] < 0:
            return unpack(self.file.read(int(self.offsets[row]), key), f"record {key} of {self.file.path}")[1]
        return self.file.pread(int(self.starts[row]), int(self.lengths[row]), key)

    def name(self, row: int) -> str:
        return f"record {int(self.keys[row])} of {self.file.path}"


class RecordImages:
    """`rows` of a RecordIndex as a lazily decoded (N, size, size, 3) uint8 image array (see the module doc).

    A record that does not decode (its JPEG is damaged: found only when decoded, since decoding every image when
    the set is opened would cost as much as an epoch) is replaced by another image of the same identity, so an
    epoch never stops halfway and the batch keeps its label; the first is logged with its key, and the count at
    10, 100, 1000, ... . An identity without a single decodable image gives a black image."""

    dtype = torch.uint8
    device = torch.device("cpu")
    ndim = 4

    def __init__(self, index: RecordIndex, rows: np.ndarray, size: int, workers: int = 2, log: Log = print):
        self.index, self.rows, self.size, self.workers, self.log = index, rows, size, workers, log
        self.replaced = 0
        self._bad: set[int] = set()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = -1

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.rows), self.size, self.size, 3))

    def __len__(self) -> int:
        return len(self.rows)

    def numel(self) -> int:
        return len(self.rows) * self.size * self.size * 3

    def element_size(self) -> int:
        return 1

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pool": None, "_pool_pid": -1}

    def __getitem__(self, item: Any) -> torch.Tensor:
        if isinstance(item, int | np.integer) or (isinstance(item, torch.Tensor) and item.ndim == 0):
            return self[[int(item)]][0]
        if isinstance(item, slice):
            positions = np.arange(len(self.rows))[item]
        else:
            positions = np.asarray(item.cpu() if isinstance(item, torch.Tensor) else item)
            positions = (
                np.flatnonzero(positions) if positions.dtype == bool else positions.astype(np.int64).ravel()
            )
            if ((positions < -len(self.rows)) | (positions >= len(self.rows))).any():
                raise IndexError(f"index out of range for {len(self.rows)} images")
        return torch.from_numpy(self._decode(self.rows[positions]))

    def subset(self, positions: torch.Tensor | np.ndarray) -> RecordImages:
        """The images at `positions`, still decoded lazily (what `take_rows` gives for a held-out split)."""
        rows = self.rows[np.asarray(positions, dtype=np.int64).reshape(-1)]
        return RecordImages(self.index, rows, self.size, self.workers, self.log)

    def decode_all(self) -> tuple[np.ndarray, np.ndarray]:
        """Every image decoded once, up front: (images (N_ok, S, S, 3) uint8, ok (N,) bool); the records that
        do not decode are left out, not replaced (what `facerec pack` and small sets want)."""
        out = np.empty((len(self.rows), self.size, self.size, 3), dtype=np.uint8)
        ok = self._decode_into(self.rows, out)
        return (out if ok.all() else out[ok]), ok

    def _decode(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), self.size, self.size, 3), dtype=np.uint8)
        ok = self._decode_into(rows, out)
        for i in np.flatnonzero(~ok):
            out[i] = self._replacement(int(rows[i]))
        return out

    def _decode_into(self, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Decode `rows` into `out`, in the thread pool when there are several chunks; (N,) bool ok."""
        ok = np.zeros(len(rows), dtype=bool)

        def work(start: int) -> None:
            for i in range(start, min(start + _CHUNK, len(rows))):
                row = int(rows[i])
                if row in self._bad:
                    continue
                data = self.index.image_bytes(row)  # a read error (the file changed since it was opened) raises
                try:
                    out[i] = decode_image(data, self.size)
                    ok[i] = True
                except DataError:
                    pass  # a damaged image: the caller leaves it out or replaces it

        starts = range(0, len(rows), _CHUNK)
        if self.workers <= 1 or len(rows) <= _CHUNK:
            for start in starts:
                work(start)
        else:
            for future in [self._executor().submit(work, s) for s in starts]:
                future.result()
        return ok

    def _executor(self) -> ThreadPoolExecutor:
        """This process's decoding threads (a pool inherited through fork has no threads: make a new one)."""
        if self._pool is None or self._pool_pid != os.getpid():
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="rec-decode")
            self._pool_pid = os.getpid()
        return self._pool

    def _replacement(self, row: int) -> np.ndarray:
        """Another decodable image of `row`'s identity, for a record that does not decode."""
        self._count_bad(row)
        out = np.empty((1, self.size, self.size, 3), dtype=np.uint8)
        for other in np.flatnonzero(self.index.labels[self.rows] == self.index.labels[row]):
            candidate = self.rows[other : other + 1]
            if int(candidate[0]) not in self._bad:
                if self._decode_into(candidate, out)[0]:
                    return out[0]
                self._count_bad(int(candidate[0]))
        return np.zeros((self.size, self.size, 3), dtype=np.uint8)

    def _count_bad(self, row: int) -> None:
        """Remember an undecodable record (it is not decoded again) and log the count at 1, 10, 100, ..."""
        if row in self._bad:
            return
        self._bad.add(row)
        self.replaced += 1
        if self.replaced == 1 or np.log10(self.replaced).is_integer():
            self.log(
                f"{self.replaced} undecodable image record(s) replaced by another image of the same identity so "
                f"far, e.g. {self.index.name(row)}; check the .rec file (`facerec pack` lists them all)"
            )


def take_rows(images: torch.Tensor | RecordImages, idx: torch.Tensor) -> torch.Tensor | RecordImages:
    """Rows `idx` of an ImageSet's images: copied out of a tensor, or a still-lazy view of RecordImages (a split
    of a big .rec set must not decode it all)."""
    return images.subset(idx) if isinstance(images, RecordImages) else images[idx]
