"""bench/gallery.py's second half: the same gallery through facerec's public API (`facerec.photos.gallery`).

Enrolls N synthetic identities with `Gallery.add`, one identity per call (one SQLite transaction each, as
`facerec enroll` does), then for each index kind calls `Gallery.reindex(kind)` with no settings, so the gallery
picks its own defaults for its size (what `facerec gallery reindex --index KIND` gets), and times
`Gallery.search` one query at a time, as identify does: the FAISS search plus the gallery's own work (the version
check against gallery.db, names, distinct people). "after an enroll" is a search right after one more identity
was enrolled: the process's index catches up with the database first.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from _gallery_data import search_each

from facerec.photos.gallery import Gallery, digest

API_COLUMNS = ["identities", "index", "defaults chosen", "Gallery.add /s", "reindex s", "p50 ms", "p99 ms"]
API_COLUMNS += ["CPU ms p50", "recall@1", "after an enroll, p50 ms", "load"]
API_HEADER = "| " + " | ".join(API_COLUMNS) + " |\n" + "|---" * len(API_COLUMNS) + "|"


def name(i: int) -> str:
    return f"id{i:07d}"


def enroll(folder: Path, base: np.ndarray, bulk: bool) -> tuple[Gallery, float]:
    """A new cosine gallery of one identity per row of `base`, enrolled one `Gallery.add` call each; the
    identities enrolled per second. `bulk`: all in one transaction written here (as `Store.add` writes rows, with
    the content digest), to reach 1,000,000 identities in minutes: the searches are the gallery's own."""
    g = Gallery.open(folder, metric="cosine", dim=base.shape[1])
    t0 = time.perf_counter()
    if bulk:
        ids = np.arange(len(base), dtype=np.int64)
        with g.store.writing() as conn:
            people = ((int(i) + 1, name(int(i))) for i in ids)  # sqlite3 takes ints, not numpy's
            conn.executemany("INSERT INTO people (id, name, added) VALUES (?, ?, 0)", people)
            rows = ((int(i), int(i) + 1, base[i].tobytes()) for i in ids)
            conn.executemany(
                "INSERT INTO photos (id, person, embedding, source, added) VALUES (?, ?, ?, '', 0)", rows
            )
            g.store.set_meta(conn, {"next_id": len(base)})
            digest.reset(conn, digest.of_rows(ids, ids + 1, base))
    else:
        for i in range(len(base)):
            g.add(name(i), base[i : i + 1])
    return g, len(base) / (time.perf_counter() - t0)


def after_enroll_ms(g: Gallery, queries: np.ndarray, k: int, count: int = 20) -> float:
    """p50 ms of a search that follows the enrolment of one more identity (its index must catch up first)."""
    extra = np.random.default_rng(54321).standard_normal((count, queries.shape[1]), dtype=np.float32)
    times = []
    for j in range(count):
        g.add(f"extra{len(g)}", extra[j : j + 1])
        t0 = time.perf_counter()
        g.search(queries[j : j + 1], k)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def chosen(meta: dict[str, Any]) -> str:
    """The index settings a gallery recorded, as text."""
    if meta["index"] == "ivf":
        return f"nlist {meta['nlist']}, nprobe {meta['nprobe']}"
    if meta["index"] == "hnsw":
        return f"M {meta['hnsw_m']}, efSearch {meta['ef_search']}"
    if meta["index"] == "lsh":
        return f"{meta['lsh_bits']} bits, refine {meta['refine']}"
    return "-"


def api_line(row: dict[str, Any]) -> str:
    rate = f"{row['add_per_s']:,.0f}" + (" (bulk)" if row.get("bulk") else "")
    cells = [f"{row['size']:,}", row["kind"], row["chosen"], rate, f"{row['reindex_s']:.1f}"]
    cells += [f"{row[k]:.2f}" for k in ("p50", "p99", "cpu50")] + [f"{row['recall']:.3f}"]
    return "| " + " | ".join([*cells, f"{row['after_enroll_p50']:.2f}", f"{row['load']:.1f}"]) + " |"


def measure_api(base: np.ndarray, queries: np.ndarray, exact: np.ndarray, args: Any) -> list[dict[str, Any]]:
    """One row per index kind in `args.kinds` (as API_HEADER's columns) for a gallery of `base` searched by
    `queries`, whose exact top-1 rows are `exact`; `reindex(kind)` with the gallery's defaults."""
    folder = Path(tempfile.mkdtemp(prefix="facerec-bench-gallery-", dir=args.workdir))
    want = [name(int(i)) for i in exact]
    rows = []
    try:
        g, rate = enroll(folder / "gallery", base, args.bulk)
        for kind in args.kinds:
            faiss.omp_set_num_threads(args.threads)  # the build; Gallery.search picks one thread for one query
            t0 = time.perf_counter()
            g.reindex(kind)
            g.search(queries[:1], args.k)  # the index is built by the first search after the change
            seconds = time.perf_counter() - t0
            p50, p99, cpu50, out = search_each(lambda q: g.search(q, args.k)[0], queries)
            recall = float(np.mean([m[0].name == w for m, w in zip(out, want)]))
            row = {"size": len(base), "kind": kind, "chosen": chosen(g.meta), "add_per_s": rate, "bulk": args.bulk}
            row |= {"reindex_s": seconds, "p50": p50, "p99": p99, "cpu50": cpu50, "recall": recall}
            row |= {"after_enroll_p50": after_enroll_ms(g, queries, args.k), "load": os.getloadavg()[0]}
            rows.append(row)
            print(api_line(row), flush=True)
        g.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        faiss.omp_set_num_threads(args.threads)
    return rows
