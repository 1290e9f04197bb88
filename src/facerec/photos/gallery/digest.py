"""A gallery's content digest: one 64-bit number for the set of its (photo id, person id, embedding) rows.

gallery.db keeps it in the `meta` table (key `digest`, 16 hex digits), changed in the same transaction as every
enrolment and removal; a cache read from `index.cache` must hold rows with the same digest, or it is not this
database's (an old copy, a file forged with a valid checksum) and the index is rebuilt from the database.

The digest of a set of rows is the sum, modulo 2**64, of one hash per row: rows can be added and taken away
one transaction at a time, and the order in which an index keeps them does not matter. A row's hash mixes (the
splitmix64 finaliser) a weighted sum of its id, its person id and the 32-bit words of its float32 embedding,
with fixed odd 64-bit weights. It finds any accidental difference; it is no cryptographic signature (anyone who
can write the folder can also edit gallery.db).
"""

from __future__ import annotations

import sqlite3
from typing import Any

import numpy as np

from facerec.photos.gallery.cache import faiss

MASK = (1 << 64) - 1
EMPTY = 0  # the digest of no rows
_CHUNK = 8192  # rows hashed at once: (8192, D) uint64 words, 16 MiB at D=256


def _weights(dim: int) -> np.ndarray:
    """(dim + 2,) fixed odd uint64 weights: one per embedding word, then the id's and the person's."""
    return np.random.default_rng(0x9A11E27).integers(0, 1 << 63, dim + 2, dtype=np.uint64) * 2 + 1


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, elementwise on uint64 (wraps modulo 2**64)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def of_rows(ids: np.ndarray, owners: np.ndarray, vectors: np.ndarray) -> int:
    """The digest of rows: photo ids (N,), person ids (N,), float32 embeddings (N, D) as stored."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    w = _weights(x.shape[1])
    total = EMPTY
    with np.errstate(over="ignore"):
        for i in range(0, len(x), _CHUNK):
            words = x[i : i + _CHUNK].view(np.uint32).astype(np.uint64)
            h = words @ w[:-2] + np.asarray(ids[i : i + _CHUNK], np.uint64) * w[-2]
            h += np.asarray(owners[i : i + _CHUNK], np.uint64) * w[-1]
            total = (total + int(_mix(h).sum(dtype=np.uint64))) & MASK
    return total


def of_index(index: Any, ids: np.ndarray, owners: np.ndarray) -> int | None:
    """The digest of what a gallery index holds: its photo ids and vectors, with the owners of `ids` (N,),
    ascending, (N,) (the cache's lists). None when the index holds an id that is not in `ids`."""
    f = faiss()
    inner = f.downcast_index(index)
    if isinstance(inner, f.IndexIVF):  # inverted lists: (ids, raw float32 codes) per list
        parts = []
        for lst in range(inner.nlist):
            n = inner.invlists.list_size(lst)
            if n:
                codes = f.rev_swig_ptr(inner.invlists.get_codes(lst), n * inner.code_size)
                part_ids = f.rev_swig_ptr(inner.invlists.get_ids(lst), n)
                parts.append((np.array(part_ids, np.int64), np.frombuffer(codes, np.float32).reshape(n, inner.d)))
    else:  # an IndexIDMap over a flat index, an HNSW graph (vectors in its flat `storage`) or LSH + refine
        sub = f.downcast_index(inner.index)
        if isinstance(sub, f.IndexHNSW):
            flat = f.downcast_index(sub.storage)
        elif isinstance(sub, f.IndexRefine):
            flat = f.downcast_index(sub.refine_index)
        else:
            flat = sub
        vectors = f.rev_swig_ptr(flat.codes.data(), flat.codes.size()) if flat.ntotal else np.zeros(0, np.uint8)
        parts = [(f.vector_to_array(inner.id_map), np.frombuffer(vectors, np.float32).reshape(-1, inner.d))]
    total = EMPTY
    for part_ids, vectors in parts:
        pos = np.minimum(np.searchsorted(ids, part_ids), max(len(ids) - 1, 0))
        if len(part_ids) and (not len(ids) or np.any(ids[pos] != part_ids)):
            return None
        total = (total + of_rows(part_ids, owners[pos], vectors)) & MASK
    return total


def stored(conn: sqlite3.Connection) -> int | None:
    """The digest gallery.db records (inside the caller's transaction), or None: a gallery made before digests
    (Store fills it in) or a damaged value."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'digest'").fetchone()
    value = row[0] if row else None
    if not isinstance(value, str) or len(value) != 16:
        return None
    try:
        return int(value, 16)
    except ValueError:
        return None


def text(value: int) -> str:
    """How a digest is stored in the meta table."""
    return f"{value & MASK:016x}"


def reset(conn: sqlite3.Connection, value: int) -> None:
    """Record `value` as the digest, inside the caller's write transaction (a migration, a fill-in)."""
    conn.execute("INSERT OR REPLACE INTO meta VALUES ('digest', ?)", (text(value),))


def change(conn: sqlite3.Connection, delta: int) -> None:
    """Add `delta` (a rows' digest, or its negative for removed rows) to the stored digest, inside the caller's
    write transaction; a gallery without one keeps none (Store fills it in when it is next opened)."""
    old = stored(conn)
    if old is not None:
        reset(conn, old + delta)
