"""The gallery as a database (issue #17): several processes share one gallery folder, a killed process leaves it
consistent, the FAISS cache is derived (rebuilt when missing, damaged or behind), a damaged gallery.db is a
DataError, and an old gallery.json folder is migrated.

The process tests use real processes: workers forked from a forkserver that has imported facerec once (a fresh
interpreter would spend seconds importing torch), and one test runs `facerec enroll` itself.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from facerec.errors import DataError

faiss = pytest.importorskip("faiss")
from facerec.photos.gallery import Gallery, cache  # noqa: E402

DIM, PER = 16, 3  # embedding size; photos per enrolled person


def _photos(name: str) -> np.ndarray:
    """The PER embeddings every test enrolls for `name` (seeded by the name): (PER, DIM) float32, unit length."""
    x = np.random.default_rng(zlib.crc32(name.encode())).normal(size=(PER, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _assert_consistent(folder: Path, printed: list[str], extra: int = 0, others: frozenset = frozenset()) -> None:
    """The gallery opens; everyone in `printed` is there; at most `extra` more (committed, not yet printed); each
    person fully there (PER photos, the right vectors); the index agrees with the database."""
    with Gallery.open(folder) as g:
        people = {n: c for n, c in g.people().items() if n not in others}
        assert set(printed) <= set(people), f"lost: {set(printed) - set(people)}"
        assert len(set(people) - set(printed)) <= extra
        assert all(c == PER for c in people.values()), people
        by_id = dict(zip(g.ids.tolist(), g.vectors))
        assert g.index.ntotal == len(by_id) == len(g)
        exact = 1.0 if g.metric == "cosine" else 0.0  # the score of a vector with itself
        for name in people:
            top = g.search(_photos(name), k=1)
            assert [m[0].name for m in top] == [name] * PER
            assert [m[0].score for m in top] == pytest.approx([exact] * PER, abs=1e-5)


# -- workers (run in forked processes) --------------------------------------------------------------------------
def _enroll(folder: str, names: list[str], log: str, barrier=None, stall_cache: bool = False) -> None:  # noqa: ANN001
    """Enroll `names` one transaction each; append "enrolled NAME" to `log` after each commit, then refresh the
    index cache. `stall_cache`: the cache write after the first enrollment announces itself in `log` and hangs in
    its fsync (to be killed there)."""

    def stall(fd: int) -> None:
        os.write(log_fd, b"in-cache-write\n")
        time.sleep(60)

    log_fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    if barrier is not None:
        barrier.wait(timeout=60)
    g = Gallery.open(folder, "cosine", DIM)
    for name in names:
        g.add(name, _photos(name), [f"{name}/{i}.jpg" for i in range(PER)])
        os.write(log_fd, f"enrolled {name}\n".encode())
        if stall_cache:
            os.fsync = stall  # cache.write's fsync (SQLite's own fsyncs are C calls, untouched)
        g.save()
        g.search(_photos(name)[:1], k=2)  # readers among the writers


@pytest.fixture(scope="module")
def procs():
    """A forkserver context whose server has imported facerec.photos.gallery (and this module) once."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["facerec.photos.gallery"])
    return ctx


def _printed(log: Path) -> list[str]:
    lines = log.read_text().splitlines() if log.exists() else []
    return [line.split(" ", 1)[1] for line in lines if line.startswith("enrolled ")]


def _wait_for(log: Path, text: str, proc, timeout: float = 60.0) -> None:  # noqa: ANN001
    end = time.time() + timeout
    while not (log.exists() and text in log.read_text()):
        assert proc.is_alive() and time.time() < end, f"worker never wrote {text!r} (exit code {proc.exitcode})"
        time.sleep(0.005)


# -- processes ----------------------------------------------------------------------------------------------------
def test_processes_enrolling_at_once_all_end_up_in_the_gallery(procs, tmp_path):
    """6 processes create one gallery at the same moment and each enroll 3 people: all 18 are there."""
    n, folder, log = 6, tmp_path / "g", tmp_path / "log"
    barrier = procs.Barrier(n + 1)
    names = [[f"w{w}_{i}" for i in range(3)] for w in range(n)]
    workers = [procs.Process(target=_enroll, args=(str(folder), ns, str(log), barrier)) for ns in names]
    for w in workers:
        w.start()
    barrier.wait(timeout=60)
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0] * n
    everyone = [x for ns in names for x in ns]
    assert sorted(_printed(log)) == sorted(everyone)
    _assert_consistent(folder, everyone)


