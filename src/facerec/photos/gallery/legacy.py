"""Galleries from before gallery.db: migrated to the database the first time they are opened.

The old layout (schema 1) was `gallery.json` (metric, dim, fingerprint, index kind, `next_id` and `entries`: photo
id -> name and source), `vectors.npy` (N, D) float32 and `ids.npy` (N,) int64 (the stored embeddings), and
`index.faiss`, rewritten in place on every save. The migration reads the first three (the FAISS file is derived
and may be torn, so it is not read), keeps the photo ids, builds gallery.db atomically (store.create), and then
moves the four files into `legacy/`, where the user can delete them, so an older facerec cannot open a copy that
no longer changes.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tokenize
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from facerec.errors import DataError
from facerec.metrics.scoring import SCORING_NAMES
from facerec.photos.gallery import cache, digest, settings, store

LEGACY_FILES = ("gallery.json", "vectors.npy", "ids.npy", "index.faiss")
_REDO = "enroll the people again into a new --gallery folder (the photos are named in gallery.json's entries)"


def is_legacy(folder: Path) -> bool:
    return (folder / "gallery.json").is_file()


def migrate(folder: Path) -> int:
    """Build `folder/gallery.db` from the old files, then retire them; returns how many photos moved over. A
    photo id without an entry (or an entry without a vector: what an interrupted old save left) is skipped with a
    warning; files that cannot be read at all raise DataError naming them."""
    meta, path = _read_meta(folder)
    vectors, ids = _read_vectors(folder, int(meta["dim"]))
    entries: dict[str, Any] = meta["entries"]
    keep = [i for i, photo_id in enumerate(ids.tolist()) if isinstance(entries.get(str(photo_id)), dict)]
    if len(keep) != len(ids) or len(keep) != len(entries):
        warnings.warn(
            f"migrating {folder}: {len(ids) - len(keep)} stored vectors have no entry in gallery.json and "
            f"{len(entries) - len(keep)} entries have no vector; those are left out",
            stacklevel=3,
        )
    vectors, ids = vectors[keep], ids[keep]
    if store.bad_vectors(vectors, meta["metric"] == "cosine"):
        raise DataError(f"cannot migrate the gallery {folder}: vectors.npy holds damaged vectors; {_REDO}")
    values = settings.new_meta(meta["metric"], int(meta["dim"]), meta.get("fingerprint"))
    values.update(_index_meta(meta, vectors))
    values["next_id"] = max(
        _count(meta.get("next_id")), int(ids.max()) + 1 if len(ids) else 0
    )  # removed photos' ids stay unused
    added = os.path.getmtime(path)

    def fill(conn: sqlite3.Connection) -> None:
        people: dict[str, int] = {}
        owners = []
        for photo_id, vector in zip(ids.tolist(), vectors):
            entry = entries[str(photo_id)]
            name = str(entry.get("name", ""))
            if name not in people:
                sql = "INSERT INTO people (name, added) VALUES (?, ?)"
                people[name] = conn.execute(sql, (name, added)).lastrowid
            conn.execute(
                "INSERT INTO photos (id, person, embedding, source, added) VALUES (?, ?, ?, ?, ?)",
                (photo_id, people[name], vector.tobytes(), str(entry.get("source", "")), added),
            )
            owners.append(people[name])
        digest.reset(conn, digest.of_rows(ids, np.asarray(owners, np.int64), vectors))

    store.create(folder, values, fill)
    retire(folder)
    return len(ids)


def retire(folder: Path) -> None:
    """Move the old files into `folder/legacy/` (after a migration; again if a crash stopped it halfway)."""
    (folder / "legacy").mkdir(exist_ok=True)
    for name in LEGACY_FILES:
        try:
            os.replace(folder / name, folder / "legacy" / name)
        except FileNotFoundError:  # never there, or another process moved it first
            pass


def _read_meta(folder: Path) -> tuple[dict[str, Any], Path]:
    path = folder / "gallery.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path} cannot be read ({err}); restore it from a backup, or {_REDO}") from None
    if not isinstance(meta, dict) or meta.get("format") != settings.FORMAT:
        raise DataError(f"{path} is not a facerec gallery file")
    dim, entries = meta.get("dim"), meta.get("entries")
    if meta.get("metric") not in SCORING_NAMES or not 0 < _count(dim) <= 1 << 16:
        raise DataError(f"{path}: 'metric' or 'dim' is missing or invalid; restore it from a backup, or {_REDO}")
    if not isinstance(entries, dict) or not isinstance(meta.get("fingerprint"), (str, type(None))):
        raise DataError(f"{path}: 'entries' or 'fingerprint' is invalid; restore it from a backup, or {_REDO}")
    return meta, path


def _read_vectors(folder: Path, dim: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        vectors = np.load(folder / "vectors.npy", allow_pickle=False)
        ids = np.load(folder / "ids.npy", allow_pickle=False)
    except (OSError, ValueError, EOFError, SyntaxError, tokenize.TokenError, zipfile.BadZipFile) as err:
        raise DataError(
            f"cannot migrate the gallery {folder}: vectors.npy / ids.npy cannot be read ({err}); {_REDO}"
        ) from None
    if not isinstance(vectors, np.ndarray) or not isinstance(ids, np.ndarray):  # an .npz archive
        raise DataError(f"cannot migrate the gallery {folder}: vectors.npy / ids.npy are not arrays; {_REDO}")
    if vectors.ndim != 2 or vectors.shape[1] != dim or ids.shape != (len(vectors),):
        raise DataError(
            f"cannot migrate the gallery {folder}: vectors.npy {vectors.shape} and ids.npy {ids.shape} do not "
            f"hold one {dim}-d vector per id; {_REDO}"
        )
    ok_ids = np.issubdtype(ids.dtype, np.integer) and len(np.unique(ids)) == len(ids)
    if not ok_ids or (len(ids) and not 0 <= int(ids.min()) <= int(ids.max()) < 1 << 62):
        raise DataError(f"cannot migrate the gallery {folder}: ids.npy is not a list of distinct ids; {_REDO}")
    if not (np.issubdtype(vectors.dtype, np.floating) or np.issubdtype(vectors.dtype, np.integer)):
        raise DataError(f"cannot migrate the gallery {folder}: vectors.npy holds {vectors.dtype}, not numbers")
    order = np.argsort(ids)
    return np.ascontiguousarray(vectors[order], dtype=np.float32), ids[order].astype(np.int64)


def _index_meta(meta: dict[str, Any], vectors: np.ndarray) -> dict[str, object]:
    """The old index choice: IVF keeps its nlist and nprobe, with centroids trained now (the old index file is
    not trusted); a gallery too small for its lists is searched exactly."""
    nlist, nprobe = _count(meta.get("nlist")), _count(meta.get("nprobe"))
    if meta.get("index") != "ivf" or not 0 < nlist <= len(vectors):
        return {}
    centroids = cache.train_centroids(meta["metric"], vectors, nlist)
    return {"index": "ivf", "nlist": nlist, "nprobe": min(nlist, nprobe or 8), "centroids": centroids.tobytes()}


def _count(value: object) -> int:
    """A JSON value as a count: itself if a non-negative int (not a bool) below 2**62, else 0."""
    return value if type(value) is int and 0 <= value < 1 << 62 else 0
