"""Seeded mutations of a file's bytes: the same (data, seed) always gives the same broken file.

Byte operations work on any file: bit flips, overwrites with random bytes or "interesting" integers (0, -1, 2^31,
... as 1, 2 or 4 bytes of either endianness: they hit length and size fields), truncation, insertions, deletions,
duplicated chunks, another format's header, an empty file. Formats add their own operations (`Op`s passed as
`extra`): line and token edits of text files, edits of a parsed JSON tree, and edits of one member of a zip
archive (PyTorch checkpoints and .npz files are zip archives whose CRCs would otherwise stop most byte edits at
the first layer).
"""

from __future__ import annotations

import copy
import io
import json
import random
import struct
import zipfile
import zlib
from collections.abc import Callable, Sequence
from typing import Any

Op = Callable[[bytes, random.Random], tuple[bytes, str]]

MAGICS: dict[str, bytes] = {
    "png": b"\x89PNG\r\n\x1a\n",
    "jpeg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
    "gif": b"GIF89a",
    "bmp": b"BM",
    "webp": b"RIFF\x00\x00\x00\x00WEBP",
    "tiff": b"II*\x00",
    "zip": b"PK\x03\x04",
    "pickle": b"\x80\x04\x95",
    "npy": b"\x93NUMPY\x01\x00",
    "sqlite": b"SQLite format 3\x00",
    "gzip": b"\x1f\x8b\x08",
    "elf": b"\x7fELF",
    "json": b'{"format": ',
    "bom": b"\xef\xbb\xbf",
}
INTERESTING = (0, 1, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)
TOKENS = (
    "", "0", "1", "-1", "2", "nan", "inf", "-inf", "1e999", "9" * 40, "\u00e9", "\x00", "\t", "\r", " ", "\ufeff",
    "a" * 300, "null", "true", "[]", "{}", '"', ",", "../../etc/passwd", "\u202e",
)  # fmt: skip
JSON_VALUES: tuple[Any, ...] = (None, 0, -1, 1, 2**63, 1e308, "", "x", "nan", [], {}, [0], {"a": 1}, True, 0.5)


def _span(data: bytes, rng: random.Random, most: int) -> tuple[int, int]:
    start = rng.randrange(len(data))
    return start, min(len(data), start + rng.randint(1, most))


