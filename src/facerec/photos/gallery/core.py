"""`Gallery`: people enrolled in a folder, searched by embedding; safe to share between processes.

The folder holds `gallery.db` (store.py: the source of truth; every enroll, remove, rename and reindex is one
transaction) and `index.cache` (cache.py: the FAISS index, derived). Each process keeps the index in memory
(mirror.py) and, before every search, brings it up to what any process has committed.
Each enrolled photo is one vector; a person is the set of their vectors, and a query's score for a person is its
best match among them.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facerec.errors import DataError
from facerec.metrics.scoring import Scoring
from facerec.photos.gallery import cache, legacy, settings, store
from facerec.photos.gallery.mirror import Mirror
from facerec.photos.gallery.settings import INDEX_KINDS, Settings
from facerec.photos.gallery.store import DB_NAME, Store


@dataclass
class Match:
    name: str
    score: float


class Gallery:
    """Enrolled people in a folder: `Gallery.open(dir, metric=, dim=)`. Changes are committed when the call
    returns; `save()` only refreshes the index cache on disk. Thread-safe (one lock per instance)."""

    def __init__(self, folder: Path, db: Store) -> None:
        self.folder, self.store = folder, db
        self._lock = threading.RLock()
        self._mirror = Mirror(db, folder / cache.CACHE_NAME)

    @classmethod
    def open(
        cls, folder: str | Path, metric: str | None = None, dim: int | None = None, fingerprint: str | None = None
    ) -> Gallery:
        """Open a gallery folder, or start an empty one there when `metric` and `dim` are given. A folder in the
        old format (gallery.json) is migrated to gallery.db first (legacy.py)."""
        folder = Path(folder).expanduser()
        db = folder / DB_NAME
        if not db.exists():
            try:
                if legacy.is_legacy(folder):
                    legacy.migrate(folder)
                elif metric is not None and dim is not None:
                    name = Scoring.of(metric, key="gallery metric").name
                    store.create(folder, settings.new_meta(name, int(dim), fingerprint))
            except DataError:
                if not db.exists():  # not: another process migrated or created it meanwhile
                    raise
            if not db.exists():
                raise DataError(
                    f"{folder} is not a gallery (no {DB_NAME}); enroll someone first: "
                    "facerec enroll NAME PHOTO... --gallery DIR --checkpoint C"
                )
        elif legacy.is_legacy(folder):  # a migration that was interrupted after gallery.db was made
            legacy.retire(folder)
        cache.sweep(folder)
        g = cls(folder, Store(folder / DB_NAME))
        try:
            stored = g._settings.fingerprint
            if fingerprint is not None and stored not in (None, fingerprint):
                raise DataError(
                    f"gallery {folder} was built with another model (fingerprint {stored}, this one "
                    f"{fingerprint}); use the checkpoint it was built with, or a new --gallery"
                )
            g.save()  # builds the index (from the cache when it is current) and refreshes the cache
        except BaseException:
            g.close()
            raise
        return g

    def close(self) -> None:
        with self._lock:
            self.store.close()

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- contents -------------------------------------------------------------------------------------------
    @property
    def meta(self) -> dict[str, Any]:
        """The gallery's settings as stored now (metric, dim, fingerprint, index, nlist, nprobe, hnsw_m,
        ef_search, version)."""
        with self._lock:
            s = self.store.settings()
        return {"format": settings.FORMAT, **{k: getattr(s, k) for k in Settings.__dataclass_fields__}}

    @property
    def metric(self) -> str:
        return self._settings.metric

    @property
    def scoring(self) -> Scoring:
        return Scoring.of(self._settings.metric)

    @property
    def index(self) -> Any:
        """The FAISS index, brought up to the database's current version."""
        return self._sync().index

    @property
    def vectors(self) -> np.ndarray:
        """Every stored vector (N, D) float32, in id order (as the index takes them: unit length for cosine)."""
        with self._lock:
            return self.store.rows(-1, self._settings.dim)[2]

    @property
    def ids(self) -> np.ndarray:
        """The stored photos' ids (N,) int64, ascending."""
        with self._lock:
            return self.store.rows(-1, self._settings.dim)[0]

    def __len__(self) -> int:
        with self._lock:
            return self.store.count()

    def people(self) -> dict[str, int]:
        """Enrolled names -> number of stored photos, sorted by name (as committed now)."""
        with self._lock:
            return self.store.people()

    def _prepare(self, embeddings: torch.Tensor | np.ndarray) -> np.ndarray:
        x = self.scoring.index_vectors(embeddings)
        if x.ndim != 2 or x.shape[1] != self._settings.dim:
            raise ValueError(f"expected (N, {self._settings.dim}) embeddings, got shape {x.shape}")
        return x

    # -- changes: one transaction each ----------------------------------------------------------------------
    def add(self, name: str, embeddings: torch.Tensor | np.ndarray, sources: list[str] | None = None) -> list[int]:
        """Enroll (N, D) embeddings of one person (adds to what is stored for that name) in one transaction,
        committed when this returns; returns their ids."""
        _check_name(name)
        x = self._prepare(embeddings)
        sources = [str(s) for s in sources] if sources is not None else [""] * len(x)
        if len(sources) != len(x):
            raise ValueError(f"{len(sources)} sources for {len(x)} embeddings")
        if not len(x):
            return []
        with self._lock:
            return self.store.add(name, x, sources)

    def remove(self, name: str) -> int:
        """Remove every stored photo of `name`; returns how many. DataError when the name is not enrolled."""
        with self._lock, self.store.writing() as conn:
            person = self.store.person(conn, name)
            if person is None:
                known = ", ".join(list(self.store.people())[:10]) or "nobody"
                raise DataError(f"{name!r} is not in the gallery {self.folder}; enrolled: {known}")
            return self.store.remove_person(conn, person, self._settings.dim)

    def rename(self, old: str, new: str) -> int:
        """Give `old`'s photos the name `new` (not enrolled yet); returns how many photos. DataError otherwise."""
        _check_name(new)
        with self._lock, self.store.writing() as conn:
            person = self.store.person(conn, old)
            if person is None:
                known = ", ".join(list(self.store.people())[:10]) or "nobody"
                raise DataError(f"{old!r} is not in the gallery {self.folder}; enrolled: {known}")
            if self.store.person(conn, new) is not None:
                raise DataError(
                    f"{new!r} is already enrolled in {self.folder}; remove it first, or pick another name"
                )
            conn.execute("UPDATE people SET name = ? WHERE id = ?", (new, person))
            self.store.note_edit(conn)
            return int(conn.execute("SELECT COUNT(*) FROM photos WHERE person = ?", (person,)).fetchone()[0])

    def reindex(
        self,
        kind: str = "flat",
        nlist: int | None = None,
        nprobe: int | None = None,
        *,
        hnsw_m: int | None = None,
        ef_search: int | None = None,
        lsh_bits: int | None = None,
        refine: int | None = None,
    ) -> None:
        """Choose the index every process uses, recorded in the database: "flat" (exact), "ivf" (inverted lists,
        centroids trained here on the stored vectors, Jegou et al. 2011), "hnsw" (a graph, Malkov & Yashunin
        2018; removals rebuild it) or "lsh" (cosine galleries: `lsh_bits` sign bits per vector searched by
        Hamming distance, `refine` x k candidates scored exactly; removals rebuild it). Settings not given are
        picked by the gallery's size (settings.ivf_defaults, hnsw_defaults, lsh_defaults: what bench/gallery.py
        measured to reach recall@1 >= 0.99)."""
        if kind not in INDEX_KINDS:
            raise ValueError(f"unknown index kind {kind!r}; choose one of {', '.join(INDEX_KINDS)}")
        if kind == "lsh" and self.metric != "cosine":
            raise ValueError(
                f"an lsh index compares angles and needs a cosine gallery; {self.folder} is {self.metric}: "
                "use ivf or hnsw"
            )
        given = {"nlist": nlist, "nprobe": nprobe, "hnsw_m": hnsw_m, "ef_search": ef_search}
        given |= {"lsh_bits": lsh_bits, "refine": refine}
        for key, value in given.items():
            top = settings.LIMITS[key]
            if value is not None and (type(value) is not int or not 0 <= value <= top):
                raise ValueError(f"reindex {key}={value!r}: give an int in 1..{top} (or 0 / None: the default)")
        values = {**settings.FLAT_INDEX, "index": kind}
        with self._lock:
            if kind == "ivf":
                values.update(self._ivf(nlist, nprobe))
            elif kind == "hnsw":
                m, ef = settings.hnsw_defaults(len(self))
                values.update(hnsw_m=hnsw_m or m, ef_search=ef_search or ef)
            elif kind == "lsh":
                bits, factor = settings.lsh_defaults(self._settings.dim)
                values.update(lsh_bits=lsh_bits or bits, refine=refine or factor)
            with self.store.writing() as conn:
                version = int(conn.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()[0])
                self.store.set_meta(conn, {**values, "epoch": version + 1})  # the version this commit makes
            self._sync()

    def _ivf(self, nlist: int | None, nprobe: int | None) -> dict[str, object]:
        vectors = self.vectors
        n = len(vectors)
        nlist, default_nprobe = settings.ivf_defaults(n, nlist)
        if n < nlist:
            raise DataError(
                f"an IVF index with {nlist} lists needs at least {nlist} stored vectors, the gallery has {n}; "
                "enroll more people or keep the flat index"
            )
        centroids = cache.train_centroids(self.metric, vectors, nlist)
        return {"nlist": nlist, "nprobe": min(nlist, nprobe or default_nprobe), "centroids": centroids.tobytes()}

    # -- search ---------------------------------------------------------------------------------------------
    def search(self, embeddings: torch.Tensor | np.ndarray, k: int = 5) -> list[list[Match]]:
        """Top-k distinct people for each of the (Q, D) query embeddings, best first (score: higher = closer),
        over everything committed up to this call, by any process."""
        with self._lock:
            state = self._sync()
            if state.index.ntotal == 0:
                raise DataError(f"gallery {self.folder} is empty; enroll people first")
            q = self._prepare(embeddings)
            kk = min(state.index.ntotal, k * self._mirror.per_name)  # room for k distinct people (exact index)
            with cache.one_thread(len(q)):
                dist, idx = cache.search(state.index, q, kk)
            pos = np.minimum(np.searchsorted(state.ids, np.maximum(idx, 0)), len(state.ids) - 1)
            if np.any((idx >= 0) & (state.ids[pos] != idx)):  # only a forged cache (it has a checksum)
                raise DataError(
                    f"{self.folder / cache.CACHE_NAME} is damaged: its index holds photo ids the gallery does "
                    "not; delete it (it is rebuilt from gallery.db)"
                )
            owners = state.owners[pos]
            names = self._mirror.names
        results = []
        for srow, irow, orow in zip(self.scoring.index_scores(dist), idx, owners):
            best: dict[str, float] = {}
            for score, i, owner in zip(srow.tolist(), irow.tolist(), orow.tolist()):
                if i >= 0:
                    best[names[owner]] = max(best.get(names[owner], -math.inf), score)
            ranked = sorted(best.items(), key=lambda t: -t[1])[:k]
            results.append([Match(n, float(s)) for n, s in ranked])
        return results

    def save(self) -> Path:
        """Bring the index up to date and write it to `index.cache` if that is behind (atomically). The gallery
        itself is already saved: every change commits."""
        with self._lock:
            self._mirror.save()
        return self.folder

    def _sync(self) -> cache.Cached:
        with self._lock:
            return self._mirror.sync()

    @property
    def _settings(self) -> Settings:
        return self._mirror.settings


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name or name != name.strip():
        raise ValueError(f"invalid name {name!r}: use a non-empty name without surrounding spaces")
