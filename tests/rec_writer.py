"""A small writer of insightface RecordIO sets, for tests, the fuzz corpus and the benchmark: it lays records out
as dmlc-core's RecordIOWriter and insightface's rec builder do (tests/test_recordio.py checks that it reproduces
the MXNet-written fixture byte for byte), so damaged variants can be made record by record."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)


def ir_header(flag: int, label: float | Sequence[float], key: int, id2: int = 0) -> bytes:
    """MXNet's IRHeader ("IfQQ"): a scalar label in the header, or `flag` float32 labels after it."""
    if flag > 0:
        return struct.pack("<IfQQ", flag, 0.0, key, id2) + struct.pack(f"<{flag}f", *label)  # type: ignore[misc]
    return struct.pack("<IfQQ", 0, float(label), key, id2)  # type: ignore[arg-type]


def record(payload: bytes) -> bytes:
    """One record as dmlc-core writes it: split into parts at every 4-byte aligned magic number in the payload
    (cflag 1 first, 2 middle, 3 last; 0 whole), then padded with zeros to a multiple of 4 bytes."""
    out, start = [], 0
    for i in range(0, len(payload) // 4 * 4, 4):
        if payload[i : i + 4] == _MAGIC_BYTES:
            out.append(_MAGIC_BYTES + struct.pack("<I", (1 if start == 0 else 2) << 29 | (i - start)))
            out.append(payload[start:i])
            start = i + 4
    out.append(_MAGIC_BYTES + struct.pack("<I", (3 if start else 0) << 29 | (len(payload) - start)))
    out.append(payload[start:])
    out.append(bytes(-len(payload) % 4))
    return b"".join(out)


def write_records(folder: Path, payloads: Sequence[tuple[int, bytes]]) -> None:
    """train.rec and train.idx (`key<TAB>offset` lines) holding `payloads` of (key, payload) in order."""
    folder.mkdir(parents=True, exist_ok=True)
    blobs, lines, offset = [], [], 0
    for key, payload in payloads:
        blob = record(payload)
        blobs.append(blob)
        lines.append(f"{key}\t{offset}\n")
        offset += len(blob)
    (folder / "train.rec").write_bytes(b"".join(blobs))
    (folder / "train.idx").write_text("".join(lines))


def write_set(
    folder: Path, images: Sequence[Sequence[bytes]], size: int = 112, names: Sequence[str] | None = None
) -> Path:
    """An insightface training set: `images[c]` are the encoded images of class c. Header record 0 (flag 2,
    label [first identity key, end key]), image records 1.. (label = class), one identity record per class
    (label [first image key, end key]), `property`, and `classes.txt` when `names` are given."""
    payloads, ranges, key = [], [], 1
    for c, encoded in enumerate(images):
        ranges.append((key, key + len(encoded)))
        for data in encoded:
            payloads.append((key, ir_header(0, c, key) + data))
            key += 1
    first = key
    identities = [(first + c, ir_header(2, [a, b], first + c)) for c, (a, b) in enumerate(ranges)]
    write_records(folder, [(0, ir_header(2, [first, first + len(images)], 0)), *payloads, *identities])
    (folder / "property").write_text(f"{len(images)},{size},{size}")
    if names is not None:
        (folder / "classes.txt").write_text("".join(f"{c}\t{n}\n" for c, n in enumerate(names)))
    return folder
