"""Gallery search at scale: exact (flat) against IVF, HNSW and LSH FAISS indexes, side by side in one run.

For each gallery size: N unit-length random embeddings (one per synthetic identity) and Q queries, each a noisy
copy of one enrolled embedding. The noise is Gaussian, N(0, sigma^2 / D) per coordinate, so for a unit x,
|x + noise|^2 ~ 1 + sigma^2 and cos(x, query) ~ 1 / sqrt(1 + sigma^2): sigma = sqrt(1 / c^2 - 1) gives cosine c
(0.7 -> sigma 1.02); the measured mean cosine is printed. Every index is built the gallery's way, through
`Scoring("cosine").faiss_index` (inner product on unit vectors) and `add` / `train`, and measured for:

    build s, vectors/s   time to train (IVF) and add all N vectors (wall; and CPU, all threads); N / wall time
    add ms               p50 time to add one more vector to the built index (enrolling one photo)
    p50 / p99 ms         latency of single-query searches (k=5), one query per `search` call, as identify does;
                         CPU ms p50: the process CPU time of a search (free of waiting for a busy core)
    recall@1             share of queries whose top match is the exact (flat) index's top match
    source@1             share of queries whose top match is the embedding they were made from
    MiB                  what the index holds: vectors, plus IVF ids and centroids, HNSW links or LSH bits
    load                 the 1-minute load average when the row was measured (other processes share the CPU)

Search settings (IVF nprobe, HNSW efSearch, LSH refine) are swept on one build each. Searches and single adds run
on one FAISS thread by default, as `Gallery.search` does for small batches: on a shared 2-core machine an OpenMP
team of two waits for a descheduled thread at every barrier (--search-threads 2 shows it). Sizes in --api-sizes
then run again through the public API (_gallery_api.py: Gallery.add per identity, or one transaction with
--bulk, then `Gallery.reindex(kind)` with the gallery's own defaults for that size, and Gallery.search). The last
lines: per size and kind, the fastest setting with recall@1 >= 0.99; the target (p50 <= 10 ms at 1M identities,
recall@1 >= 0.99) met or not.

    python bench/gallery.py [--sizes 10000 100000 1000000] [--queries 1000] [--dim 256] [--kinds flat ivf ...]
        [--nlist 1024] [--nprobe 16 32 ...] [--hnsw-m 32] [--ef-construction 80] [--ef 64 128 ...]
        [--lsh-bits 256] [--refine 4 8 16 32] [--threads 2] [--search-threads 1] [--api-sizes 10000 100000]
        [--bulk] [--json out.json]

Uniform random directions are a hard case for approximate search (no clusters, intrinsic dimension = D): a
vector's nearest other vector is hardly closer than a random one, so neither k-means cells nor graph links follow
any structure. Real embeddings have structure that the indexes exploit and should need smaller settings; this
benchmark does not measure that.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from datetime import date
from typing import Any

import faiss
import numpy as np
import torch
from _common import cpu_model
from _gallery_api import API_HEADER, api_line, measure_api
from _gallery_data import (
    COSINE,
    add_one_ms,
    default_nlists,
    exact_top1,
    index_mib,
    load_average,
    rss_mib,
    search_each,
    synthetic,
)

TARGET_MS, TARGET_RECALL = 10.0, 0.99


@dataclass
class Row:
    """One measured (size, index, threads, search setting); times in ms unless named _s."""

    size: int
    kind: str
    threads: int  # FAISS threads for the searches and single adds
    build: str  # build parameters
    search: str  # search setting
    build_s: float
    build_cpu_s: float  # CPU seconds of the build, all threads
    add_ms: float
    p50: float
    p99: float
    cpu50: float  # p50 process CPU time of a search: its cost, whatever else runs on the machine
    recall: float
    source: float
    mib: float
    value: int = 0  # nlist (IVF), M (HNSW) or bits (LSH)
    setting: int = 0  # nprobe (IVF), efSearch (HNSW) or refine (LSH)
    load: float = 0.0  # 1-minute load average after the row's searches

    def line(self) -> str:
        rate = self.size / self.build_s if self.build_s > 0 else math.inf
        cells = [f"{self.size:,}", self.kind, self.threads, self.build, self.search, f"{self.build_s:.1f}"]
        cells += [f"{self.build_cpu_s:.1f}", f"{rate:,.0f}", f"{self.add_ms:.3f}", f"{self.p50:.2f}"]
        cells += [f"{v:.2f}" for v in (self.p99, self.cpu50)] + [f"{self.recall:.3f}", f"{self.source:.3f}"]
        return "| " + " | ".join(map(str, [*cells, f"{self.mib:,.0f}", f"{self.load:.1f}"])) + " |"


COLUMNS = "identities, index, threads, build, search, build s, build CPU s, vectors/s, add ms, p50 ms, p99 ms, "
COLUMNS += "CPU ms p50, recall@1, source@1, MiB, load"
HEADER = "| " + COLUMNS.replace(", ", " | ") + " |\n" + "|---" * 16 + "|"


def build(
    kind: str, value: int, base: np.ndarray, ef_construction: int, seed: int
) -> tuple[Any, tuple[float, float], str]:
    """A built index of `kind` ("flat"; "ivf" with nlist=value; "hnsw" with M=value; "lsh" with value bits) over
    `base`, its build time (wall and CPU seconds) and a description. IVF trains k-means on <= 64 vectors per list
    (FAISS: >= 39)."""
    n, dim = base.shape
    c0, t0 = time.process_time(), time.perf_counter()
    if kind == "flat":
        index, text = COSINE.faiss_index(dim), "-"
    elif kind == "ivf":
        index, text = COSINE.faiss_index(dim, value), f"nlist {value}"
        sample = np.random.default_rng(seed).choice(n, min(n, 64 * value), replace=False)
        index.train(base[np.sort(sample)])
    elif kind == "lsh":
        index, text = COSINE.faiss_index(dim, lsh_bits=value), f"{value} bits"
    else:
        index = COSINE.faiss_index(dim, hnsw_m=value, ef_construction=ef_construction)
        text = f"M {value}, efC {ef_construction}"
    index.add(base)
    return index, (time.perf_counter() - t0, time.process_time() - c0), text


def settings(kind: str, value: int, args: argparse.Namespace) -> list[tuple[str, int]]:
    """The search settings to sweep on one build: nothing (flat), nprobe <= nlist (IVF), efSearch (HNSW), the
    candidates re-scored per match (LSH)."""
    if kind == "flat":
        return [("-", 0)]
    if kind == "lsh":
        return [(f"refine {r}", r) for r in args.refine]
    if kind == "ivf":
        return [(f"nprobe {p}", p) for p in args.nprobe if p <= value]
    return [(f"efSearch {e}", e) for e in args.ef]


def measure_kind(
    kind: str, value: int, data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], args: argparse.Namespace
) -> list[Row]:
    """Build one index over data = (gallery, queries, sources, exact top-1), sweep its search settings, then add
    single vectors to it; one Row per search setting."""
    base, queries, sources, exact = data
    if kind == "flat":  # exact by definition: its latency alone needs fewer queries (~100 ms each at 1M)
        queries, sources, exact = (a[: args.flat_queries] for a in (queries, sources, exact))
    index, seconds, text = build(kind, value, base, args.ef_construction, args.seed)
    mib = index_mib(index)
    rows = []
    for threads in args.search_threads:
        faiss.omp_set_num_threads(threads)
        for label, setting in settings(kind, value, args):
            if kind == "ivf":
                index.nprobe = setting
            elif kind == "hnsw":
                index.hnsw.efSearch = setting
            elif kind == "lsh":
                index.k_factor = float(setting)
            p50, p99, cpu50, out = search_each(lambda q: index.search(q, args.k)[1][0, 0], queries)
            top = np.asarray(out)
            hits = float(np.mean(top == exact)), float(np.mean(top == sources))
            row = Row(
                len(base), kind, threads, text, label, *seconds, math.nan, p50, p99, cpu50, *hits, mib, value
            )
            row.setting, row.load = setting, os.getloadavg()[0]
            rows.append(row)
            print(row.line(), flush=True)
    for threads in args.search_threads:  # after every search: the added vectors change the index
        faiss.omp_set_num_threads(threads)
        add_ms = add_one_ms(index, base.shape[1])
        for r in (r for r in rows if r.threads == threads):
            r.add_ms = add_ms
        print(f"  ({kind} {text}, {threads} threads: adding one vector takes {add_ms:.3f} ms, p50)", flush=True)
    faiss.omp_set_num_threads(args.threads)
    return rows


def flat_ints(values: list[str]) -> list[int]:
    """`--sizes 10000 100000` or `--sizes 10000,100000` (either way) as ints."""
    return [int(v) for text in values for v in text.split(",") if v]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=[10_000, 100_000, 1_000_000], help="gallery sizes (identities)")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--flat-queries", type=int, default=200, help="of --queries, searched in the flat index")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--kinds", nargs="+", default=["flat", "ivf", "hnsw", "lsh"], help="flat, ivf, hnsw, lsh")
    p.add_argument("--cosine", type=float, default=0.7, help="intended cosine of a query to its source")
    p.add_argument("-k", type=int, default=5, help="matches per search")
    p.add_argument("--nlist", nargs="+", help="IVF list counts, one build each (default: sqrt(N), 4 sqrt(N))")
    p.add_argument("--nprobe", nargs="+", default=[16, 32, 64, 128, 256, 512, 1024], help="IVF lists searched")
    p.add_argument("--hnsw-m", nargs="+", default=[32], help="HNSW links per vector, one build each")
    p.add_argument("--ef-construction", type=int, default=80, help="HNSW candidates per insertion")
    p.add_argument("--ef", nargs="+", default=[64, 128, 256, 512, 1024], help="HNSW efSearch values")
    p.add_argument("--lsh-bits", nargs="+", help="LSH sign bits per vector, one build each (default: --dim)")
    p.add_argument("--refine", nargs="+", default=[4, 8, 16, 32], help="LSH candidates re-scored per match")
    p.add_argument(
        "--bulk", action="store_true", help="API sizes enrolled in one transaction, not one per identity"
    )
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="FAISS and torch threads for builds")
    p.add_argument("--search-threads", nargs="+", default=[1], help="FAISS threads for searches and adds")
    p.add_argument("--api-sizes", nargs="*", default=[10_000, 100_000], help="sizes also run through Gallery")
    p.add_argument("--workdir", help="where the API run's temporary gallery goes (default: the system's temp)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write every row and the run's details to this JSON file")
    args = p.parse_args()
    for key in ("sizes", "nlist", "nprobe", "hnsw_m", "ef", "lsh_bits", "refine", "search_threads", "api_sizes"):
        if getattr(args, key) is not None:
            setattr(args, key, flat_ints([str(v) for v in getattr(args, key)]))
    args.kinds, args.api_lines = [k for text in args.kinds for k in text.split(",") if k], []
    if bad := set(args.kinds) - {"flat", "ivf", "hnsw", "lsh"}:
        p.error(f"unknown --kinds {sorted(bad)}; choose from flat, ivf, hnsw, lsh")
    return args


def run_size(n: int, args: argparse.Namespace) -> list[Row]:
    t0 = time.perf_counter()
    base, queries, sources = synthetic(n, args.queries, args.dim, args.cosine, args.seed)
    exact = exact_top1(base, queries)
    cos = float(np.mean(np.sum(base[sources] * queries, axis=1)))
    print(
        f"\n{n:,} identities x {args.dim}-d, {args.queries} queries: mean cosine to the source {cos:.4f} "
        f"(asked {args.cosine}); exact top-1 is the source for {np.mean(exact == sources):.3f}; "
        f"data {time.perf_counter() - t0:.1f} s, process RSS {rss_mib():,.0f} MiB",
        flush=True,
    )
    rows = []
    for kind in args.kinds:
        values = {"flat": [0], "ivf": args.nlist or default_nlists(n), "hnsw": args.hnsw_m}.get(kind)
        values = values or args.lsh_bits or [args.dim]
        for value in values:
            rows += measure_kind(kind, value, (base, queries, sources, exact), args)
    if n in args.api_sizes:
        print(f"through the gallery API (Gallery.add, reindex, search), {n:,} identities:\n{API_HEADER}")
        args.api_lines += measure_api(base, queries, exact, args)
    return rows


def fastest(rows: list[Row]) -> Row:
    """The lowest-p50 row with recall@1 >= TARGET_RECALL; without one, the row of the highest recall."""
    ok = [r for r in rows if r.recall >= TARGET_RECALL]
    return min(ok, key=lambda r: r.p50) if ok else max(rows, key=lambda r: (r.recall, -r.p50))


def summary(rows: list[Row]) -> None:
    """Per size and kind the fastest setting that reaches the recall target, and whether 1M met the target."""
    print(f"\nfastest setting with recall@1 >= {TARGET_RECALL} (target: p50 <= {TARGET_MS} ms at 1,000,000):")
    for n, kind in dict.fromkeys((r.size, r.kind) for r in rows):
        r = fastest([r for r in rows if (r.size, r.kind) == (n, kind)])
        how = (
            f"{r.threads} threads, {r.build}, {r.search}: p50 {r.p50:.2f} ms (CPU {r.cpu50:.2f}), p99 {r.p99:.2f}"
        )
        print(
            f"  {n:>9,} {kind:4s} {how}, recall {r.recall:.3f}" + ("" if r.recall >= TARGET_RECALL else " (best)")
        )
    if any(r.size >= 1_000_000 for r in rows):
        met = [r for r in rows if r.size >= 1_000_000 and r.recall >= TARGET_RECALL and r.p50 <= TARGET_MS]
        print(f"target at 1M identities: {f'MET by {len(met)} setting(s)' if met else 'MISSED'}")


def main() -> None:
    args = parse_args()
    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    command = "python " + shlex.join(sys.argv)
    machine = f"{cpu_model()}, nproc {os.cpu_count()}, faiss {faiss.__version__}"
    start_load = load_average()
    print(f"{command}\n{date.today()}: {machine}, {args.threads} threads to build; {start_load}")
    print(
        "first table: the FAISS layer (Scoring.faiss_index + train/add, as the gallery builds its index), one "
        f"query per search call; sizes {args.api_sizes} also through the Gallery API\n" + HEADER,
        flush=True,
    )
    rows: list[Row] = []
    for n in args.sizes:
        rows += run_size(n, args)
    end_load = load_average()
    print(f"\nat the end: {end_load}; peak process RSS {rss_mib('VmHWM'):,.0f} MiB")
    print("\nall rows (add ms filled in):\n" + "\n".join([HEADER] + [r.line() for r in rows]))
    if args.api_lines:
        print("\nthrough the gallery API:\n" + "\n".join([API_HEADER, *map(api_line, args.api_lines)]))
    summary(rows)
    if args.json:
        run = {"command": command, "date": str(date.today()), "machine": machine, "build_threads": args.threads}
        run |= {"load_start": start_load, "load_end": end_load, "peak_rss_mib": rss_mib("VmHWM")}
        out = {"run": run, "rows": [asdict(r) for r in rows], "api": args.api_lines}
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=float)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
