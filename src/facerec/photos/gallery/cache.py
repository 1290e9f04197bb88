"""The FAISS index of a gallery: built from gallery.db, kept in `index.cache` only to open large galleries fast.

`index.cache` is derived data. Its header names the database it came from (`uid`), the index kind and the epoch
it was chosen at, and the database `version` it reflects; a payload checksum guards the rest. A cache of another
database or epoch, from the future, truncated or corrupt, is ignored and the index is rebuilt from the database;
one that is only behind is brought up to date by ids (photo ids are never reused). It is written atomically:
a temporary file, fsync, rename, so a reader finds the old cache or the new one, never half of one.

Index kinds (all searched through `Scoring`: inner product on unit vectors for cosine, L2 for euclidean):
`flat` (exact, `IndexIDMap` over `IndexFlat*`), `ivf` (`IndexIVFFlat` over centroids stored in the database, so
every process builds the same lists without training), `hnsw` (`IndexHNSWFlat` in an `IndexIDMap`; it cannot
remove vectors, so a removal rebuilds it), `lsh` (sign bits of a seeded random rotation searched by Hamming
distance, the best candidates scored exactly: `IndexRefine` over `IndexLSH` and a flat index, in an `IndexIDMap`;
rebuilt on removal too). Small batches (one identify query, one enrolment) run on one FAISS
thread (`one_thread`).
"""

from __future__ import annotations

import json
import os
import secrets
import struct
import time
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facerec.metrics.scoring import FAISS_HINT, Scoring
from facerec.photos.gallery.settings import Settings

CACHE_NAME = "index.cache"
_MAGIC = b"facerec-gallery-index\n"
_STALE_TEMP_S = 3600.0  # a temporary file this old belongs to a process that died: remove it
SMALL_BATCH = 16  # queries searched or vectors added at once: fewer run on one FAISS thread


def faiss() -> Any:
    try:
        import faiss as module
    except ImportError as err:
        raise ImportError(f"{FAISS_HINT} ({err})") from None
    return module


@contextmanager
def one_thread(rows: int) -> Iterator[None]:
    """Run FAISS on the calling thread alone while `rows` < SMALL_BATCH; FAISS's default thread count otherwise.

    A single query or vector gains nothing from an OpenMP team, and on a busy machine every barrier waits for a
    descheduled team member: bench/gallery.py (2 shared cores, load ~4) measured an exact search of 100,000
    vectors at p50 32 ms on two threads and 7 ms on one, and adding one vector to an IVF index at 6.8 ms against
    0.007 ms. The thread count is an OpenMP setting of the calling thread only, so other threads are unaffected.
    """
    if rows >= SMALL_BATCH:
        yield
        return
    module = faiss()
    before = module.omp_get_max_threads()
    module.omp_set_num_threads(1)
    try:
        yield
    finally:
        module.omp_set_num_threads(before)


def empty_index(s: Settings, centroids: np.ndarray | None) -> Any:
    """An empty index of the gallery's kind that takes `add_with_ids`; an IVF one uses the stored centroids (an
    IVF gallery without them, which `reindex` never leaves, is searched exactly)."""
    scoring = Scoring.of(s.metric)
    if s.index == "ivf" and centroids is not None and len(centroids) == s.nlist:
        index = scoring.faiss_index(s.dim, s.nlist)
        index.quantizer.add(np.ascontiguousarray(centroids, dtype=np.float32))
        index.is_trained = True  # an IVF-Flat index learns nothing but its quantizer
        return index
    if s.index == "hnsw":
        return faiss().IndexIDMap(scoring.faiss_index(s.dim, hnsw_m=s.hnsw_m, ef_search=s.ef_search))
    if s.index == "lsh" and s.lsh_bits > 0:
        return faiss().IndexIDMap(scoring.faiss_index(s.dim, lsh_bits=s.lsh_bits, refine=max(1, s.refine)))
    return faiss().IndexIDMap(scoring.faiss_index(s.dim))


def layout(index: Any) -> list[tuple[str, int, int]]:
    """What an index is made of, outside in: (class, metric, dim) of it, of the index an IndexIDMap wraps, and
    of an HNSW graph's storage, an IVF index's quantizer or an IndexRefine's two indexes (the number of LSH bits
    is the `d` of its IndexLSH). Two indexes of one layout score queries alike."""
    f, out, todo = faiss(), [], [index]
    while todo:
        inner = f.downcast_index(todo.pop())
        # IndexFlatIP / L2: told by the metric; IndexRefineFlat is what FAISS reads an IndexRefine over a flat as
        name = next(
            (c.__name__ for c in (f.IndexFlat, f.IndexRefine) if isinstance(inner, c)), type(inner).__name__
        )
        out.append((name, int(inner.metric_type), int(inner.nbits if isinstance(inner, f.IndexLSH) else inner.d)))
        if isinstance(inner, (f.IndexIDMap, f.IndexHNSW, f.IndexIVF, f.IndexRefine)):
            for attr in ("index", "storage", "quantizer", "base_index", "refine_index"):
                sub = getattr(inner, attr, None)
                if sub is not None:
                    todo.append(sub)
    return out


