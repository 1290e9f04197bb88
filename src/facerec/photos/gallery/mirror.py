"""A process's in-memory FAISS index of a gallery, kept in step with gallery.db.

Before each search (and save) the mirror compares its version with the database's. When another process has
committed since, it catches up inside one read snapshot: it drops the photos removed since (an HNSW graph, which
cannot delete, is rebuilt) and adds the ones enrolled since, found by id alone because ids only grow. On first use,
or when another index kind was chosen, it starts from `index.cache` if that belongs to this database and epoch
(cache.read), else from an empty index; a cache that, once caught up, does not hold exactly the database's rows
(its content digest, digest.py, or IVF centroids differ: an old copy, a forged file) is set aside with a
warning and the index rebuilt from the database.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from facerec.errors import DataError
from facerec.photos.gallery import cache, digest
from facerec.photos.gallery.settings import ADVICE, Settings
from facerec.photos.gallery.store import Store, bad_vectors


class Mirror:
    """The index (`state`), person id -> name (`names`) and the most photos of one person (`per_name`), all as of
    `state.version`. Not thread-safe: the Gallery holds its lock around every call."""

    def __init__(self, db: Store, path: Path) -> None:
        self.db, self.path = db, path
        self.settings: Settings = db.settings()
        self.state: cache.Cached | None = None
        self.names: dict[int, str] = {}
        self.per_name = 0
        self.edits: object = None  # the database's `edits` counter (removals, renames) as of `state`
        self.top_person = 0  # the largest person id in `names` (ids only grow)
        self.saved = -1  # the version written to (or read from) the cache file by this mirror

    def sync(self) -> cache.Cached:
        """The index at the database's current version. After enrolments only (the usual case) this costs what
        was enrolled, not the gallery's size: removals and renames raise the database's `edits` counter, and
        only then are the names and the photo count read again in full."""
        with self.db.snapshot():
            s = self.db.settings()
            state = self.state
            if state is not None and state.version == s.version:
                return state
            edits = self.db.meta_value("edits")
            if state is not None and state.key == (s.index, s.epoch) and edits == self.edits:
                added = self._catch_up(state, s, removals=False)
                names, new = self.names, self.db.names(after=self.top_person)
                names.update(new)
            else:
                state, added, names = self._reload(s)
                new = names
        self.top_person = max(self.top_person, max(new, default=0))
        if not set(np.unique(added).tolist()) <= names.keys():
            self.state = None  # read everything again next time
            raise DataError(f"{self.db.path}: some photos belong to no one in table people; {ADVICE}")
        cache.configure(state.index, s)
        if len(added) > 64 or added is state.owners:
            self.per_name = int(np.unique(state.owners, return_counts=True)[1].max()) if len(state.owners) else 0
        else:  # a few photos: count only their owners'
            self.per_name = max([self.per_name] + [int(np.count_nonzero(state.owners == o)) for o in set(added)])
        self.state, self.settings, self.names, self.edits = state, s, names, edits
        return state

    def _reload(self, s: Settings) -> tuple[cache.Cached, np.ndarray, dict[int, str]]:
        """The index from the cache file (checked against the database) or from scratch, and every name; inside
        the caller's snapshot. Returns the state, its owners (all "added") and the names."""
        state, loaded = self.state, False
        if state is None or state.key != (s.index, s.epoch):  # first use, or another index kind was chosen
            state = cache.read(self.path, s)
            self.saved, loaded = (state.version, True) if state is not None else (-1, False)
            state = state or self._empty(s)
        self._catch_up(state, s, removals=True)
        if loaded and not self._matches(state, s):
            warnings.warn(
                f"{self.path} does not hold what {self.db.path} holds (an old copy, or edited); the index is "
                "rebuilt from the database",
                stacklevel=5,
            )
            state, self.saved = self._empty(s), -1
            self._catch_up(state, s, removals=False)
        self.top_person = 0
        return state, state.owners, self.db.names()

    def save(self) -> None:
        """Write the cache file if it is behind this mirror (atomically; a failure only warns)."""
        state = self.sync()
        if self.saved != state.version and cache.write(self.path, self.settings, state):
            self.saved = state.version

    def _matches(self, state: cache.Cached, s: Settings) -> bool:
        """Whether a caught-up index read from the cache file has the gallery's layout (index classes, metric,
        dim) and holds the database's rows and IVF centroids (inside the caller's snapshot)."""
        want = digest.stored(self.db.conn)
        try:
            centroids = self.db.centroids(s.dim) if s.index == "ivf" else None
            if cache.layout(state.index) != cache.layout(cache.empty_index(s, centroids)):  # e.g. another metric
                return False
            inner = cache.faiss().downcast_index(state.index)
            if isinstance(inner, cache.faiss().IndexIVF):
                held = inner.quantizer.reconstruct_n(0, inner.quantizer.ntotal)
                if centroids is None or not np.array_equal(held, centroids):
                    return False
            return want is not None and digest.of_index(state.index, state.ids, state.owners) == want
        except (RuntimeError, ValueError, TypeError, AttributeError, MemoryError, DataError):  # a forged file
            return False

    def _empty(self, s: Settings) -> cache.Cached:
        centroids = self.db.centroids(s.dim) if s.index == "ivf" else None
        empty = np.zeros(0, np.int64)
        return cache.Cached(cache.empty_index(s, centroids), empty, empty, -1, (s.index, s.epoch))

    def _catch_up(self, state: cache.Cached, s: Settings, removals: bool) -> np.ndarray:
        """Add the photos enrolled since `state.version` (ids only grow) and, with `removals`, first drop the ones
        removed since. Returns the owners (person ids) of the photos added."""
        top = int(state.ids[-1]) if len(state.ids) else -1
        if removals and len(state.ids) != self.db.count(up_to=top):  # some were removed
            alive = self.db.ids(top)
            if cache.removes(state.index):
                state.index.remove_ids(np.setdiff1d(state.ids, alive))
                keep = np.isin(state.ids, alive)
                state.ids, state.owners = state.ids[keep], state.owners[keep]
            else:  # HNSW: rebuild
                fresh = self._empty(s)
                state.index, state.ids, state.owners, top = fresh.index, fresh.ids, fresh.owners, -1
        ids, owners, vectors = self.db.rows(top, s.dim)
        if bad_vectors(vectors, s.metric == "cosine"):
            raise DataError(f"{self.db.path}: some stored embeddings are not valid vectors (damaged); {ADVICE}")
        if len(ids):
            with cache.one_thread(len(ids)):
                state.index.add_with_ids(vectors, ids)
            state.ids, state.owners = np.concatenate([state.ids, ids]), np.concatenate([state.owners, owners])
        state.version = s.version
        return owners
