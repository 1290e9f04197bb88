"""Fuzz target for insightface RecordIO training sets (train.rec + train.idx): the set opened as training opens
it, then every image read, batch by batch and up front."""

from __future__ import annotations

import io
import random
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from facerec.data.recordset import open_recordio
from fuzzing.base import Seed, Target
from fuzzing.mutate import INTERESTING, text_op
from rec_writer import MAGIC, ir_header, write_records, write_set

SIZE = 16  # the decode size of the cases
FLOATS = (0.0, 1.0, 2.0, 3.0, -1.0, 2.5, 1e9, float("nan"), float("inf"), -0.0, 2.0**31)


def _jpeg(colour: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.clip(colour + rng.normal(0, 20, (20, 20, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=80)
    return buf.getvalue()


def rec_corpus(folder: Path) -> list[Seed]:
    """A set of 3 identities x 2 images (20x20 JPEGs) as insightface lays it out, with property and classes.txt;
    its .rec and its .idx each mutated; a header-less set (every record an image); a set whose first image is
    stored in three parts (its JPEG holds the magic number twice at aligned positions)."""
    classes = [[_jpeg(60 + 60 * c, 2 * c + i) for i in range(2)] for c in range(3)]
    write_set(folder / "set", classes, SIZE, ["ann", "bob", "cid"])
    files = {name: (folder / "set" / name).read_bytes() for name in ("train.rec", "train.idx", "property")}
    files["classes.txt"] = (folder / "set" / "classes.txt").read_bytes()
    flat = [(k, ir_header(0, k % 3, k)) for k in range(6)]
    write_records(folder / "flat", [(k, head + classes[k % 3][k // 3]) for k, head in flat])
    bare = {name: (folder / "flat" / name).read_bytes() for name in ("train.rec", "train.idx")}
    magic = struct.pack("<I", MAGIC)
    jpeg = classes[0][0]
    pad = -(len(ir_header(0, 0, 1)) + 6) % 4
    comment = b"x" * pad + magic + b"yyyy" + magic
    split = jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + jpeg[2:]
    write_set(folder / "split", [[split, classes[0][1]], classes[1]], SIZE)
    parts = {name: (folder / "split" / name).read_bytes() for name in ("train.rec", "train.idx", "property")}
    return [
        Seed("train.rec", files, "train.rec", (record_op,)),
        Seed("train.idx", files, "train.idx", (text_op, index_op)),
        Seed("property", files, "property", (text_op,)),
        Seed("header-less train.rec", bare, "train.rec", (record_op,)),
        Seed("split train.rec", parts, "train.rec", (record_op,)),
    ]


def _records(data: bytes) -> list[int]:
    """The offsets of the records that follow one another from the start of `data` (as far as they do)."""
    offsets, pos = [], 0
    while pos + 8 <= len(data):
        offsets.append(pos)
        pos += 8 + ((struct.unpack_from("<I", data, pos + 4)[0] & (1 << 29) - 1) + 3) // 4 * 4
    return offsets


def record_op(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One field of one record: its magic, its length and part flag, the IRHeader's flag, label, id, the float32
    labels after it, or the first bytes of its image."""
    offsets = _records(data)
    if not offsets:
        return data, "record: none to edit"
    at = rng.choice(offsets)
    field, offset = rng.choice(
        [("magic", 0), ("lrecord", 4), ("flag", 8), ("label", 12), ("id", 16), ("labels", 32), ("image", 36)]
    )
    if field in ("label", "labels"):
        value = struct.pack("<f", rng.choice(FLOATS))
    elif field == "image":
        value = rng.randbytes(rng.randint(1, 64))
    elif field == "lrecord" and rng.random() < 0.5:
        (lrecord,) = struct.unpack_from("<I", data, at + 4)
        value = struct.pack("<I", (lrecord + rng.choice((-9, -4, -1, 1, 4, 100, 1 << 29, 2 << 29))) % 2**32)
    else:
        value = struct.pack("<I", rng.choice(INTERESTING))
    pos = at + offset
    return data[:pos] + value + data[pos + len(value) :], f"record at {at}: {field} = {value.hex()}"


def index_op(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One key or offset of train.idx moved by a little or set to an interesting number."""
    lines = data.decode("ascii", "replace").splitlines()
    i, column = rng.randrange(len(lines)), rng.randrange(2)
    fields = lines[i].split("\t")
    if len(fields) != 2 or not fields[column].isdigit():
        return data, "index: line not editable"
    value = int(fields[column])
    fields[column] = str(rng.choice((value + rng.choice((-8, -4, -1, 1, 4, 8)), *INTERESTING, 10**17)))
    lines[i] = "\t".join(fields)
    return ("\n".join(lines) + "\n").encode(), f"index line {i + 1}: {lines[i]!r}"


def run_recordio(case: Path, context: Any) -> tuple[str, str]:
    """open_recordio as training opens a big set (decoded batch by batch: every image read in two batches), then
    as it opens a small one (decoded up front); labels in range, images (N, 16, 16, 3) uint8 either way."""
    lazy = open_recordio(case, SIZE, num_workers=2, log=lambda m: None, eager_bytes=0)
    n, classes = len(lazy), len(lazy.classes)
    assert lazy.images.shape == (n, SIZE, SIZE, 3) and lazy.labels.shape == (n,), (lazy.images.shape, n)
    assert n > 0 and 0 <= int(lazy.labels.min()) and int(lazy.labels.max()) < classes, (lazy.labels, classes)
    batches = [lazy.images[idx] for idx in torch.randperm(n).split(max(n // 2, 1))]
    assert all(b.dtype == torch.uint8 and b.shape[1:] == (SIZE, SIZE, 3) for b in batches)
    eager = open_recordio(case, SIZE, num_workers=1, log=lambda m: None)
    assert isinstance(eager.images, torch.Tensor) and len(eager) == n - lazy.images.replaced, (len(eager), n)
    assert eager.classes == lazy.classes and int(eager.labels.max()) < classes
    return "ok", f"{n} images of {classes} identities, {lazy.images.replaced} undecodable"


REC_TARGETS = [
    Target("rec", "insightface train.rec / train.idx / property -> data.recordset.open_recordio", rec_corpus,
           run_recordio),
]  # fmt: skip
