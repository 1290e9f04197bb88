"""MXNet RecordIO read without MXNet: the file format of insightface's training sets (train.rec + train.idx).

The format, as dmlc-core's `recordio.cc` writes it and `mxnet/recordio.py` packs it:

- A record is `magic (u32 0xced7230a) | lrecord (u32: cflag << 29 | length) | payload (length bytes)`, padded with
  zeros to a multiple of 4 bytes; integers are little-endian. A payload that holds the magic number at a 4-byte
  aligned position is split there into parts (cflag 1 = first, 2 = middle, 3 = last; 0 = a whole record), and the
  reader puts the magic back between the parts.
- `train.idx` is text, one `key<TAB>byte offset` line per record: random access without a scan.
- An image record's payload starts with MXNet's IRHeader, `struct.pack("IfQQ", flag, label, id, id2)` (24 bytes);
  when `flag > 0` the label is instead the `flag` float32 values that follow it. The image bytes come next.

`RecordFile` reads records by offset with `os.pread` on a handle of its own process (reopened after a fork, never
shared), and `scan` reads the fixed-size heads of every record at once through a memory map, so a set's index is
checked when it is opened rather than halfway through an epoch.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facerec.errors import DataError

MAGIC = 0xCED7230A
LENGTH_MASK = (1 << 29) - 1
IR_HEADER = struct.Struct("<IfQQ")  # flag, label, id, id2: MXNet's "IfQQ" (native order and alignment on x86)
HEAD_BYTES = 40  # read per record by `scan`: magic, lrecord, the IRHeader and the first two float32 labels
_CHUNK = 1 << 16  # records per vectorised gather in `scan` (a 20 MiB index array)


@dataclass(frozen=True)
class IRHeader:
    """MXNet's image-record header. `label` is a float, or the `flag` float32 values when flag > 0."""

    flag: int
    label: float | np.ndarray
    id: int
    id2: int


def unpack(payload: bytes, where: str) -> tuple[IRHeader, bytes]:
    """A record's payload -> (its IRHeader, the bytes after it: the encoded image). `where` names the record in
    the DataError raised when the payload is too short for the header it declares."""
    if len(payload) < IR_HEADER.size:
        raise DataError(f"{where} holds {len(payload)} bytes, fewer than the 24 of an image-record header")
    flag, label, id_, id2 = IR_HEADER.unpack_from(payload)
    start = IR_HEADER.size
    if flag > 0:
        start += 4 * flag
        if len(payload) < start:
            raise DataError(
                f"{where}: its header declares {flag} labels but the record holds {len(payload)} bytes"
            )
        label = np.frombuffer(payload, "<f4", flag, IR_HEADER.size)
    return IRHeader(flag, label, id_, id2), payload[start:]


