"""A gallery of enrolled people for open-set identification: a FAISS index of embeddings plus a JSON metadata file.

Layout of a gallery folder: `index.faiss` (the search index), `vectors.npy` (N, D) float32 and `ids.npy` (N,)
int64 (the stored embeddings, so an IVF index can be trained and rebuilt from them), `gallery.json` (names,
photos, metric, model fingerprint). Each enrolled photo is one vector with its own id; a person is the set of
their vectors, and a query's score for a person is its best match among them.

Cosine-scored models are searched by exact inner product on L2-normalised embeddings (`IndexFlatIP`), Euclidean
ones by L2 distance (`IndexFlatL2`, score = -distance, as in metrics.verification). Both are wrapped in an
`IndexIDMap`, so people are added (`add_with_ids`) and removed (`remove_ids`) without a rebuild. For large
galleries `reindex("ivf")` trains an `IndexIVFFlat` (Jegou et al. 2011) on the stored vectors; later additions
go into the trained lists.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facerec.data.folder import DataError
from facerec.metrics.scoring import FAISS_HINT, Scoring

FORMAT = "facerec-gallery"
INSTALL_HINT = FAISS_HINT


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as err:
        raise ImportError(f"{INSTALL_HINT} ({err})") from None
    return faiss


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha1 of the model's weights: a gallery only makes sense with the model that made its embeddings."""
    h = hashlib.sha1()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class Match:
    name: str
    score: float


