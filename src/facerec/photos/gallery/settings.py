"""The `meta` table of gallery.db: what every process needs to search a gallery the same way, and its checks.

Keys: `format`, `schema`, a random `uid` (names the database in its index cache), `metric`, `dim`,
`fingerprint` (the model's weights), the index kind and its parameters (`index`, `nlist`, `nprobe`, `hnsw_m`,
`ef_search`, `centroids`: an IVF quantizer's (nlist, dim) float32 blob, `lsh_bits`, `refine`), `epoch` (the
version at which the index kind was chosen), `next_id` (the next photo id), `version` (raised by every write
transaction), `edits` (raised by every removal and rename) and `digest` (digest.py: a checksum of the stored rows
that an index cache must match).
"""

from __future__ import annotations

import math
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from facerec.errors import DataError
from facerec.metrics.scoring import SCORING_NAMES

FORMAT = "facerec-gallery"
SCHEMA = 2  # 1 was the folder of gallery.json + vectors.npy + ids.npy + index.faiss (photos.gallery.legacy)
INDEX_KINDS = ("flat", "ivf", "hnsw", "lsh")
# largest values (sane for FAISS, which takes C ints); the counters (version, next_id) go up to 2**62
LIMITS = {"dim": 1 << 16, "nlist": 1 << 24, "nprobe": 1 << 24, "hnsw_m": 512, "ef_search": 1 << 24}
LIMITS |= {"lsh_bits": 1 << 16, "refine": 1 << 16}
LSH_KEYS = {"lsh_bits": 0, "refine": 0}  # keys added after schema 2 began: a gallery without them has 0


@dataclass(frozen=True)
class Settings:
    """The `meta` table, checked: what every process needs to search the gallery the same way."""

    uid: str
    metric: str
    dim: int
    fingerprint: str | None
    index: str  # one of INDEX_KINDS
    nlist: int  # IVF lists (0 unless ivf)
    nprobe: int  # IVF lists searched per query
    hnsw_m: int  # HNSW links per vector (0 unless hnsw)
    ef_search: int  # HNSW candidates per search
    epoch: int  # the version at which the index kind was last chosen: a cache of another epoch is rebuilt
    version: int
    lsh_bits: int = 0  # LSH sign bits per vector (0 unless lsh)
    refine: int = 0  # LSH candidates scored exactly per match wanted


# the index settings of an exact search; `reindex` starts from these
FLAT_INDEX: dict[str, object] = {
    "index": "flat",
    "nlist": 0,
    "nprobe": 0,
    "hnsw_m": 0,
    "ef_search": 0,
    "centroids": None,
    **LSH_KEYS,
}


def ivf_defaults(n: int, nlist: int | None = None) -> tuple[int, int]:
    """(nlist, nprobe) that `reindex --index ivf` picks for `n` stored vectors when not given: ~4 sqrt(n) lists
    (at least 39 vectors each, as FAISS wants for training) and a quarter of them searched per query. A quarter is
    what bench/gallery.py needed for recall@1 >= 0.99 on random 256-d identities (queries at cosine 0.7): 256 of
    1,024 lists at 100,000 (0.993), 1,024 of 4,096 at 1,000,000 (0.997); an eighth gave 0.96-0.975. Embeddings
    with more structure need fewer: give --nprobe."""
    nlist = nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))
    return nlist, max(1, -(-nlist // 4))


def hnsw_defaults(n: int) -> tuple[int, int]:
    """(M, efSearch) that `reindex --index hnsw` picks for `n` stored vectors when not given: 32 links per vector
    and efSearch ~ 0.8 sqrt(n) rounded up to a power of 2, from 64 to 1024 (bench/gallery.py, recall@1 >= 0.99 on
    random 256-d identities: efSearch 64 at 10,000 gave 1.000; at 100,000, 128 gave 0.977 and 256 0.998)."""
    ef = 2 ** math.ceil(math.log2(max(1.0, 0.8 * math.sqrt(n))))
    return 32, min(1024, max(64, ef))


def lsh_defaults(dim: int) -> tuple[int, int]:
    """(bits, refine) that `reindex --index lsh` picks: one sign bit per embedding dimension (32 bytes for 256-d)
    and 16 candidates scored exactly per match wanted. bench/gallery.py: at 1,000,000 random 256-d identities
    (queries at cosine 0.7) 8 candidates already gave recall@1 1.000 at p50 1.7 ms; 16 leaves room for harder
    queries."""
    return dim, 16


def new_meta(metric: str, dim: int, fingerprint: str | None) -> dict[str, object]:
    """The meta rows of an empty gallery with an exact index."""
    if type(dim) is not int or not 0 < dim <= LIMITS["dim"]:
        raise ValueError(f"a gallery's embedding size must be an int in 1..{LIMITS['dim']}, not {dim!r}")
    head = {"format": FORMAT, "schema": SCHEMA, "uid": secrets.token_hex(8), "metric": metric, "dim": int(dim)}
    return {
        **head,
        "fingerprint": fingerprint,
        **FLAT_INDEX,
        "epoch": 0,
        "next_id": 0,
        "version": 0,
        "digest": "0" * 16,  # digest.text(digest.EMPTY): no rows yet
        "created": time.time(),
    }


ADVICE = (
    "gallery.db IS the gallery (index.cache is only rebuilt from it): restore it from a backup, or move it "
    "away and enroll the people again"
)


def check(meta: dict[str, object], path: Path) -> Settings:
    """Settings from the meta rows; DataError naming the file and the bad key."""
    meta = {**LSH_KEYS, **meta}
    if meta.get("format") != FORMAT:
        raise DataError(f"{path} is not a facerec gallery database (format {meta.get('format')!r}); {ADVICE}")
    if not isinstance(meta.get("schema"), int) or meta["schema"] > SCHEMA:
        raise DataError(
            f"{path} has gallery schema {meta.get('schema')!r}; this facerec reads up to schema {SCHEMA}: "
            "upgrade facerec"
        )
    ints = ("dim", "nlist", "nprobe", "hnsw_m", "ef_search", "lsh_bits", "refine", "epoch", "version", "next_id")
    bad = [k for k in ints if not isinstance(meta.get(k), int) or not 0 <= meta[k] <= LIMITS.get(k, 1 << 62)]
    if meta.get("metric") not in SCORING_NAMES:
        bad.append("metric")
    if meta.get("index") not in INDEX_KINDS:
        bad.append("index")
    if not isinstance(meta.get("uid"), str) or not isinstance(meta.get("fingerprint"), (str, type(None))):
        bad.append("uid/fingerprint")
    if bad or meta["dim"] == 0:
        raise DataError(f"{path}: bad gallery settings {bad or ['dim']} in table meta; {ADVICE}")
    return Settings(**{k: meta[k] for k in Settings.__dataclass_fields__})  # type: ignore[arg-type]
