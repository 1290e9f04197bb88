"""The gallery's source of truth: one SQLite database, `gallery.db`, in WAL mode (standard library only).

Tables: `meta` (key -> value, settings.py: the metric, the model fingerprint, the index kind, and `version`, a
counter every write transaction raises), `people` (one row per identity) and `photos` (one row per enrolled
photo: the owner, the embedding as a float32 blob in the form the index takes it, the source path, the time).
Photo ids come from the `next_id` counter, so they are never reused: an id always means the same vector, which
is what lets the FAISS cache catch up by ids.

Every change is one `BEGIN IMMEDIATE` transaction (writers queue on the database lock, `busy_timeout`), and
readers take one snapshot per read (`snapshot()`), so a process sees a committed state, never a torn one. Every
sqlite3 error leaves this module as a DataError that names the file and says what to do.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from facerec.errors import DataError
from facerec.photos.gallery import digest
from facerec.photos.gallery.settings import ADVICE, Settings, check

DB_NAME = "gallery.db"
BUSY_TIMEOUT_S = 60.0

_TABLES = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value);
CREATE TABLE people (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE, added REAL NOT NULL);
CREATE TABLE photos (
    id INTEGER PRIMARY KEY,  -- from meta next_id: never reused, counting from 0 as in schema 1
    person INTEGER NOT NULL REFERENCES people(id),
    embedding BLOB NOT NULL,
    source TEXT NOT NULL,
    added REAL NOT NULL
);
CREATE INDEX photos_by_person ON photos(person);
"""


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    conn.execute("PRAGMA synchronous = FULL")  # a commit survives power loss, not only a killed process
    return conn


def create(
    folder: Path, meta: dict[str, object], fill: Callable[[sqlite3.Connection], None] | None = None
) -> None:
    """Create `folder/gallery.db` atomically: built under a temporary name (schema, `meta`, then `fill(conn)`, e.g.
    a migration's rows), then hard-linked into place. Two processes creating one gallery at once both succeed,
    and the one that comes second uses the first one's database; a killed process leaves no half-made gallery."""
    folder.mkdir(parents=True, exist_ok=True)
    final, tmp = folder / DB_NAME, folder / f".{DB_NAME}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        with _errors(tmp):
            conn = _connect(tmp)
            try:
                conn.executescript(_TABLES)  # a private file until linked: no transaction needed yet
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany("INSERT INTO meta VALUES (?, ?)", list(meta.items()))
                if fill is not None:
                    fill(conn)
                conn.execute("COMMIT")  # in rollback-journal mode: everything is in the one file now
                conn.execute("PRAGMA journal_mode = WAL")  # persistent: recorded in the file's header
            finally:
                conn.close()
        try:
            os.link(tmp, final)  # fails if another process linked its database first: keep theirs
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links
            if not final.exists():
                os.replace(tmp, final)
    finally:
        for leftover in (tmp, *(tmp.with_name(tmp.name + x) for x in ("-journal", "-wal", "-shm"))):
            leftover.unlink(missing_ok=True)


