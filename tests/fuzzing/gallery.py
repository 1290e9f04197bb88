"""Fuzz target for gallery folders: the SQLite database (`gallery.db`), the FAISS index cache (`index.cache`) and
the old layout's files (gallery.json, vectors.npy, ids.npy, index.faiss, migrated when opened), through
`Gallery.open`, `people`, `search` and `add`.

Beyond byte edits: `sqlite_op` changes one value of a table through SQLite itself (a valid database holding
something unexpected), and `cache_crc_op` edits the cache's body and gives it a correct CRC again, so the FAISS
reader gets the damaged index instead of the checksum refusing it.
"""

from __future__ import annotations

import json
import random
import sqlite3
import struct
import tempfile
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from facerec.photos.gallery import Gallery
from fuzzing.base import Seed, Target
from fuzzing.mutate import byte_mutation, json_op, mutate_tree

DIM = 16
SQL_VALUES: tuple[Any, ...] = (None, -1, 0, 1, 2**62, 2**63 - 1, "", "x", "cosine", b"", b"\x00" * 7, 1e308, "nan")


def random_vectors(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


def sqlite_op(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Set one value of one row of one table (or delete a row) through SQLite; a file SQLite cannot open gets a
    byte edit instead."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "g.db"
        path.write_bytes(data)
        try:
            with sqlite3.connect(path) as conn:
                tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
                table = rng.choice(sorted(t for t in tables if not t.startswith("sqlite_")))
                columns = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
                rowids = [r[0] for r in conn.execute(f"SELECT rowid FROM {table}")]
                if not rowids:
                    return byte_mutation(data, rng)
                rowid = rng.choice(rowids)
                if rng.random() < 0.2:
                    conn.execute(f"DELETE FROM {table} WHERE rowid = ?", (rowid,))
                    what = f"sqlite: deleted row {rowid} of {table}"
                else:
                    column, value = rng.choice(columns), rng.choice(SQL_VALUES)
                    conn.execute(f"UPDATE {table} SET {column} = ? WHERE rowid = ?", (value, rowid))
                    what = f"sqlite: {table}.{column} of row {rowid} = {value!r:.30}"
            conn.close()
        except (sqlite3.Error, IndexError):
            return byte_mutation(data, rng)
        return path.read_bytes(), what


def forge_cache(data: bytes, edit: Callable[[dict[str, Any], bytes], tuple[Any, bytes]]) -> bytes:
    """An index cache (magic, 4-byte length, JSON header, body) with `edit(header, body)` applied and the header's
    CRC of the body made right again. ValueError when `data` is not laid out so."""
    start = data.index(b"{")
    (size,) = struct.unpack("<I", data[start - 4 : start])
    head, body = edit(json.loads(data[start : start + size]), data[start + size :])
    if isinstance(head, dict):
        head["crc32"] = zlib.crc32(body)
    raw = json.dumps(head).encode()
    return data[: start - 4] + struct.pack("<I", len(raw)) + raw + body


def cache_crc_op(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """An edit of the index cache's body or of one of its header's values, with a valid CRC: a forged cache."""
    done: list[str] = []

    def edit(head: dict[str, Any], body: bytes) -> tuple[Any, bytes]:
        if rng.random() < 0.7:
            body, what = byte_mutation(body, rng)
        else:
            head, what = mutate_tree(head, rng)
        done.append(what)
        return head, body

    try:
        return forge_cache(data, edit), f"cache: {done[0]} (CRC fixed)"
    except (ValueError, TypeError, struct.error):  # not a cache (any more): a byte edit instead
        return byte_mutation(data, rng)


def legacy_files(vectors: np.ndarray, names: list[str]) -> dict[str, bytes]:
    """A gallery folder as facerec wrote it before gallery.db (schema 1)."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(len(unit), dtype=np.int64)
    meta = {"format": "facerec-gallery", "version": 1, "metric": "cosine", "dim": DIM, "index": "flat", "nlist": 0}
    meta.update(nprobe=0, fingerprint=None, next_id=len(ids))
    meta["entries"] = {str(i): {"name": n, "source": f"{n}/{i}.jpg"} for i, n in enumerate(names)}
    index = faiss.IndexIDMap(faiss.IndexFlatIP(DIM))
    index.add_with_ids(unit, ids)
    files = {"gallery.json": json.dumps(meta, indent=1).encode()}
    for name, array in (("vectors.npy", unit), ("ids.npy", ids)):
        with tempfile.TemporaryFile() as f:
            np.save(f, array)
            f.seek(0)
            files[name] = f.read()
    files["index.faiss"] = faiss.serialize_index(index).tobytes()
    return files


def seed_gallery(folder: Path) -> dict[str, bytes]:
    """gallery.db and index.cache of a cosine gallery of 3 people, 2 photos each; the same bytes in every run (its
    random id and times set to fixed values, the file vacuumed, the cache written again)."""
    root = folder / "gallery_seed"
    names = ["ann", "ann", "bob", "bob", "cid", "cid"]
    vectors = random_vectors(len(names), 0)
    if not (root / "gallery.db").exists():
        with Gallery.open(root, "cosine", DIM) as g:
            for name in ("ann", "bob", "cid"):
                g.add(name, vectors[[i for i, n in enumerate(names) if n == name]])
        conn = sqlite3.connect(root / "gallery.db")
        conn.execute("UPDATE meta SET value = ? WHERE key = 'uid'", ("0123456789abcdef",))
        conn.execute("UPDATE meta SET value = 0.0 WHERE key = 'created'")
        conn.execute("UPDATE people SET added = 0.0")
        conn.execute("UPDATE photos SET added = 0.0")
        conn.commit()
        conn.execute("VACUUM")
        conn.close()
        (root / "index.cache").unlink(missing_ok=True)
        Gallery.open(root).close()  # writes the cache again
    return {name: (root / name).read_bytes() for name in ("gallery.db", "index.cache")}


def gallery_corpus(folder: Path) -> list[Seed]:
    """The gallery as gallery.db + index.cache, as gallery.db alone, and in the old layout; each file mutated
    in its own seed (index.cache by byte edits: its checksum catches them, and the index is rebuilt)."""
    files = seed_gallery(folder)
    legacy = legacy_files(random_vectors(6, 0), ["ann", "ann", "bob", "bob", "cid", "cid"])
    return [
        Seed("gallery.db", files, "gallery.db", (sqlite_op,)),
        Seed("index.cache", files, "index.cache"),
        Seed("gallery.db alone", {"gallery.db": files["gallery.db"]}, "gallery.db", (sqlite_op,)),
        Seed("legacy gallery.json", legacy, "gallery.json", (json_op,)),
        Seed("legacy vectors.npy", legacy, "vectors.npy"),
        Seed("legacy ids.npy", legacy, "ids.npy"),
        Seed("legacy index.faiss", legacy, "index.faiss"),
    ]


def forged_cache_corpus(folder: Path) -> list[Seed]:
    """index.cache edited with its checksum made right (a forged file, not an accident): FAISS reads it."""
    files = seed_gallery(folder)
    return [Seed("index.cache, checksum fixed", files, "index.cache", (cache_crc_op,))]


def _use(case: Path, exact: bool) -> tuple[str, str]:
    """Open the folder, list the people, search, enroll someone new, search again. `exact`: scores must be
    possible ones (finite; at most 1 for cosine) and the new person must be their own best match."""
    query = random_vectors(1, 1)
    with Gallery.open(case) as g:
        people = g.people()
        assert all(isinstance(n, str) and c > 0 for n, c in people.items()), people
        results = g.search(query, k=3) if len(g) else [[]]
        g.add("zed", query)
        results += g.search(query, k=3)
        assert "zed" in g.people() and all(len(r) <= 3 for r in results), results
        for matches in results:
            assert {m.name for m in matches} <= set(g.people()), (matches, g.people())
            assert not exact or all(abs(m.score) <= 1 + 1e-3 for m in matches), matches
        assert not exact or (results[-1][0].name == "zed" and abs(results[-1][0].score - 1) < 1e-4), results
    return "ok", f"{len(people)} people"


def run_gallery(case: Path, context: Any) -> tuple[str, str]:
    return _use(case, exact=True)


def run_forged(case: Path, context: Any) -> tuple[str, str]:
    """A forged cache (it names its database and has a valid checksum) that does not hold the database's rows is
    set aside with a warning and rebuilt ("clear"): scores stay exact either way."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outcome, detail = _use(case, exact=True)
    if any("does not hold what" in str(w.message) for w in caught):
        return "clear", f"forged index.cache set aside and rebuilt; {detail}"
    return outcome, detail


GALLERY_TARGETS = [
    Target("gallery", "gallery folders -> Gallery.open + people + search + add", gallery_corpus, run_gallery),
    Target("gallery_cache", "forged index.cache (valid checksum) -> as gallery", forged_cache_corpus, run_forged),
]