def test_sigkill_at_random_points_loses_nothing_that_was_reported(procs, tmp_path):
    """Kill an enrolling process (commits, cache writes) at random moments, 6 times: the gallery always opens,
    everyone reported is there, everyone is there whole, and the index agrees with the database."""
    folder, rng = tmp_path / "g", np.random.default_rng(0)
    with Gallery.open(folder, "cosine", DIM) as g:  # a crowd, so that each cache write takes a while
        g.add("crowd", np.random.default_rng(1).normal(size=(4000, DIM)))
    printed: list[str] = []
    for round_ in range(6):
        log = tmp_path / f"log{round_}"
        names = [f"r{round_}_{i}" for i in range(200)]
        w = procs.Process(target=_enroll, args=(str(folder), names, str(log)))
        w.start()
        _wait_for(log, "enrolled", w)
        time.sleep(float(rng.uniform(0.0, 0.25)))
        w.kill()
        w.join(10)
        assert w.exitcode == -signal.SIGKILL
        printed += _printed(log)
        _assert_consistent(folder, printed, extra=round_ + 1, others=frozenset({"crowd"}))
    assert len(printed) >= 6


def test_sigkill_during_the_cache_write(procs, tmp_path):
    """Killed after its commit, inside the index cache's write: the person is there, the old cache is whole (or
    absent) and the temporary file is ignored, then swept away once it is old."""
    folder, log = tmp_path / "g", tmp_path / "log"
    w = procs.Process(target=_enroll, args=(str(folder), ["ann", "bob"], str(log)), kwargs={"stall_cache": True})
    w.start()
    _wait_for(log, "in-cache-write", w)
    w.kill()
    w.join(10)
    assert _printed(log) == ["ann"]
    temp = list(folder.glob(".index.cache.*.tmp"))
    assert len(temp) == 1 and temp[0].stat().st_size > 0
    _assert_consistent(folder, ["ann"])
    s = Gallery.open(folder).store.settings()
    assert cache.read(folder / cache.CACHE_NAME, s).version == s.version  # the open wrote a current cache
    os.utime(temp[0], (time.time() - 7200, time.time() - 7200))
    Gallery.open(folder).close()
    assert not temp[0].exists()


