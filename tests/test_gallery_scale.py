"""Gallery at scale (issue #17): the index settings `reindex` picks by size (measured by bench/gallery.py), single
queries on one FAISS thread, and the content digest that ties `index.cache` to gallery.db."""

from __future__ import annotations

import os
import shutil
import sqlite3
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")
from facerec.photos.gallery import Gallery, cache, digest, settings  # noqa: E402

DIM = 16


def _photos(name: str, n: int = 2) -> np.ndarray:
    """`n` unit embeddings (n, DIM) seeded by `name`."""
    x = np.random.default_rng(zlib.crc32(name.encode())).normal(size=(n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _stored_digest(folder: Path) -> str:
    conn = sqlite3.connect(folder / "gallery.db")
    try:
        return conn.execute("SELECT value FROM meta WHERE key = 'digest'").fetchone()[0]
    finally:
        conn.close()


def _recomputed(g: Gallery) -> str:
    """The digest of every stored row, recomputed from what the database holds (id, owner, embedding)."""
    conn = sqlite3.connect(g.folder / "gallery.db")
    rows = conn.execute("SELECT id, person, embedding FROM photos ORDER BY person DESC").fetchall()
    conn.close()
    vectors = np.frombuffer(b"".join(r[2] for r in rows), np.float32).reshape(-1, DIM)
    ids, owners = np.array([r[0] for r in rows]), np.array([r[1] for r in rows])
    return digest.text(digest.of_rows(ids, owners, vectors))


def test_reindex_picks_the_measured_settings_by_size(tmp_path: Path) -> None:
    """What bench/gallery.py measured to reach recall@1 >= 0.99 (docs/benchmarks.md, "Gallery at scale"): IVF
    searches a quarter of ~4 sqrt(N) lists; HNSW efSearch grows with sqrt(N) (was: nprobe 8, efSearch 64, recall
    0.6-0.9 at 100,000)."""
    assert [settings.ivf_defaults(n) for n in (10_000, 100_000, 1_000_000)] == [
        (256, 64),
        (1264, 316),
        (4000, 1000),
    ]
    assert settings.ivf_defaults(100_000, nlist=1024) == (1024, 256) and settings.ivf_defaults(50) == (1, 1)
    assert [settings.hnsw_defaults(n)[1] for n in (100, 10_000, 100_000, 1_000_000, 10**8)] == [
        64,
        128,
        256,
        1024,
        1024,
    ]
    rng = np.random.default_rng(0)
    with Gallery.open(tmp_path / "g", "cosine", DIM) as g:
        g.add("crowd", rng.normal(size=(6500, DIM)).astype(np.float32))  # one transaction
        g.reindex("ivf")  # min(4 sqrt(6500), 6500 // 39) = 166 lists, 42 searched
        assert (g.meta["nlist"], g.meta["nprobe"], g.index.nprobe) == (166, 42, 42)
        g.reindex("lsh")  # one bit per dimension, 16 candidates per match
        assert (g.meta["lsh_bits"], g.meta["refine"], faiss.downcast_index(g.index.index).k_factor) == (
            DIM,
            16,
            16,
        )
        g.reindex("hnsw", ef_search=None)  # 0.8 sqrt(6500) = 64.5 -> 128
        sub = faiss.downcast_index(faiss.downcast_index(g.index).index)
        assert (g.meta["hnsw_m"], g.meta["ef_search"], sub.hnsw.efSearch, sub.hnsw.nb_neighbors(1)) == (
            32,
            128,
            128,
            32,
        )


def test_one_faiss_thread_for_small_batches_only() -> None:
    faiss.omp_set_num_threads(2)
    with cache.one_thread(1):
        assert faiss.omp_get_max_threads() == 1
    assert faiss.omp_get_max_threads() == 2
    with cache.one_thread(cache.SMALL_BATCH):
        assert faiss.omp_get_max_threads() == 2
    with pytest.raises(KeyError), cache.one_thread(3):
        raise KeyError("restored even when the search fails")
    assert faiss.omp_get_max_threads() == 2


def test_the_digest_is_a_sum_over_rows_in_any_order() -> None:
    rng = np.random.default_rng(0)
    x, ids, owners = _photos("x", 50), np.arange(50) * 7, rng.integers(1, 9, 50)
    whole = digest.of_rows(ids, owners, x)
    perm = rng.permutation(50)
    assert digest.of_rows(ids[perm], owners[perm], x[perm]) == whole
    assert (digest.of_rows(ids[:20], owners[:20], x[:20]) + digest.of_rows(ids[20:], owners[20:], x[20:])) & (
        digest.MASK
    ) == whole
    flipped = x.copy()
    flipped.view(np.uint32)[3, 5] ^= 1  # one bit of one embedding
    assert digest.of_rows(ids, owners, flipped) != whole
    assert digest.of_rows(ids, owners[::-1], x) != whole and digest.of_rows(ids + 1, owners, x) != whole
    assert digest.of_rows(ids[:0], owners[:0], x[:0]) == digest.EMPTY


def test_every_change_keeps_the_stored_digest_and_old_galleries_get_one(tmp_path: Path) -> None:
    with Gallery.open(tmp_path / "g", "cosine", DIM) as g:
        assert _stored_digest(g.folder) == digest.text(digest.EMPTY)
        for name in ("ann", "bob", "cid"):
            g.add(name, _photos(name))
        g.add("ann", _photos("ann2", 1))
        g.rename("bob", "Bob")
        g.remove("cid")
        assert _stored_digest(g.folder) == _recomputed(g) != digest.text(digest.EMPTY)
    conn = sqlite3.connect(tmp_path / "g" / "gallery.db")  # a gallery made before digests
    conn.execute("DELETE FROM meta WHERE key = 'digest'")
    conn.commit()
    conn.close()
    with Gallery.open(tmp_path / "g") as g:
        assert _stored_digest(g.folder) == _recomputed(g)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw", "lsh"])
def test_a_cache_that_matches_is_used_as_it_is(tmp_path: Path, kind: str) -> None:
    with Gallery.open(tmp_path / "g", "cosine", DIM) as g:
        for i in range(12):
            g.add(f"p{i}", _photos(f"p{i}"))
        g.reindex(kind, **({"nlist": 2} if kind == "ivf" else {}))
        g.save()
    path = tmp_path / "g" / cache.CACHE_NAME
    before = path.stat().st_mtime_ns
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "does not hold what gallery.db holds"
        with Gallery.open(tmp_path / "g") as g:
            assert g.search(_photos("p4")[:1], k=1)[0][0].name == "p4"
    assert path.stat().st_mtime_ns == before  # read and trusted, not rebuilt and written again


def test_a_cache_of_another_state_at_the_same_version_is_rebuilt(tmp_path: Path) -> None:
    """gallery.db restored from a backup and changed again up to the version of a cache kept from before the
    restore: the cache names the same database, epoch and version, yet holds someone else."""
    folder, backup = tmp_path / "g", tmp_path / "backup.db"
    with Gallery.open(folder, "cosine", DIM) as g:
        g.add("ann", _photos("ann"))
    shutil.copy(folder / "gallery.db", backup)  # closed: the WAL is checkpointed into the file
    with Gallery.open(folder) as g:
        g.add("cid", _photos("cid"))
        g.save()
    kept = (folder / cache.CACHE_NAME).read_bytes()
    for extra in ("-wal", "-shm"):
        (folder / f"gallery.db{extra}").unlink(missing_ok=True)
    shutil.copy(backup, folder / "gallery.db")
    with Gallery.open(folder) as g:
        g.add("dan", _photos("dan"))  # the version of the kept cache, which holds cid instead
    (folder / cache.CACHE_NAME).write_bytes(kept)
    with pytest.warns(UserWarning, match="does not hold what"), Gallery.open(folder) as g:
        top = g.search(_photos("dan"), k=1)
        assert [m[0].name for m in top] == ["dan", "dan"] and top[0][0].score == pytest.approx(1.0, abs=1e-5)


def test_a_forged_cache_with_a_valid_checksum_is_rebuilt(tmp_path: Path) -> None:
    """A cache written by cache.write (a valid checksum, the right database and version) whose index holds other
    vectors under the same ids: searches must not score against them."""
    folder = tmp_path / "g"
    with Gallery.open(folder, "cosine", DIM) as g:
        for name in ("ann", "bob"):
            g.add(name, _photos(name))
        g.save()
        s = g.store.settings()
    path = folder / cache.CACHE_NAME
    forged = cache.read(path, s)
    index = faiss.IndexIDMap(faiss.IndexFlatIP(DIM))
    index.add_with_ids(np.roll(_photos("ann", 4), 1, axis=0), forged.ids)  # ann's vectors under other ids
    forged.index = index
    assert cache.write(path, s, forged) and cache.read(path, s) is not None  # valid checksum, right header
    with pytest.warns(UserWarning, match="does not hold what"), Gallery.open(folder) as g:
        assert [m[0].name for m in g.search(_photos("bob"), k=1)] == ["bob", "bob"]
    assert os.path.exists(path)


def test_a_handle_catches_up_by_what_was_enrolled_and_reloads_after_an_edit(tmp_path: Path) -> None:
    """After enrolments only, another handle's index (as another process's) is extended in place with the new
    photos and names; a rename or removal (the `edits` counter) makes it read the names and counts again."""
    a = Gallery.open(tmp_path / "g", "cosine", DIM)
    b = Gallery.open(tmp_path / "g")
    for i in range(5):
        a.add(f"p{i}", _photos(f"p{i}"))
    assert b.search(_photos("p3")[:1], k=1)[0][0].name == "p3"
    state, asked, names = b._mirror.state, [], b.store.names
    b.store.names = lambda after=None: asked.append(after) or names(after)  # type: ignore[method-assign]
    a.add("p1", _photos("more", 6))  # p1 now has the most photos: 8
    a.add("new", _photos("new"))
    top = b.search(_photos("more")[:1], k=3)[0]
    assert asked == [5]  # only the people enrolled since (ids 1..5 known): not every name again
    assert b._mirror.state is state and b._mirror.per_name == 8 and state.index.ntotal == 18
    assert top[0].name == "p1" and len({m.name for m in top}) == 3  # 3 people, though p1's photos come first
    assert b.search(_photos("new")[:1], k=1)[0][0].name == "new"
    a.rename("new", "renamed")
    assert b.search(_photos("new")[:1], k=1)[0][0].name == "renamed" and asked[-1] is None  # all names again
    a.remove("p1")
    assert "p1" not in {m.name for m in b.search(_photos("more")[:1], k=5)[0]} and b._mirror.per_name == 2
    a.close()
    b.close()


def test_an_lsh_gallery_answers_exact_scores_and_rebuilds_on_removal(tmp_path: Path) -> None:
    with Gallery.open(tmp_path / "e", "euclidean", DIM) as e:
        e.add("ann", _photos("ann"))
        with pytest.raises(ValueError, match="lsh index compares angles and needs a cosine gallery"):
            e.reindex("lsh")
    a = Gallery.open(tmp_path / "g", "cosine", DIM)
    b = Gallery.open(tmp_path / "g")
    for i in range(60):
        a.add(f"p{i}", _photos(f"p{i}"))
    a.reindex("lsh", lsh_bits=64, refine=4)
    assert (b.meta["lsh_bits"], b.meta["refine"]) == (64, 4) and "lsh" in cache.layout(b.index)[-1][0].lower()
    top = b.search(_photos("p7"), k=2)
    assert [m[0].name for m in top] == ["p7", "p7"] and top[0][0].score == pytest.approx(1.0, abs=1e-5)
    exact = float(np.max(_photos("p9") @ _photos("p7")[0]))  # a person's score: the exact cosine of their best
    assert next(m.score for m in b.search(_photos("p9")[:1], k=60)[0] if m.name == "p9") == pytest.approx(1.0)
    assert any(abs(m.score - exact) < 1e-5 for m in b.search(_photos("p7")[:1], k=60)[0] if m.name == "p9")
    a.remove("p7")  # LSH + refine cannot delete: b rebuilds its index
    assert b.index.ntotal == 118 and "p7" not in {m.name for m in b.search(_photos("p7"), k=3)[0]}
    a.close()
    b.close()


def test_the_reindex_command_takes_and_prints_the_lsh_settings(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from facerec.cli.main import main

    with Gallery.open(tmp_path / "g", "cosine", DIM) as g:
        for i in range(10):
            g.add(f"p{i}", _photos(f"p{i}"))
    assert main(["gallery", "reindex", "--index", "lsh", "--refine", "5", "--gallery", str(tmp_path / "g")]) == 0
    assert "rebuilt a lsh index over 20 photos (16 bits, refine 5)" in capsys.readouterr().out
    assert main(["gallery", "reindex", "--index", "lsh", "--lsh-bits", "0", "--gallery", str(tmp_path / "g")]) == 0
    assert "(16 bits, refine 16)" in capsys.readouterr().out  # 0: the defaults
    with Gallery.open(tmp_path / "g") as g:
        assert g.search(_photos("p3")[:1], k=1)[0][0].name == "p3"
