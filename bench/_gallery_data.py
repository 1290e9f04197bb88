"""bench/gallery.py's data and measurements: synthetic unit embeddings and noisy queries, the exact top match,
single-query timing, and the memory an index holds."""

from __future__ import annotations

import math
import os
import time
from typing import Any

import faiss
import numpy as np

from facerec.metrics.scoring import Scoring

COSINE = Scoring.of("cosine")


def unit_rows(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """(n, dim) float32 random directions, normalised in place in chunks (no float64 copy of a 1 GB array)."""
    x = rng.standard_normal((n, dim), dtype=np.float32)
    for i in range(0, n, 65536):
        x[i : i + 65536] /= np.linalg.norm(x[i : i + 65536], axis=1, keepdims=True)
    return x


def synthetic(n: int, q: int, dim: int, cosine: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gallery (n, dim), queries (q, dim) (both unit length) and each query's source row (q,)."""
    rng = np.random.default_rng(seed)
    base = unit_rows(n, dim, rng)
    sources = rng.choice(n, q, replace=False)
    sigma = math.sqrt(1 / cosine**2 - 1)
    queries = base[sources] + sigma / math.sqrt(dim) * rng.standard_normal((q, dim), dtype=np.float32)
    return base, COSINE.index_vectors(queries), sources


def load_average() -> str:
    return "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def rss_mib(field: str = "VmRSS") -> float:
    """Resident memory of this process (VmRSS), or its peak (VmHWM), MiB."""
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return math.nan


def index_mib(index: Any) -> float:
    """What the index holds, MiB: the vectors, plus the IVF ids and centroids, the HNSW graph's links or the LSH
    bits."""
    size = index.ntotal * index.d * 4
    if isinstance(index, faiss.IndexRefine):
        size += index.ntotal * faiss.downcast_index(index.base_index).code_size
    elif isinstance(index, faiss.IndexIVF):
        size += index.ntotal * 8 + index.nlist * index.d * 4
    elif isinstance(index, faiss.IndexHNSW):
        h = index.hnsw
        size += h.neighbors.size() * 4 + h.levels.size() * 4 + h.offsets.size() * 8
    return size / 2**20


def exact_top1(base: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """The exact best match of each query (Q,), one batched search that does not copy the gallery."""
    return faiss.knn(queries, base, 1, metric=faiss.METRIC_INNER_PRODUCT)[1][:, 0]


def search_each(search: Any, queries: np.ndarray) -> tuple[float, float, float, list[Any]]:
    """`search(query (1, D))` for each query: p50 and p99 latency and p50 process CPU time (ms; on a shared
    machine the wall time includes waiting for a core, the CPU time does not) and each call's result."""
    times, cpu, out = np.empty(len(queries)), np.empty(len(queries)), []
    for i in range(len(queries)):
        c0, t0 = time.process_time(), time.perf_counter()
        out.append(search(queries[i : i + 1]))
        times[i], cpu[i] = time.perf_counter() - t0, time.process_time() - c0
    p50, p99 = np.percentile(times, [50, 99]) * 1e3
    return float(p50), float(p99), float(np.median(cpu)) * 1e3, out


def add_one_ms(index: Any, dim: int, count: int = 200) -> float:
    """p50 ms to add one new unit vector to a built index (after the searches: it changes the index)."""
    extra = unit_rows(count, dim, np.random.default_rng(12345))
    times = []
    for i in range(count):
        t0 = time.perf_counter()
        index.add(extra[i : i + 1])
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def default_nlists(n: int) -> list[int]:
    """sqrt(N) and 4 sqrt(N) lists, each rounded to a power of 2 and capped at N / 39 (FAISS wants >= 39 training
    vectors per list): the usual range of IVF list counts."""
    return sorted({max(1, min(2 ** round(math.log2(f * math.sqrt(n))), n // 39)) for f in (1, 4)})