def bitflip(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    if not data:
        return b"\x01", "bitflip of an empty file"
    out, where = bytearray(data), []
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
        where.append(i)
    return bytes(out), f"bitflip at {sorted(where)}"


def overwrite(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    if not data:
        return bytes(rng.randbytes(8)), "overwrite of an empty file"
    start, stop = _span(data, rng, 16)
    return data[:start] + rng.randbytes(stop - start) + data[stop:], f"overwrite [{start}:{stop}]"


def interesting(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    value, width, order = rng.choice(INTERESTING), rng.choice((1, 2, 4)), rng.choice("<>")
    raw = struct.pack(order + {1: "B", 2: "H", 4: "I"}[width], value & ((1 << (8 * width)) - 1))
    start = rng.randrange(max(1, len(data) - width + 1))
    return data[:start] + raw + data[start + width :], f"int {value:#x} ({width} bytes {order}) at {start}"


def truncate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    cut = rng.randrange(len(data)) if data else 0
    return data[:cut], f"truncate at {cut}/{len(data)}"


def insert(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    at = rng.randint(0, len(data))
    n = rng.choice((1, 2, 4, 16, 64, 1024))
    chunk = rng.randbytes(n) if rng.random() < 0.5 else bytes([rng.randrange(256)]) * n
    return data[:at] + chunk + data[at:], f"insert {n} bytes at {at}"


def delete(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    if not data:
        return data, "delete from an empty file"
    start, stop = _span(data, rng, 256)
    return data[:start] + data[stop:], f"delete [{start}:{stop}]"


def duplicate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    if not data:
        return data, "duplicate in an empty file"
    start, stop = _span(data, rng, 512)
    at = rng.randint(0, len(data))
    return data[:at] + data[start:stop] + data[at:], f"copy [{start}:{stop}] to {at}"


def header(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    name, magic = rng.choice(sorted(MAGICS.items()))
    if rng.random() < 0.5:
        return magic + data, f"prepend the {name} header"
    return magic + data[len(magic) :], f"replace the header with {name}'s"


def empty(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    return b"", "empty file"


BYTE_OPS: tuple[tuple[Op, float], ...] = (
    (bitflip, 4),
    (overwrite, 3),
    (interesting, 3),
    (truncate, 3),
    (insert, 2),
    (delete, 2),
    (duplicate, 1),
    (header, 1),
    (empty, 0.2),
)


def byte_mutation(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One byte operation, drawn by weight."""
    ops, weights = zip(*BYTE_OPS)
    return rng.choices(ops, weights)[0](data, rng)


def text_op(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """A line or token edit of a text file (bytes that are not UTF-8 are kept as they are)."""
    lines = data.decode("utf-8", "surrogateescape").split("\n")
    i, kind = rng.randrange(len(lines)), rng.choice(("del", "dup", "swap", "token", "char", "deep"))
    if kind == "del":
        del lines[i]
    elif kind == "dup":
        lines.insert(rng.randrange(len(lines) + 1), lines[i])
    elif kind == "swap":
        j = rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
    elif kind == "token":
        words = lines[i].split(" ")
        words[rng.randrange(len(words))] = rng.choice(TOKENS)
        lines[i] = " ".join(words)
    elif kind == "deep":  # nesting deeper than a recursive parser's stack
        at = rng.randint(0, len(lines[i]))
        lines[i] = lines[i][:at] + rng.choice("[{(") * 5000 + lines[i][at:]
    else:
        at = rng.randint(0, len(lines[i]))
        lines[i] = (
            lines[i][:at] + rng.choice(("\r", "\t", " ", "\x00", "\ufeff", "\udcff", ",", "\n")) + lines[i][at:]
        )
    return "\n".join(lines).encode("utf-8", "surrogateescape"), f"text: {kind} on line {i + 1}"


def mutate_tree(tree: Any, rng: random.Random, values: Sequence[Any] = JSON_VALUES) -> tuple[Any, str]:
    """Replace (by one of `values`) or drop one node of a tree of dicts and lists (now and then the root)."""
    path: list[Any] = []
    node = tree
    while isinstance(node, dict | list) and node and rng.random() < 0.75:
        key = rng.choice(sorted(node, key=str)) if isinstance(node, dict) else rng.randrange(len(node))
        path.append(key)
        node = node[key]
    if not path:
        return copy.deepcopy(rng.choice(values)), "tree: root replaced"
    parent = tree
    for key in path[:-1]:
        parent = parent[key]
    if rng.random() < 0.3:
        del parent[path[-1]]
        return tree, f"tree: dropped {path}"
    parent[path[-1]] = copy.deepcopy(rng.choice(values))
    return tree, f"tree: {path} = {parent[path[-1]]!r:.40}"


def json_op(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Parse, change one node (`mutate_tree`), write back; a file that does not parse gets a byte edit."""
    try:
        tree = json.loads(data)
    except (ValueError, RecursionError):  # not JSON (any more), or nested too deep
        return byte_mutation(data, rng)
    tree, what = mutate_tree(tree, rng)
    return json.dumps(tree).encode(), what


def zip_member_op(inner: Sequence[Op] = ()) -> Op:
    """An Op that mutates one member of a zip archive (byte ops, or one of `inner`) and writes a valid archive
    around it again (stored, same names and order), so the reader gets past the CRC checks."""

    def op(data: bytes, rng: random.Random) -> tuple[bytes, str]:
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                members = [(info.filename, z.read(info)) for info in z.infolist()]
        except Exception:  # not a readable archive (any more): zipfile raises many kinds; a byte edit instead
            return byte_mutation(data, rng)
        if not members:
            return byte_mutation(data, rng)
        k = rng.randrange(len(members))
        name, payload = members[k]
        op = rng.choice(inner) if inner and rng.random() < 0.5 else byte_mutation
        payload, what = op(payload, rng)
        members[k] = (name, payload)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
            for member, content in members:
                z.writestr(zipfile.ZipInfo(member, date_time=(1980, 1, 1, 0, 0, 0)), content)  # not today's date
        return buf.getvalue(), f"member {name}: {what}"

    return op


def mutate(data: bytes, seed: str, extra: Sequence[Op] = ()) -> tuple[bytes, str]:
    """1 to 3 operations on `data`, drawn from `seed`: byte operations, or (half of the time, when given) one of
    the format's `extra` operations. Returns the mutated bytes and what was done, for the report."""
    rng = random.Random(seed)
    steps = []
    for _ in range(rng.choices((1, 2, 3), (6, 3, 1))[0]):
        op = rng.choice(extra) if extra and rng.random() < 0.5 else byte_mutation
        data, what = op(data, rng)
        steps.append(what)
    return data, "; ".join(steps)


def png_chunk_op(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Mutate the data of one PNG chunk (IHDR's width and height too) and give it a correct CRC again, so the
    decoder gets past the checksum."""
    signature = MAGICS["png"]
    if not data.startswith(signature):
        return byte_mutation(data, rng)
    chunks, pos = [], len(signature)
    while pos + 12 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        if pos + 12 + length > len(data):
            break
        chunks.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    if not chunks:
        return byte_mutation(data, rng)
    k = rng.randrange(len(chunks))
    kind, body = chunks[k]
    body, what = byte_mutation(body, rng)
    chunks[k] = (kind, body)
    out = signature + b"".join(
        struct.pack(">I", len(c)) + t + c + struct.pack(">I", zlib.crc32(t + c)) for t, c in chunks
    )
    return out + data[pos:], f"chunk {kind.decode('latin-1')}: {what} (CRC fixed)"
