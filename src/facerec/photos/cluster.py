"""Group unlabelled face photos by person: `facerec cluster PHOTOS... --out clusters.csv`.

Agglomerative clustering of the embeddings (scikit-learn) with the model's own scoring. Two groups merge while
their linkage similarity is above `threshold`, which defaults to the model's verification threshold: the score
above which `verify` says "same person". `average` linkage (the mean similarity of all cross pairs) is the
default; `single` (any one pair, i.e. connected components of the "same person" graph) chains different people
together through look-alikes, and `complete` (every pair) splits people whose photos vary. `bench/cluster.py`
measures the three on labelled folders.

The distance matrix is N x N, so one call takes at most MAX_IMAGES photos (about 3 GB of memory at the cap).
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facerec.data.folder import DataError
from facerec.metrics.scoring import Scoring

LINKAGES = ("average", "complete", "single")
MAX_IMAGES = 20_000


def distance_matrix(emb: np.ndarray | torch.Tensor, scoring: str | Scoring) -> np.ndarray:
    """(N, D) -> (N, N) float64 distances that fall as the model's score rises (`Scoring.to_distance`: 1 - cosine
    for "cosine", the Euclidean distance for "euclidean"); zero diagonal, symmetric, never negative."""
    s = Scoring.of(scoring)
    x = torch.as_tensor(np.asarray(emb), dtype=torch.float64)
    d = s.to_distance(s.matrix(x, x)).clamp_min(0.0)
    d = (d + d.T) / 2
    d.fill_diagonal_(0.0)
    return d.numpy()


def score_to_distance(threshold: float, scoring: str | Scoring) -> float:
    """The distance that corresponds to a score threshold (see `distance_matrix`)."""
    return Scoring.of(scoring).to_distance(threshold)


def cluster_embeddings(
    emb: np.ndarray | torch.Tensor, scoring: str | Scoring, threshold: float, linkage: str = "average"
) -> np.ndarray:
    """(N, D) embeddings -> (N,) cluster ids: 0 is the largest cluster, then by size (ties: the cluster of the
    earlier photo first); a photo like no other is a cluster of its own."""
    if linkage not in LINKAGES:
        raise ValueError(f"unknown linkage {linkage!r}; choose one of {', '.join(LINKAGES)}")
    scoring = Scoring.of(scoring)
    n = len(emb)
    if n > MAX_IMAGES:
        raise DataError(
            f"{n} photos are more than clustering takes at once ({MAX_IMAGES:,}: the distance matrix "
            "is N x N); cluster the folders separately, or a sample of the photos"
        )
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if n == 1:
        return np.zeros(1, dtype=np.int64)
    from sklearn.cluster import AgglomerativeClustering

    cut = score_to_distance(threshold, scoring)
    if cut <= 0:  # nothing can merge: every distance is >= 0
        raw = np.arange(n)
    else:
        raw = AgglomerativeClustering(
            n_clusters=None, metric="precomputed", linkage=linkage, distance_threshold=cut
        ).fit_predict(distance_matrix(emb, scoring))
    return relabel_by_size(raw)


def relabel_by_size(labels: np.ndarray) -> np.ndarray:
    """Renumber clusters 0, 1, ... by decreasing size; ties by the first photo of each cluster."""
    labels = np.asarray(labels)
    ids, first, counts = np.unique(labels, return_index=True, return_counts=True)
    order = sorted(range(len(ids)), key=lambda i: (-counts[i], first[i]))
    new = np.empty(len(ids), dtype=np.int64)
    new[order] = np.arange(len(ids))
    return new[np.searchsorted(ids, labels)]


def cluster_summary(labels: np.ndarray) -> dict[str, Any]:
    sizes = np.bincount(labels) if len(labels) else np.zeros(0, dtype=np.int64)
    return {
        "photos": int(len(labels)),
        "clusters": int(len(sizes)),
        "clusters_of_2_or_more": int((sizes >= 2).sum()),
        "singletons": int((sizes == 1).sum()),
        "largest": int(sizes.max()) if len(sizes) else 0,
    }


def clustering_scores(pred: np.ndarray, truth: Sequence[str] | np.ndarray) -> dict[str, float]:
    """Agreement of cluster ids with true identities: pairwise precision / recall / F1 (of the "same cluster"
    pairs, how many are the same person; of the same-person pairs, how many share a cluster), the adjusted Rand
    index and normalised mutual information (scikit-learn)."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
    from sklearn.metrics.cluster import pair_confusion_matrix

    _, t = np.unique(np.asarray(truth), return_inverse=True)
    pred = np.asarray(pred)
    (_, fp), (fn, tp) = pair_confusion_matrix(t, pred)  # counts of ordered pairs: halves cancel in the ratios
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "pair_precision": float(precision),
        "pair_recall": float(recall),
        "pair_f1": float(f1),
        "ari": float(adjusted_rand_score(t, pred)),
        "nmi": float(normalized_mutual_info_score(t, pred)),
        "identities": int(t.max() + 1) if len(t) else 0,
        "clusters": int(len(np.unique(pred))),
    }


def write_clusters_csv(paths: Sequence[str], labels: np.ndarray, out: str | Path) -> Path:
    """`path,cluster,cluster_size`, a row per photo, grouped by cluster (largest first), photos in input order."""
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    sizes = np.bincount(labels) if len(labels) else np.zeros(0, dtype=np.int64)
    order = np.argsort(labels, kind="stable")
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "cluster", "cluster_size"])
        for i in order:
            w.writerow([paths[i], int(labels[i]), int(sizes[labels[i]])])
    tmp.replace(out)
    return out


def copy_into_folders(paths: Sequence[str], labels: np.ndarray, out_dir: str | Path) -> Path:
    """Copy each photo into OUT_DIR/cluster_NNNN/ (clusters of two or more) or OUT_DIR/singletons/: review the
    folders, rename them after the people, and the result is an identity-folder dataset `facerec train` reads."""
    out = Path(out_dir).expanduser()
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out} is not empty; pass a new folder for the cluster copies")
    sizes = np.bincount(labels)
    width = max(4, len(str(len(sizes))))
    for p, c in zip(paths, labels):
        folder = out / (f"cluster_{int(c) + 1:0{width}d}" if sizes[c] >= 2 else "singletons")
        folder.mkdir(parents=True, exist_ok=True)
        src = Path(p)
        target = folder / src.name
        n = 1
        while target.exists():  # same file name from two source folders
            target = folder / f"{src.stem}_{n}{src.suffix}"
            n += 1
        shutil.copy2(src, target)
    return out