@pytest.mark.slow
def test_cli_enrolls_one_then_five_at_once(tmp_path):
    """The issue's reproduction: `facerec enroll` once, then five at once into the same gallery. Every command
    succeeds, prints "enrolled" and its person is listed; no traceback."""
    from test_export import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path / "tiny.pt", image_size=32)
    rng, gallery = np.random.default_rng(0), tmp_path / "gallery"
    from PIL import Image

    def enroll(name: str) -> subprocess.Popen:
        photo = tmp_path / f"{name}.png"
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(photo)
        argv = ["enroll", name, str(photo), "--gallery", str(gallery), "--checkpoint", str(ckpt), "--no-align"]
        code = "import sys; from facerec.cli import main; sys.exit(main(sys.argv[1:]))"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        return subprocess.Popen([sys.executable, "-c", code, *argv], stdout=-1, stderr=-1, text=True, env=env)

    runs = [enroll("first")]
    runs[0].wait(120)
    runs += [enroll(f"p{i}") for i in range(5)]
    outputs = [p.communicate(timeout=300) for p in runs]
    for p, (out, err) in zip(runs, outputs):
        assert p.returncode == 0 and "Traceback" not in err, err
        assert "enrolled" in out and "(1 stored)" in out
    listing = subprocess.run(
        [sys.executable, "-c", "import sys; from facerec.cli import main; sys.exit(main(sys.argv[1:]))"]
        + ["gallery", "list", "--gallery", str(gallery)],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert "6 people, 6 photos" in listing
    assert all(f"  {n}\n" in listing for n in ["first", "p0", "p1", "p2", "p3", "p4"])


# -- one process, several handles ---------------------------------------------------------------------------------
def test_a_handle_sees_what_another_committed(tmp_path):
    """Changes made through one Gallery (its own connection, as another process has) reach another's search
    without reopening: enroll, rename, remove, and the index kind (IVF, HNSW) with its parameters."""
    a = Gallery.open(tmp_path / "g", "cosine", DIM)
    b = Gallery.open(tmp_path / "g")
    for i in range(40):
        a.add(f"p{i}", _photos(f"p{i}"))
    assert b.search(_photos("p7")[:1], k=1)[0][0].name == "p7" and len(b) == 120
    assert a.rename("p7", "seven") == 3 and b.search(_photos("p7")[:1], k=1)[0][0].name == "seven"
    with pytest.raises(DataError, match="already enrolled"):
        a.rename("p8", "seven")
    with pytest.raises(DataError, match="not in the gallery"):
        a.rename("nobody", "x")
    for bad in ({"nprobe": -1}, {"nlist": -2}, {"hnsw_m": 10_000}):  # refused before anything is stored
        with pytest.raises(ValueError, match=f"reindex {next(iter(bad))}="):
            a.reindex("ivf" if "hnsw_m" not in bad else "hnsw", **bad)
    a.reindex("ivf", nlist=3, nprobe=3)
    assert isinstance(faiss.downcast_index(b.index), faiss.IndexIVFFlat) and b.index.nprobe == 3
    assert a.remove("p3") == 3 and b.search(_photos("p3")[:1], k=1)[0][0].name != "p3"
    a.reindex("hnsw", hnsw_m=8, ef_search=40)
    inner = faiss.downcast_index(faiss.downcast_index(b.index).index)
    assert isinstance(inner, faiss.IndexHNSWFlat) and inner.hnsw.efSearch == 40 and b.meta["index"] == "hnsw"
    a.remove("p5")  # HNSW cannot remove: b rebuilds
    assert b.index.ntotal == 114 and b.search(_photos("p5")[:1], k=1)[0][0].name != "p5"
    assert [m[0].name for m in b.search(_photos("p9"), k=1)] == ["p9"] * PER


def test_the_cache_is_derived_missing_damaged_foreign_or_behind(tmp_path):
    folder = tmp_path / "g"
    with Gallery.open(folder, "euclidean", DIM) as g:
        for name in ("ann", "bob"):
            g.add(name, _photos(name))
        g.save()
    path = folder / cache.CACHE_NAME
    good = path.read_bytes()
    for damaged in (b"", b"garbage" * 100, good[: len(good) // 2], good[:-10] + b"0123456789"):
        path.write_bytes(damaged)
        _assert_consistent(folder, ["ann", "bob"])
        assert path.read_bytes() == good  # rebuilt the same
    path.unlink()
    _assert_consistent(folder, ["ann", "bob"])
    with Gallery.open(tmp_path / "other", "euclidean", DIM) as other:  # another gallery's cache is not used
        other.add("zed", _photos("zed"))
    (tmp_path / "other" / cache.CACHE_NAME).replace(path)
    _assert_consistent(folder, ["ann", "bob"])
    with Gallery.open(folder) as g:  # a cache behind the database catches up
        g.add("cid", _photos("cid"))  # not saved: index.cache stays at the old version
        behind, now = cache.read(path, g.store.settings()), g.store.settings().version
    assert behind is not None and behind.version == now - 1 and behind.index.ntotal == 2 * PER
    _assert_consistent(folder, ["ann", "bob", "cid"])
    with Gallery.open(folder) as g:
        assert cache.read(path, g.store.settings()).version == now


def _broken(kind: str, db: Path) -> None:
    """Damage a gallery's database in one way."""
    if kind == "garbage":
        db.write_bytes(np.random.default_rng(0).integers(0, 256, 8192, dtype=np.uint8).tobytes())
    elif kind == "empty":
        db.write_bytes(b"")
    elif kind == "truncated":
        db.write_bytes(db.read_bytes()[: 4096 * 3])
    elif kind == "directory":
        db.unlink()
        db.mkdir()
    else:
        conn = sqlite3.connect(db)
        sql = {
            "other-database": "DROP TABLE meta",
            "bad-metric": "UPDATE meta SET value = 'manhattan' WHERE key = 'metric'",
            "newer-schema": "UPDATE meta SET value = 99 WHERE key = 'schema'",
            "bad-vector": "UPDATE photos SET embedding = x'0000' WHERE id = 5",
        }[kind]
        conn.execute(sql)
        conn.commit()
        conn.close()


@pytest.mark.parametrize(
    "kind, message",
    [
        ("garbage", "backup"),
        ("empty", "not a facerec gallery database"),
        ("truncated", "backup"),
        ("directory", "backup"),
        ("other-database", "not a facerec gallery database"),
        ("bad-metric", r"bad gallery settings \['metric'\]"),
        ("newer-schema", "upgrade facerec"),
        ("bad-vector", "not 16-d float32"),
    ],
)
def test_a_damaged_database_is_a_data_error_naming_the_file(tmp_path, kind, message):
    folder = tmp_path / "g"
    with Gallery.open(folder, "cosine", DIM) as g:
        for i in range(300):  # enough rows for the file to span pages
            g.add(f"p{i}", _photos(f"p{i}"))
    (folder / cache.CACHE_NAME).unlink()
    _broken(kind, folder / "gallery.db")
    with pytest.raises(DataError, match=message) as err:
        Gallery.open(folder, "cosine", DIM)
    assert "gallery.db" in str(err.value)


def _legacy(folder: Path, ids: list[int], names: list[str], index: str = "flat", nlist: int = 0) -> np.ndarray:
    """A gallery folder as facerec wrote it before gallery.db, written by hand; its (N, DIM) vectors."""
    folder.mkdir(parents=True)
    vectors = np.concatenate([_photos(n)[:1] for n in names])
    entries = {str(i): {"name": n, "source": f"{n}.jpg"} for i, n in zip(ids, names)}
    meta = {"format": "facerec-gallery", "version": 1, "metric": "cosine", "dim": DIM, "index": index}
    meta.update(nlist=nlist, nprobe=2 if nlist else 0, fingerprint="f00d", next_id=max(ids) + 5, entries=entries)
    (folder / "gallery.json").write_text(json.dumps(meta))
    np.save(folder / "vectors.npy", vectors)
    np.save(folder / "ids.npy", np.asarray(ids, dtype=np.int64))
    (folder / "index.faiss").write_bytes(b"torn")  # derived; not read by the migration
    return vectors


def test_an_old_gallery_folder_is_migrated_on_first_open(tmp_path):
    folder = tmp_path / "g"
    vectors = _legacy(folder, [4, 0, 9], ["ann", "bob", "ann"])
    g = Gallery.open(folder, fingerprint="f00d")
    assert g.people() == {"ann": 2, "bob": 1} and g.ids.tolist() == [0, 4, 9]
    np.testing.assert_allclose(g.vectors, vectors[[1, 0, 2]])
    assert g.search(vectors[2:3], k=2)[0][0].name == "ann" and g.meta["fingerprint"] == "f00d"
    assert g.add("cid", _photos("cid")[:1]) == [14]  # ids go on from the old next_id
    assert not (folder / "gallery.json").exists() and (folder / "legacy" / "gallery.json").is_file()
    with pytest.raises(DataError, match="another model"):
        Gallery.open(folder, fingerprint="beef")
    assert Gallery.open(folder).people() == {"ann": 2, "bob": 1, "cid": 1}
    with pytest.warns(UserWarning, match="1 stored vectors have no entry"):
        _legacy(tmp_path / "torn", [0, 1], ["ann", "bob"])
        meta = json.loads((tmp_path / "torn" / "gallery.json").read_text())
        del meta["entries"]["1"]  # what an interrupted old save could leave
        (tmp_path / "torn" / "gallery.json").write_text(json.dumps(meta))
        assert Gallery.open(tmp_path / "torn").people() == {"ann": 1}
    names = [f"p{i}" for i in range(80)]
    _legacy(tmp_path / "ivf", list(range(80)), names, index="ivf", nlist=2)
    g = Gallery.open(tmp_path / "ivf")
    assert g.meta["index"] == "ivf" and g.meta["nlist"] == 2 and g.index.nprobe == 2
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "gallery.json").write_text("{")
    with pytest.raises(DataError, match="gallery.json cannot be read"):
        Gallery.open(tmp_path / "bad")