def read_index(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """`train.idx` -> (keys (N,) int64, byte offsets (N,) int64) in file order. A line that is not two
    non-negative integers, or a key given twice, is a DataError naming the line."""
    try:
        text = path.read_bytes().decode("ascii")
    except OSError as err:
        raise DataError(f"cannot read the index {path}: {err}") from None
    except UnicodeDecodeError as err:
        raise DataError(f"index {path} is not a text file of `key<TAB>offset` lines ({err})") from None
    keys, offsets = [], []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not all(f.isdigit() and len(f) <= 18 for f in fields):
            raise DataError(f"{path} line {number}: expected `key<TAB>byte offset`, got {line[:60]!r}")
        keys.append(int(fields[0]))
        offsets.append(int(fields[1]))
    if not keys:
        raise DataError(f"index {path} lists no records; re-create it with the .rec file")
    keys_a, offsets_a = np.array(keys, dtype=np.int64), np.array(offsets, dtype=np.int64)
    unique, first = np.unique(keys_a, return_index=True)
    if len(unique) != len(keys_a):
        twice = np.setdiff1d(np.arange(len(keys_a)), first)[0]
        raise DataError(f"{path} line {twice + 1}: key {keys[twice]} is listed twice; the index is damaged")
    return keys_a, offsets_a


@dataclass
class Heads:
    """What `scan` read at each offset: `valid` (the 8-byte record head lies inside the file), `magic_ok`,
    `cflag`, `length` (of the record's first part), and the IRHeader's `flag`, `label`, then `label_a` and
    `label_b`, the first two float32 labels that follow the header (meaningful only when flag > 0 and the
    record is long enough)."""

    valid: np.ndarray
    magic_ok: np.ndarray
    cflag: np.ndarray
    length: np.ndarray
    flag: np.ndarray
    label: np.ndarray
    label_a: np.ndarray
    label_b: np.ndarray


class RecordFile:
    """A .rec file opened for random access by byte offset; safe to use from threads, workers and DDP ranks.

    Each process opens its own handle on first use (one inherited through fork is never used: its pid differs),
    and `os.pread` keeps no shared file position, so threads share the handle. Pickling drops the handle."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.size = self.path.stat().st_size
        except OSError as err:
            raise DataError(f"cannot open {self.path}: {err}") from None
        self._fd: int | None = None
        self._pid = -1

    def __getstate__(self) -> dict:
        return {"path": self.path, "size": self.size, "_fd": None, "_pid": -1}

    def _handle(self) -> int:
        if self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        assert self._fd is not None
        return self._fd

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd, self._pid = None, -1

    def pread(self, offset: int, length: int, key: int) -> bytes:
        """`length` bytes at `offset`; fewer (the file shrank since it was opened) is a DataError naming `key`."""
        try:
            data = os.pread(self._handle(), length, offset)
        except OSError as err:
            raise DataError(f"record {key} of {self.path}: read failed ({err})") from None
        if len(data) != length:
            raise DataError(f"record {key} of {self.path} is cut short: the file ended (was it replaced?)")
        return data

    def read(self, offset: int, key: int) -> bytes:
        """The whole payload of the record at `offset`, its parts joined as dmlc-core's reader joins them."""
        parts: list[bytes] = []
        position, first = offset, True
        while True:
            if position + 8 > self.size:
                raise DataError(f"record {key} of {self.path} is truncated: the file ends inside its parts")
            magic, lrecord = struct.unpack("<II", self.pread(position, 8, key))
            cflag, length = lrecord >> 29, lrecord & LENGTH_MASK
            if magic != MAGIC or cflag not in ((0, 1) if first else (2, 3)):
                raise DataError(
                    f"record {key} of {self.path}: no valid record head at byte {position} "
                    f"(magic {magic:#010x}, part flag {cflag}); the file is damaged"
                )
            if position + 8 + length > self.size:
                raise DataError(f"record {key} of {self.path} is truncated: {length} bytes declared at {position}")
            parts.append(self.pread(position + 8, length, key))
            if cflag in (0, 3):
                return b"".join(parts)
            parts.append(struct.pack("<I", MAGIC))
            position += 8 + (length + 3) // 4 * 4
            first = False

    def scan(self, offsets: np.ndarray) -> Heads:
        """The first HEAD_BYTES bytes at every offset (N,), gathered through a memory map in chunks: one pass
        over the file's pages, not N reads. Bytes past the end of the file read as zero."""
        n = len(offsets)
        raw = np.zeros((n, HEAD_BYTES), dtype=np.uint8)
        valid = (offsets >= 0) & (offsets <= self.size - 8)
        if self.size > 0 and valid.any():
            data = np.memmap(self.path, dtype=np.uint8, mode="r")
            span = np.arange(HEAD_BYTES, dtype=np.int64)
            for start in range(0, n, _CHUNK):
                where = offsets[start : start + _CHUNK, None] + span
                inside = valid[start : start + _CHUNK, None] & (where < self.size)
                raw[start : start + _CHUNK] = np.where(inside, data[np.where(inside, where, 0)], 0)
            del data
        words = raw.view("<u4")  # (N, 10): magic, lrecord, flag, label, id (2), id2 (2), label_a, label_b
        floats = raw.view("<f4")
        return Heads(
            valid=valid,
            magic_ok=valid & (words[:, 0] == MAGIC),
            cflag=(words[:, 1] >> 29).astype(np.uint8),
            length=(words[:, 1] & LENGTH_MASK).astype(np.int64),
            flag=words[:, 2].astype(np.int64),
            label=floats[:, 3].copy(),
            label_a=floats[:, 8].copy(),
            label_b=floats[:, 9].copy(),
        )


def check_heads(file: RecordFile, idx: Path, keys: np.ndarray, offsets: np.ndarray, heads: Heads) -> None:
    """Every record that the index `idx` lists (`keys`, `offsets`, their `scan` in `heads`) starts with a record
    head, and its first part lies inside the file and ends before the next record begins; split records are
    followed to their last part. The bad record nearest the start of the file is a DataError naming its key."""
    order = np.argsort(offsets, kind="stable")
    limit = np.empty_like(offsets)
    limit[order] = np.minimum(np.append(offsets[order][1:], file.size), file.size)  # the next record, or the end
    problems = [
        (~heads.valid, f"its offset in {idx} is past the end of the file ({file.size} bytes): the file is "
         "truncated, or the index belongs to another file"),
        (~heads.magic_ok, "no RecordIO magic there: the index does not match the file, or the file is damaged"),
        (heads.cflag > 1, "it points into a split record, not at its start: the index does not match the file"),
        (offsets + 8 + heads.length > limit, "its length runs past the next record or the end of the file: the "
         "file is truncated or damaged"),
    ]  # fmt: skip
    bad = np.zeros(len(keys), dtype=bool)
    for mask, _ in problems:
        bad |= mask
    if bad.any():
        i = int(order[np.argmax(bad[order])])
        reason = next(text for mask, text in problems if mask[i])
        raise DataError(f"record {keys[i]} of {file.path} (at byte {offsets[i]}): {reason}")
    for i in np.flatnonzero(heads.cflag == 1):
        file.read(int(offsets[i]), int(keys[i]))  # every part in place (a few records per big set, if any)
