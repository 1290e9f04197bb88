"""How two embeddings are compared: the one object every scorer, threshold and search index goes through.

A `Scoring` is "cosine" (cosine similarity; the length of an embedding does not matter) or "euclidean" (the
NEGATIVE Euclidean distance). Both are similarities, higher = more alike, so one rule holds everywhere:
a pair is the same person when `score >= threshold` (`accept`). Models keep their scoring as a plain name
(`model.scoring == "cosine"`); `Scoring.of(model.scoring)` turns it into this object, and `Scoring.of` is the
only place that checks a name.

Distances (`to_distance`) fall as the score rises and are never negative: 1 - cosine, or the Euclidean distance.
FAISS (an optional extra) searches by inner product on unit-length vectors for cosine and by squared L2 distance
for euclidean (`faiss_index`: exact, IVF or HNSW; `index_vectors`, `index_scores`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from facerec.errors import ConfigError

SCORING_NAMES = ("cosine", "euclidean")
FAISS_HINT = "the gallery needs FAISS: pip install faiss-cpu"

Value = TypeVar("Value", float, np.ndarray, torch.Tensor)


def _tensor(x: Any) -> torch.Tensor:
    """A detached tensor in at least float32 (half precision is upcast: bf16 cosines lose the third decimal);
    float64 stays float64."""
    t = torch.as_tensor(x).detach()
    return t if t.dtype == torch.float64 else t.float()


@dataclass(frozen=True)
class Scoring:
    """One way of scoring embeddings: `Scoring.of("cosine")` or `Scoring.of("euclidean")`."""

    name: str
    NAMES: ClassVar[tuple[str, ...]] = SCORING_NAMES

    def __post_init__(self) -> None:
        if self.name not in SCORING_NAMES:
            raise ConfigError(f"unknown scoring {self.name!r}; choose one of {', '.join(SCORING_NAMES)}")

    @classmethod
    def of(cls, scoring: str | Scoring, key: str = "scoring", also: tuple[str, ...] = ()) -> Scoring:
        """The Scoring for a name (or the Scoring itself). An unknown name raises ConfigError naming `key` (the
        setting or flag it came from) and listing the valid names, plus `also` (other values the caller takes)."""
        if isinstance(scoring, Scoring):
            return scoring
        if scoring not in SCORING_NAMES:
            valid = ", ".join((*also, *SCORING_NAMES))
            raise ConfigError(f"unknown {key} {scoring!r}; choose one of {valid}")
        return cls(scoring)

    def __str__(self) -> str:
        return self.name

    @property
    def unit_length(self) -> bool:
        """Whether only directions count (cosine): embeddings may be L2-normalised without changing a score."""
        return self.name == "cosine"

    # -- scores ---------------------------------------------------------------------------------------------
    def pairs(self, a: Any, b: Any) -> torch.Tensor:
        """Score of row i of `a` with row i of `b`: (N, D), (N, D) -> (N,), higher = more alike. Tensors or
        arrays; computed in float32 (float64 inputs stay float64)."""
        a, b = _tensor(a), _tensor(b)
        if a.shape != b.shape or a.ndim != 2:
            raise ValueError(
                f"expected two (N, D) embedding batches of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}"
            )
        if self.unit_length:
            return (F.normalize(a, dim=1) * F.normalize(b, dim=1)).sum(dim=1)
        return -torch.linalg.vector_norm(a - b, dim=1)

    def matrix(self, queries: Any, gallery: Any) -> torch.Tensor:
        """Score of every query (M, D) with every gallery row (N, D): (M, N), entry (i, j) equal to
        `pairs(queries[i:i+1], gallery[j:j+1])`."""
        q, g = _tensor(queries), _tensor(gallery)
        if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
            raise ValueError(f"expected (M, D) and (N, D) embeddings, got {tuple(q.shape)} and {tuple(g.shape)}")
        if self.unit_length:
            return F.normalize(q, dim=1) @ F.normalize(g, dim=1).T
        return -torch.cdist(q, g)

    def indexed_pairs(self, embeddings: Any, idx_a: Any, idx_b: Any) -> torch.Tensor:
        """Scores of pairs given as indices into one (U, D) embedding matrix, each unique image embedded once:
        pair i is (embeddings[idx_a[i]], embeddings[idx_b[i]]). Index vectors (N,) -> scores (N,)."""
        e = torch.as_tensor(embeddings)
        return self.pairs(e[torch.as_tensor(idx_a, dtype=torch.long)], e[torch.as_tensor(idx_b, dtype=torch.long)])

    @staticmethod
    def accept(score: Value, threshold: float) -> Any:
        """The same/different rule, one for both scorings (scores are similarities): True (same person) where
        `score >= threshold`; a bool for a float score, elementwise for an array or tensor. A staticmethod:
        `Scoring.accept(s, t)` needs no scoring name."""
        same = score >= threshold
        return bool(same) if isinstance(same, (bool, np.bool_)) else same

    # -- distances ------------------------------------------------------------------------------------------
    def to_distance(self, score: Value) -> Value:
        """A score (or score threshold) as a distance: 1 - cosine, or the Euclidean distance (-score)."""
        return 1.0 - score if self.unit_length else -score

    def from_distance(self, distance: Value) -> Value:
        """Inverse of `to_distance`."""
        return 1.0 - distance if self.unit_length else -distance

    # -- FAISS ----------------------------------------------------------------------------------------------
    def faiss_index(
        self,
        dim: int,
        nlist: int = 0,
        *,
        hnsw_m: int = 0,
        ef_construction: int = 80,
        ef_search: int = 16,
        lsh_bits: int = 0,
        refine: int = 8,
    ) -> Any:
        """An empty FAISS index for (N, dim) `index_vectors`, searched by inner product for cosine (the vectors
        are unit length) and by L2 distance for euclidean. Needs faiss.

        * exact by default: `IndexFlatIP` / `IndexFlatL2`;
        * `nlist` > 0: an `IndexIVFFlat` of that many inverted lists (Jegou et al. 2011), to be trained on
          the vectors before adding; set `index.nprobe` (lists searched per query, default 1) before searching;
        * `hnsw_m` > 0: an `IndexHNSWFlat` graph (Malkov & Yashunin 2018, arXiv:1603.09320) with `hnsw_m`
          links per vector, each insertion weighing `ef_construction` candidates, each search `ef_search`
          (`index.hnsw.efSearch`, may be changed later). It needs no training, but it takes no `remove_ids`:
          wrap it in an `IndexIDMap` for ids and rebuild it to delete. `ef_construction` 80, not FAISS's 40:
          on 100k random 256-d vectors (bench/gallery.py) it lifts recall@1 at efSearch 128 from 0.94 to 0.98
          for twice the build time;
        * `lsh_bits` > 0: `lsh_bits` sign bits per vector after a fixed random rotation (`IndexLSH`: random
          hyperplanes, Charikar 2002, whose bits differ with probability angle / pi), searched by Hamming
          distance; the best `refine` x k candidates are then scored exactly (`IndexRefine` over an exact flat
          index, `index.k_factor`). No training (the rotation is seeded), no `remove_ids`. Made for unit-length
          vectors: the bits see angles only.
        """
        if sum(v > 0 for v in (nlist, hnsw_m, lsh_bits)) > 1:
            raise ValueError(f"nlist={nlist} (IVF), hnsw_m={hnsw_m} (HNSW), lsh_bits={lsh_bits}: set one of them")
        faiss = _faiss()
        kind = faiss.METRIC_INNER_PRODUCT if self.unit_length else faiss.METRIC_L2
        if lsh_bits > 0:
            bits = faiss.IndexLSH(dim, lsh_bits, True, False)
            bits.metric_type = (
                kind  # as IndexRefine wants; the bits are compared by Hamming distance whatever it is
            )
            exact = faiss.IndexFlatIP(dim) if self.unit_length else faiss.IndexFlatL2(dim)
            index = faiss.IndexRefine(bits, exact)  # keeps references to both
            index.k_factor = float(refine)
            return index
        if hnsw_m > 0:
            index = faiss.IndexHNSWFlat(dim, hnsw_m, kind)
            index.hnsw.efConstruction, index.hnsw.efSearch = ef_construction, ef_search
            return index
        flat = faiss.IndexFlatIP(dim) if self.unit_length else faiss.IndexFlatL2(dim)
        if nlist <= 0:
            return flat
        return faiss.IndexIVFFlat(flat, dim, nlist, kind)  # the IVF index keeps a reference to its quantizer

    def index_vectors(self, embeddings: Any) -> np.ndarray:
        """(N, D) embeddings as FAISS takes them: contiguous float32, unit length for cosine."""
        x = embeddings.detach().cpu() if isinstance(embeddings, torch.Tensor) else embeddings
        x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
        if self.unit_length and x.ndim == 2:
            x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return x

    def index_scores(self, values: np.ndarray) -> np.ndarray:
        """What `faiss_index(...).search` returns (inner products, or squared L2 distances) as float64 scores,
        equal to `pairs` of the query and the found vector."""
        v = np.asarray(values, dtype=np.float64)
        return v if self.unit_length else -np.sqrt(np.maximum(v, 0.0))


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as err:
        raise ImportError(f"{FAISS_HINT} ({err})") from None
    return faiss
