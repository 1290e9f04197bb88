"""Embedding files: the rows of an `EmbeddingSet` (photos/embed.py makes them) saved for tools and commands.

`.npz` (NumPy; `embeddings` (N, D) float32, `paths` (N,), and the model's `scoring` and `threshold`, with no
pickled objects) or `.csv` (a header `path,e0,...,e{D-1}`, a row per photo, for tools outside Python). A damaged
file is a DataError that names it, never a traceback (tests/test_fuzz_found.py).
"""

from __future__ import annotations

import csv
import math
import tokenize
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facerec.data.folder import DataError
from facerec.metrics.scoring import SCORING_NAMES

FORMATS = (".npz", ".csv")


@dataclass
class EmbeddingSet:
    """Row i of `embeddings` is the photo `paths[i]`; `scoring` and `threshold` are the model's, so that scores
    computed from the file match the model's own (`facerec.metrics.verification.pair_scores`).

    `unreadable`: photos left out because they could not be read. `no_face`: photos in which no face was found,
    left out (no_face="skip") or embedded whole (no_face="whole")."""

    embeddings: np.ndarray
    paths: list[str]
    scoring: str = "cosine"
    threshold: float | None = None
    unreadable: list[str] = field(default_factory=list)
    no_face: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def summary(self) -> dict[str, Any]:
        return {
            "embedded": len(self),
            "dim": int(self.embeddings.shape[1]) if self.embeddings.ndim == 2 else 0,
            "scoring": self.scoring,
            "threshold": self.threshold,
            "unreadable": self.unreadable,
            "no_face": self.no_face,
        }


def _format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"cannot tell the format of {path}: name it .npz (NumPy) or .csv")
    return suffix


def save_embeddings(es: EmbeddingSet, path: str | Path) -> Path:
    """Write `es` as .npz or .csv (by the file name), atomically; returns the path."""
    path = Path(path).expanduser()
    fmt = _format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if fmt == ".npz":
        with open(tmp, "wb") as f:
            np.savez(
                f,
                embeddings=es.embeddings.astype(np.float32),
                paths=np.asarray(es.paths, dtype=str),
                scoring=np.asarray(es.scoring),
                threshold=np.asarray(np.nan if es.threshold is None else es.threshold, dtype=np.float64),
            )
    else:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["path"] + [f"e{j}" for j in range(es.embeddings.shape[1])])
            for p, row in zip(es.paths, es.embeddings):
                w.writerow([p] + [repr(float(v)) for v in row])
    tmp.replace(path)
    return path


def load_embeddings(path: str | Path) -> EmbeddingSet:
    """Read a file written by `save_embeddings` (or `facerec embed`). A .csv file does not store the scoring:
    it is read as cosine. A file that is damaged or not an embedding file (its parts disagree, a value is not a
    finite number) is a DataError naming it."""
    path = Path(path).expanduser()
    fmt = _format(path)
    if not path.is_file():
        raise DataError(f"embedding file {path} does not exist; write one with `facerec embed`")
    if fmt == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {key: z[key] for key in ("embeddings", "paths", "scoring", "threshold") if key in z}
        except _NPZ_ERRORS as err:
            raise DataError(f"{path} is not an embedding file written by `facerec embed` ({err!r:.200})") from None
        return _checked(path, **_npz_fields(path, arrays))
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path} is not an embedding CSV written by `facerec embed` ({err})") from None
    if not rows or not rows[0] or rows[0][0] != "path":
        raise DataError(f"{path} is not an embedding CSV: its header must be path,e0,e1,...")
    if len(rows) < 2:
        raise DataError(f"{path} holds no embeddings (a header and no rows)")
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(rows[0]):
            raise DataError(f"{path}:{line}: every row must have a path and {len(rows[0]) - 1} values")
    try:
        emb = np.asarray([[float(v) for v in r[1:]] for r in rows[1:]], dtype=np.float32)
    except ValueError as err:
        raise DataError(f"{path}: a value is not a number ({err})") from None
    return _checked(path, emb, [r[0] for r in rows[1:]])


# What numpy and zipfile raise for a damaged .npz (a bad archive, CRC, compression method or array header; a
# member flagged as encrypted is a RuntimeError).
_NPZ_ERRORS = (
    KeyError, ValueError, OSError, EOFError, SyntaxError, NotImplementedError, RuntimeError, zipfile.BadZipFile,
    zlib.error, tokenize.TokenError,
)  # fmt: skip


def _npz_fields(path: Path, arrays: dict[str, Any]) -> dict[str, Any]:
    """The arrays of an .npz embedding file -> _checked's arguments; DataError for a missing or misshapen one."""
    if "embeddings" not in arrays or "paths" not in arrays:
        raise DataError(f"{path} is not an embedding file written by `facerec embed` (no embeddings or paths)")
    bad = [key for key, a in arrays.items() if not isinstance(a, np.ndarray)]
    emb, paths = arrays["embeddings"], arrays["paths"]
    if bad or emb.dtype.kind not in "fiu" or paths.ndim != 1:
        raise DataError(
            f"{path} is damaged: {', '.join(bad) or 'embeddings or paths'} not as `facerec embed` writes"
        )
    scoring, threshold = arrays.get("scoring", np.asarray("cosine")), arrays.get("threshold", np.asarray(np.nan))
    if scoring.shape != () or threshold.shape != () or threshold.dtype.kind not in "fiu":
        raise DataError(f"{path} is damaged: its scoring or threshold is not a single value")
    thr = None if np.isnan(threshold) else float(threshold)
    return dict(emb=emb.astype(np.float32), paths=[str(p) for p in paths], scoring=str(scoring), threshold=thr)


def _checked(
    path: Path, emb: np.ndarray, paths: list[str], scoring: str = "cosine", threshold: float | None = None
) -> EmbeddingSet:
    """An EmbeddingSet of a file's content, after the checks every later step relies on."""
    if emb.ndim != 2 or emb.shape[0] != len(paths) or emb.shape[1] == 0:
        raise DataError(f"{path} is damaged: {len(paths)} paths for embeddings of shape {emb.shape}")
    finite = np.isfinite(emb).all(axis=1)
    if not finite.all():
        raise DataError(
            f"{path}: the embedding of {paths[int(np.argmin(finite))]!r} (and {int((~finite).sum()) - 1} more) "
            "holds NaN or infinite values; embed those photos again"
        )
    if scoring not in SCORING_NAMES:
        raise DataError(f"{path}: unknown scoring {scoring!r}; expected one of {', '.join(SCORING_NAMES)}")
    if threshold is not None and not math.isfinite(threshold):
        raise DataError(f"{path}: the threshold {threshold} is not a finite number")
    return EmbeddingSet(emb, paths, scoring, threshold)


def is_embedding_file(path: str | Path) -> bool:
    """True for an existing .npz / .csv file: how `facerec cluster` tells an embedding file from photos."""
    p = Path(path)
    return p.is_file() and p.suffix.lower() in FORMATS