class Gallery:
    """Enrolled people in a folder. Create with `Gallery.open(dir, metric=, dim=)`; call `save()` after edits."""

    def __init__(
        self, folder: Path, meta: dict[str, Any], vectors: np.ndarray, ids: np.ndarray, index: Any
    ) -> None:
        self.folder, self.meta, self.vectors, self.ids, self.index = folder, meta, vectors, ids, index

    @classmethod
    def open(
        cls, folder: str | Path, metric: str | None = None, dim: int | None = None, fingerprint: str | None = None
    ) -> Gallery:
        """Open a gallery folder, or start an empty one there when `metric` and `dim` are given."""
        folder = Path(folder).expanduser()
        meta_path = folder / "gallery.json"
        if not meta_path.is_file():
            if metric is None or dim is None:
                raise DataError(
                    f"{folder} is not a gallery (no gallery.json); enroll someone first: "
                    "facerec enroll NAME PHOTO... --gallery DIR --checkpoint C"
                )
            metric = Scoring.of(metric, key="gallery metric").name
            meta = {
                "format": FORMAT,
                "version": 1,
                "metric": metric,
                "dim": dim,
                "index": "flat",
                "nlist": 0,
                "nprobe": 0,
                "fingerprint": fingerprint,
                "next_id": 0,
                "entries": {},
            }
            return cls(folder, meta, np.zeros((0, dim), np.float32), np.zeros(0, np.int64), _flat(metric, dim))
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT:
            raise DataError(f"{meta_path} is not a facerec gallery file")
        if fingerprint is not None and meta.get("fingerprint") not in (None, fingerprint):
            raise DataError(
                f"gallery {folder} was built with another model (fingerprint {meta['fingerprint']}, "
                f"this one {fingerprint}); use the checkpoint it was built with, or a new --gallery"
            )
        index = _faiss().read_index(str(folder / "index.faiss"))
        vectors, ids = np.load(folder / "vectors.npy"), np.load(folder / "ids.npy")
        g = cls(folder, meta, vectors, ids, index)
        g._set_nprobe()
        return g

    # -- contents -------------------------------------------------------------------------------------------
    @property
    def metric(self) -> str:
        return self.meta["metric"]

    @property
    def scoring(self) -> Scoring:
        return Scoring.of(self.meta["metric"], key=f"metric of {self.folder / 'gallery.json'}")

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def people(self) -> dict[str, int]:
        """Enrolled names -> number of stored photos, sorted by name."""
        counts: dict[str, int] = {}
        for entry in self.meta["entries"].values():
            counts[entry["name"]] = counts.get(entry["name"], 0) + 1
        return dict(sorted(counts.items()))

    def _prepare(self, embeddings: torch.Tensor | np.ndarray) -> np.ndarray:
        x = self.scoring.index_vectors(embeddings)
        if x.ndim != 2 or x.shape[1] != self.meta["dim"]:
            raise ValueError(f"expected (N, {self.meta['dim']}) embeddings, got shape {x.shape}")
        return x

    def add(self, name: str, embeddings: torch.Tensor | np.ndarray, sources: list[str] | None = None) -> list[int]:
        """Enroll (N, D) embeddings of one person (adds to what is stored for that name); returns their ids."""
        if not name or name != name.strip():
            raise ValueError(f"invalid name {name!r}: use a non-empty name without surrounding spaces")
        x = self._prepare(embeddings)
        sources = sources or [""] * len(x)
        if len(sources) != len(x):
            raise ValueError(f"{len(sources)} sources for {len(x)} embeddings")
        start = self.meta["next_id"]
        ids = np.arange(start, start + len(x), dtype=np.int64)
        self.index.add_with_ids(x, ids)
        self.vectors, self.ids = np.concatenate([self.vectors, x]), np.concatenate([self.ids, ids])
        for i, src in zip(ids.tolist(), sources):
            self.meta["entries"][str(i)] = {"name": name, "source": str(src)}
        self.meta["next_id"] = start + len(x)
        return ids.tolist()

    def remove(self, name: str) -> int:
        """Remove every stored photo of `name`; returns how many. DataError when the name is not enrolled."""
        drop = [int(i) for i, e in self.meta["entries"].items() if e["name"] == name]
        if not drop:
            known = ", ".join(list(self.people())[:10]) or "nobody"
            raise DataError(f"{name!r} is not in the gallery {self.folder}; enrolled: {known}")
        self.index.remove_ids(np.asarray(drop, dtype=np.int64))
        keep = ~np.isin(self.ids, drop)
        self.vectors, self.ids = self.vectors[keep], self.ids[keep]
        for i in drop:
            del self.meta["entries"][str(i)]
        return len(drop)

    # -- search ---------------------------------------------------------------------------------------------
    def search(self, embeddings: torch.Tensor | np.ndarray, k: int = 5) -> list[list[Match]]:
        """Top-k distinct people for each of the (Q, D) query embeddings, best first (score: higher = closer)."""
        if len(self) == 0:
            raise DataError(f"gallery {self.folder} is empty; enroll people first")
        q = self._prepare(embeddings)
        per_name = max(self.people().values())
        kk = min(len(self), k * per_name)  # enough vectors to hold k distinct people when the index is exact
        dist, idx = self.index.search(q, kk)
        results = []
        for srow, irow in zip(self.scoring.index_scores(dist), idx):
            best: dict[str, float] = {}
            for score, i in zip(srow.tolist(), irow.tolist()):
                if i < 0:
                    continue
                name = self.meta["entries"][str(i)]["name"]
                best[name] = max(best.get(name, -math.inf), score)
            ranked = sorted(best.items(), key=lambda t: -t[1])[:k]
            results.append([Match(n, float(s)) for n, s in ranked])
        return results

    # -- index management -----------------------------------------------------------------------------------
    def reindex(self, kind: str = "flat", nlist: int | None = None, nprobe: int | None = None) -> None:
        """Rebuild the index from the stored vectors: "flat" (exact) or "ivf" (inverted lists, trained here)."""
        if kind not in ("flat", "ivf"):
            raise ValueError(f"unknown index kind {kind!r}; choose 'flat' or 'ivf'")
        d, n = self.meta["dim"], len(self.vectors)
        if kind == "flat":
            index, nlist, nprobe = _flat(self.scoring, d), 0, 0
        else:
            nlist = nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))  # FAISS wants >= 39 vectors per list
            if n < nlist:
                raise DataError(
                    f"an IVF index with {nlist} lists needs at least {nlist} stored vectors, the "
                    f"gallery has {n}; enroll more people or keep the flat index"
                )
            index = self.scoring.faiss_index(d, nlist)
            index.train(self.vectors)
            nprobe = min(nlist, nprobe or 8)
        if n:
            index.add_with_ids(self.vectors, self.ids)
        self.index = index
        self.meta.update(index=kind, nlist=nlist, nprobe=nprobe)
        self._set_nprobe()

    def _set_nprobe(self) -> None:
        if self.meta["index"] == "ivf":
            self.index.nprobe = int(self.meta["nprobe"])

    def save(self) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        _faiss().write_index(self.index, str(self.folder / "index.faiss"))
        np.save(self.folder / "vectors.npy", self.vectors)
        np.save(self.folder / "ids.npy", self.ids)
        tmp = self.folder / ".gallery.json.tmp"
        tmp.write_text(json.dumps(self.meta, indent=1))
        tmp.replace(self.folder / "gallery.json")  # the metadata last: it is what marks the gallery complete
        return self.folder


def _flat(scoring: str | Scoring, dim: int) -> Any:
    """An exact index of `scoring` that takes ids (`add_with_ids`, `remove_ids`)."""
    return _faiss().IndexIDMap(Scoring.of(scoring).faiss_index(dim))


def open_for_model(folder: str | Path, fm: Any, create: bool = False) -> Gallery:
    """The gallery of a loaded model (FaceModelLike, an ONNX export too): its metric and embedding size, checked
    against the model's fingerprint (the same for a checkpoint and its ONNX export)."""
    fp = fm.fingerprint
    if create:
        return Gallery.open(folder, fm.scoring, int(fm.config.model.embedding_dim), fp)
    return Gallery.open(folder, fingerprint=fp)


def identify(
    gallery: Gallery, embeddings: torch.Tensor, k: int = 5, threshold: float | None = None
) -> list[dict[str, Any]]:
    """Top-k matches per query; `name` is the best match, or "unknown" when its score is below `threshold`."""
    out = []
    for matches in gallery.search(embeddings, k):
        top = matches[0]
        known = threshold is None or Scoring.accept(top.score, threshold)
        out.append(
            {
                "name": top.name if known else "unknown",
                "score": top.score,
                "matches": [(m.name, m.score) for m in matches],
            }
        )
    return out
