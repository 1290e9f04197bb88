"""How well does a model separate the people of your own labelled photos? `facerec benchmark folder --root DIR`.

DIR holds one folder per person (`DIR/<name>/<photo>`), raw photos (aligned first) or aligned crops. Every photo is
embedded once (a photo without a detected face is used whole, as in LFW); then:

* verification: all N(N-1)/2 pairs, labelled same / different by folder and scored with the model's own scoring,
  reported as `verification_report` does (AUC, EER, TAR at FAR 1e-2 / 1e-3, best-threshold accuracy). Above
  `max_pairs` pairs, every same pair is kept and the different pairs are a seeded uniform sample, so the
  same-pair side stays exact and the FAR side is an estimate (the report says so).
* identification, leave one out: for each photo of a person with at least two photos, is the highest-scoring
  *other* photo one of the same person (rank-1), and is one among the five highest (rank-5)? This is 1:N
  identification with every other photo as the gallery.

A second face source tells more about how a model generalises than its own validation split: `lfw_tiny`'s
classify folder (10 people, 100 photos, 4,950 pairs) is used this way in models/README.md.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facerec.data.folder import DataError, scan_identity_folders
from facerec.evaluation.lfw import embed_every_photo
from facerec.inference.model import PairVerifier
from facerec.metrics.scoring import Scoring
from facerec.metrics.verification import verification_report
from facerec.photos.align import FaceAligner


def pair_indices(labels: np.ndarray, max_pairs: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, bool]:
    """(i, j) with i < j for every pair of `labels`' items, or, when there are more than `max_pairs`, for every
    same-label pair plus a uniform sample (seeded, without repeats) of the different-label pairs that fills the
    budget. The third value says whether the different pairs were sampled."""
    labels = np.asarray(labels)
    n = labels.size
    total = n * (n - 1) // 2
    if total <= max_pairs:
        i, j = np.triu_indices(n, k=1)
        return i, j, False
    order = np.argsort(labels, kind="stable")
    same_i, same_j = [], []
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    for group in np.split(order, bounds):
        if group.size > 1:
            a, b = np.triu_indices(group.size, k=1)
            same_i.append(np.minimum(group[a], group[b]))
            same_j.append(np.maximum(group[a], group[b]))
    si = np.concatenate(same_i) if same_i else np.zeros(0, np.int64)
    sj = np.concatenate(same_j) if same_j else np.zeros(0, np.int64)
    want = max(max_pairs - si.size, 0)
    rng = np.random.default_rng(seed)
    di, dj = np.zeros(0, np.int64), np.zeros(0, np.int64)
    while di.size < want:  # rejection sampling: different pairs are the vast majority once sampling is needed
        k = 2 * (want - di.size) + 16
        a, b = rng.integers(0, n, k), rng.integers(0, n, k)
        keep = labels[a] != labels[b]
        a, b = np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep])
        key = np.unique(np.concatenate([di * n + dj, a * n + b]))
        di, dj = key // n, key % n
    pick = rng.permutation(di.size)[:want]
    return np.concatenate([si, di[pick]]), np.concatenate([sj, dj[pick]]), True


def leave_one_out_identification(
    emb: torch.Tensor, labels: np.ndarray, scoring: str | Scoring, ks: tuple[int, ...] = (1, 5), chunk: int = 1024
) -> dict[str, float]:
    """Rank-k identification with every other photo as the gallery, over the photos whose person has another
    photo: `rank{k}` = fraction whose k highest-scoring other photos include one of the same person."""
    y = torch.as_tensor(np.asarray(labels))
    counts = torch.bincount(y)
    probes = torch.nonzero(counts[y] > 1).squeeze(1)
    if probes.numel() == 0:
        return {**{f"rank{k}": float("nan") for k in ks}, "n_probes": 0}
    k_max = min(max(ks), emb.shape[0] - 1)
    scorer = Scoring.of(scoring)
    hits = {k: 0 for k in ks}
    for start in range(0, probes.numel(), chunk):
        rows = probes[start : start + chunk]
        s = scorer.matrix(emb[rows], emb)
        s[torch.arange(rows.numel()), rows] = -torch.inf  # not itself
        top = s.topk(k_max, dim=1).indices
        same = y[top] == y[rows].unsqueeze(1)
        for k in ks:
            hits[k] += int(same[:, :k].any(dim=1).sum())
    return {**{f"rank{k}": hits[k] / probes.numel() for k in ks}, "n_probes": int(probes.numel())}


def benchmark_folder(
    fm: PairVerifier,
    root: str | Path,
    aligner: FaceAligner | None = None,
    flip: bool = True,
    max_pairs: int = 2_000_000,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Verification over the pairs of an identity-folder dataset and leave-one-out identification (module
    notes). `fm` is a FaceModel or OnnxFaceModel; its scoring is used."""
    index = scan_identity_folders(root)
    people = len(set(index.labels))
    if people < 2 or len(index) < 3:
        raise DataError(
            f"{root}: benchmarking needs at least 2 people and 3 photos; found {people} and {len(index)}"
        )
    log(f"{len(index)} photos of {people} people under {root}")
    emb, fallback = embed_every_photo(fm, index.paths, aligner, flip, log)
    labels = np.asarray(index.labels)
    ia, ib, sampled = pair_indices(labels, max_pairs, seed)
    if not (labels[ia] == labels[ib]).any():
        raise DataError(f"{root}: no person has two photos, so there is no same-person pair to score")
    same = (labels[ia] == labels[ib]).astype(np.int64)
    scores = Scoring.of(fm.scoring).indexed_pairs(emb, ia, ib).numpy()
    report: dict[str, Any] = verification_report(scores, same)
    total = len(labels) * (len(labels) - 1) // 2
    report.update(
        pairs="every same pair, a uniform sample of the different pairs" if sampled else "all",
        n_different_total=total - int(same.sum()),
        **leave_one_out_identification(emb, labels, fm.scoring),
        n_images=len(index),
        n_people=people,
        scoring=fm.scoring,
        aligned=aligner is not None,
        no_face=[Path(p).as_posix() for p in fallback],
    )
    return report