class Store:
    """An open `gallery.db`: checked settings, one snapshot per read, one transaction per change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with _errors(path):
            self.conn = _connect(path)
            self.conn.execute("PRAGMA journal_mode = WAL")
            # SQLite keeps no checksums: check pages and indexes now (~0.1 s per 50,000 photos), rather than let
            # queries answer from half of a damaged file
            problems = [row[0] for row in self.conn.execute("PRAGMA integrity_check(3)").fetchall()]
        if problems != ["ok"]:
            self.conn.close()
            raise DataError(f"{path} is damaged ({'; '.join(problems)[:300]}); {ADVICE}")
        try:
            self._fill_in_digest(self.settings().dim)  # fails now, naming the file, if it is not a gallery
        except BaseException:
            self.conn.close()
            raise

    def _fill_in_digest(self, dim: int) -> None:
        """Give a gallery made before content digests its digest (once: one read of every row). A read-only
        gallery stays without one: its index cache is then never trusted, only rebuilt."""
        with self.snapshot():
            if digest.stored(self.conn) is not None:
                return
        try:
            with self.writing() as conn:
                if digest.stored(conn) is None:
                    digest.reset(conn, digest.of_rows(*self.rows(-1, dim)))
        except DataError:
            pass

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """One read transaction: every query inside sees the same committed state (nests: inner ones join)."""
        if self.conn.in_transaction:
            yield
            return
        with _errors(self.path):
            self.conn.execute("BEGIN")
            try:
                yield
            finally:
                self.conn.execute("COMMIT")

    @contextmanager
    def writing(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (waits for other writers); commits and raises `version` unless the body raises."""
        with _errors(self.path):
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
                self.conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'version'")
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise

    # -- reads ----------------------------------------------------------------------------------------------
    def settings(self) -> Settings:
        """The meta table, checked (DataError naming the file when it is not a facerec gallery of this schema)."""
        with _errors(self.path, contents=True):
            try:
                meta = dict(self.conn.execute("SELECT key, value FROM meta").fetchall())
            except sqlite3.OperationalError as err:
                if "no such table" not in str(err):
                    raise
                raise DataError(f"{self.path} is not a facerec gallery database ({err}); {ADVICE}") from None
        return check(meta, self.path)

    def centroids(self, dim: int) -> np.ndarray | None:
        """The IVF centroids (nlist, dim) chosen by the last `reindex --index ivf`, or None."""
        with _errors(self.path, contents=True):
            (blob,) = self.conn.execute("SELECT value FROM meta WHERE key = 'centroids'").fetchone() or (None,)
        return None if blob is None else _vectors(blob, dim, self.path, "centroids")

    def people(self) -> dict[str, int]:
        """Enrolled names -> number of stored photos, sorted by name."""
        with _errors(self.path, contents=True):
            rows = self.conn.execute(
                "SELECT people.name, COUNT(photos.id) FROM people JOIN photos ON photos.person = people.id "
                "GROUP BY people.id"
            ).fetchall()
            return dict(sorted(rows))

    def names(self, after: int | None = None) -> dict[int, str]:
        """Person id -> name (of the people with an id > `after`: those enrolled since, as ids only grow)."""
        with _errors(self.path, contents=True):
            if after is None:
                return dict(self.conn.execute("SELECT id, name FROM people").fetchall())
            return dict(self.conn.execute("SELECT id, name FROM people WHERE id > ?", (after,)).fetchall())

    def meta_value(self, key: str) -> object:
        """One value of the meta table as stored (None when missing)."""
        with _errors(self.path, contents=True):
            row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def count(self, up_to: int | None = None) -> int:
        """Stored photos (with an id <= `up_to`)."""
        with _errors(self.path, contents=True):
            sql, args = "SELECT COUNT(*) FROM photos", ()
            if up_to is not None:
                sql, args = sql + " WHERE id <= ?", (up_to,)
            return int(self.conn.execute(sql, args).fetchone()[0])

    def ids(self, up_to: int) -> np.ndarray:
        """Ids (N,) int64 of the stored photos with an id <= `up_to`, ascending."""
        with _errors(self.path, contents=True):
            rows = self.conn.execute("SELECT id FROM photos WHERE id <= ? ORDER BY id", (up_to,)).fetchall()
            return np.asarray([r[0] for r in rows], dtype=np.int64)

    def rows(self, after: int, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The photos with an id > `after`, ascending: ids (N,) int64, owners (N,) int64 (person ids), vectors
        (N, dim) float32."""
        with _errors(self.path, contents=True):
            rows = self.conn.execute(
                "SELECT id, person, embedding FROM photos WHERE id > ? ORDER BY id", (after,)
            ).fetchall()
            ids = np.asarray([r[0] for r in rows], dtype=np.int64)
            owners = np.asarray([r[1] for r in rows], dtype=np.int64)
            blob = b"".join(r[2] for r in rows)
        return ids, owners, _vectors(blob, dim, self.path, "photos", len(rows))

    # -- writes (each inside `writing()`) --------------------------------------------------------------------
    def person(self, conn: sqlite3.Connection, name: str) -> int | None:
        row = conn.execute("SELECT id FROM people WHERE name = ?", (name,)).fetchone()
        return None if row is None else int(row[0])

    def add(self, name: str, vectors: np.ndarray, sources: list[str]) -> list[int]:
        """Store (N, D) float32 vectors of `name` in one transaction; their new ids."""
        now = time.time()
        with self.writing() as conn:
            pid = self.person(conn, name)
            if pid is None:
                pid = conn.execute("INSERT INTO people (name, added) VALUES (?, ?)", (name, now)).lastrowid
            (start,) = conn.execute("SELECT value FROM meta WHERE key = 'next_id'").fetchone()
            ids = list(range(int(start), int(start) + len(vectors)))
            conn.executemany(
                "INSERT INTO photos (id, person, embedding, source, added) VALUES (?, ?, ?, ?, ?)",
                [(i, pid, v.tobytes(), s, now) for i, v, s in zip(ids, vectors, sources)],
            )
            self.set_meta(conn, {"next_id": start + len(ids)})
            digest.change(conn, digest.of_rows(np.asarray(ids), np.full(len(ids), pid), vectors))
            return ids

    def remove_person(self, conn: sqlite3.Connection, person: int, dim: int) -> int:
        """Delete a person and their photos (inside `writing()`); how many photos."""
        rows = conn.execute("SELECT id, embedding FROM photos WHERE person = ?", (person,)).fetchall()
        vectors = _vectors(b"".join(r[1] for r in rows), dim, self.path, "photos", len(rows))
        ids = np.asarray([r[0] for r in rows], dtype=np.int64)
        digest.change(conn, -digest.of_rows(ids, np.full(len(ids), person), vectors))
        conn.execute("DELETE FROM photos WHERE person = ?", (person,))
        conn.execute("DELETE FROM people WHERE id = ?", (person,))
        self.note_edit(conn)
        return len(rows)

    def note_edit(self, conn: sqlite3.Connection) -> None:
        """Raise the `edits` counter (inside `writing()`): every removal and rename does, so a process's index
        (mirror.py) reads names and photo counts in full only after one."""
        conn.execute("INSERT INTO meta VALUES ('edits', 1) ON CONFLICT(key) DO UPDATE SET value = value + 1")

    def set_meta(self, conn: sqlite3.Connection, values: dict[str, object]) -> None:
        conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(values.items()))


@contextmanager
def _errors(path: Path, contents: bool = False) -> Iterator[None]:
    """sqlite3 errors as DataError naming `path`: a lock held too long, or a file that is not a usable database.
    `contents`: also values of the wrong type (a NULL or text id, a text embedding) found while reading rows."""
    try:
        yield
    except DataError:
        raise
    except (TypeError, ValueError, OverflowError) as err:  # UnicodeDecodeError: even sqlite's own messages
        if not (contents or isinstance(err, UnicodeDecodeError)):
            raise
        raise DataError(f"{path}: a stored row has values of the wrong type ({err}); {ADVICE}") from None
    except sqlite3.OperationalError as err:
        if "locked" in str(err) or "busy" in str(err):
            raise DataError(
                f"{path} is busy: another process held its write lock for over {BUSY_TIMEOUT_S:.0f} s ({err}); "
                "try again when it is done"
            ) from None
        raise DataError(f"{path} cannot be used as a gallery database ({err}); {ADVICE}") from None
    except sqlite3.Error as err:
        raise DataError(f"{path} is damaged or not a gallery database ({err}); {ADVICE}") from None


def bad_vectors(vectors: np.ndarray, unit: bool) -> int:
    """How many of the (N, D) stored vectors are not finite or (`unit`: a cosine gallery, whose vectors are unit
    length) longer than 1: a damaged file, which would give impossible scores."""
    with np.errstate(over="ignore", invalid="ignore"):
        bad = ~np.isfinite(vectors).all(axis=1)
        if unit:
            bad |= ~(np.linalg.norm(vectors, axis=1) <= 1 + 1e-3)
    return int(bad.sum())


def _vectors(blob: bytes, dim: int, path: Path, what: str, rows: int | None = None) -> np.ndarray:
    """Packed float32 rows as an (N, dim) array; DataError when the bytes do not fit (a damaged database)."""
    if len(blob) % (4 * dim) or (rows is not None and len(blob) != rows * 4 * dim):
        raise DataError(f"{path}: the stored {what} are not {dim}-d float32 vectors; {ADVICE}")
    return np.frombuffer(blob, dtype=np.float32).reshape(-1, dim).copy()