def configure(index: Any, s: Settings) -> None:
    """Set the search-time parameters recorded in the database (IVF nprobe, HNSW efSearch, LSH refine)."""
    inner = faiss().downcast_index(index)
    if isinstance(inner, faiss().IndexIVF):
        inner.nprobe = max(1, s.nprobe)
    elif isinstance(inner, faiss().IndexIDMap):
        sub = faiss().downcast_index(inner.index)
        if hasattr(sub, "hnsw"):
            sub.hnsw.efSearch = max(1, s.ef_search)
        elif isinstance(sub, faiss().IndexRefine):
            sub.k_factor = float(max(1, s.refine))


def search(index: Any, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """`index.search(queries, k)` (k <= index.ntotal), with an LSH index's candidates (k x its refine factor)
    capped at the vectors it holds: FAISS's IndexRefine returns fewer matches than asked, or none, beyond that."""
    inner = faiss().downcast_index(index)
    sub = faiss().downcast_index(inner.index) if isinstance(inner, faiss().IndexIDMap) else inner
    if not isinstance(sub, faiss().IndexRefine):
        return index.search(queries, k)
    params = faiss().IndexRefineSearchParameters()
    params.k_factor = float(max(1.0, min(sub.k_factor, sub.ntotal / max(k, 1))))
    return index.search(queries, k, params=params)


def removes(index: Any) -> bool:
    """Whether `index.remove_ids` works (HNSW graphs and LSH + refine cannot delete)."""
    inner = faiss().downcast_index(index)
    sub = faiss().downcast_index(inner.index) if isinstance(inner, faiss().IndexIDMap) else inner
    return not (hasattr(sub, "hnsw") or isinstance(sub, faiss().IndexRefine))


def train_centroids(metric: str, vectors: np.ndarray, nlist: int) -> np.ndarray:
    """k-means centroids (nlist, D) of the stored (N, D) vectors for an IVF index (FAISS's fixed seed)."""
    index = Scoring.of(metric).faiss_index(vectors.shape[1], nlist)
    index.train(np.ascontiguousarray(vectors, dtype=np.float32))
    return index.quantizer.reconstruct_n(0, nlist)


@dataclass
class Cached:
    """An index and what it holds: photo ids (N,) ascending and their owners (N,) (person ids), at `version`."""

    index: Any
    ids: np.ndarray
    owners: np.ndarray
    version: int
    key: tuple[str, int]  # (index kind, epoch)


def read(path: Path, s: Settings) -> Cached | None:
    """The cache at `path` if it belongs to this database and index epoch and is not ahead of it, else None."""
    try:
        data = path.read_bytes()
        if not data.startswith(_MAGIC):
            return None
        start = len(_MAGIC) + 4
        (size,) = struct.unpack("<I", data[len(_MAGIC) : start])
        head = json.loads(data[start : start + size])
        body = memoryview(data)[start + size :]
        if zlib.crc32(body) != head["crc32"]:
            return None
        if (head["uid"], head["kind"], head["epoch"], head["dim"]) != (s.uid, s.index, s.epoch, s.dim):
            return None
        if head["version"] > s.version:
            return None
        n = int(head["n"])
        ids = np.frombuffer(body[: 8 * n], dtype=np.int64).copy()
        owners = np.frombuffer(body[8 * n : 16 * n], dtype=np.int64).copy()
        index = faiss().deserialize_index(np.frombuffer(body[16 * n :], dtype=np.uint8))
        if index.ntotal != n or index.d != s.dim or (n and np.any(np.diff(ids) <= 0)):
            return None
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, struct.error):  # missing or damaged: rebuild
        return None
    except MemoryError:  # a forged file (valid checksum) whose sizes make FAISS allocate more than there is
        return None
    return Cached(index, ids, owners, int(head["version"]), (s.index, s.epoch))


def write(path: Path, s: Settings, cached: Cached) -> bool:
    """Write the cache atomically (temp file, fsync, rename); False, with a warning, when it cannot be written
    (a read-only folder, a full disk): the gallery works without it."""
    ids, owners = np.ascontiguousarray(cached.ids, np.int64), np.ascontiguousarray(cached.owners, np.int64)
    body = ids.tobytes() + owners.tobytes() + faiss().serialize_index(cached.index).tobytes()
    head = {
        "uid": s.uid,
        "kind": cached.key[0],
        "epoch": cached.key[1],
        "dim": s.dim,
        "version": cached.version,
        "n": len(ids),
        "crc32": zlib.crc32(body),
    }
    raw = json.dumps(head).encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(_MAGIC + struct.pack("<I", len(raw)) + raw)
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        warnings.warn(
            f"could not write the gallery's index cache {path} ({err}); it is rebuilt when needed", stacklevel=3
        )
        return False
    return True


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX); a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sweep(folder: Path) -> None:
    """Remove temporary files (a database being created, a cache being written) left by processes that died."""
    now = time.time()
    for tmp in folder.glob(".*.tmp*"):  # also a temporary database's -wal and -shm
        try:
            if now - tmp.stat().st_mtime > _STALE_TEMP_S:
                tmp.unlink()
        except OSError:
            pass
