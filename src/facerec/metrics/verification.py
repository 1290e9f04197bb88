"""Open-set face verification: similarity of embedding pairs, and the ROC-based report of how well it separates
same-identity pairs (label 1) from different-identity pairs (label 0).

Conventions, shared by every function here so that validation, `facerec verify` and the write-up agree:
  * a score is a similarity: higher = more likely the same person (Euclidean distances are negated);
  * a pair is accepted as "same" when `score >= threshold` (`Scoring.accept`, metrics/scoring.py);
  * FAR (false-accept rate) = accepted different pairs / different pairs = FPR;
    TAR (true-accept rate) = accepted same pairs / same pairs = TPR;
  * candidate thresholds are the distinct scores themselves (plus +inf-like "accept nothing"), so every
    operating point reported is one a real threshold reaches on these pairs, never an interpolated one
    (only the EER, by definition a crossing point, is interpolated).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from facerec.metrics.scoring import SCORING_NAMES, Scoring

METRICS = SCORING_NAMES  # the scoring names, under their old name here
DEFAULT_FARS = (1e-2, 1e-3)


def pair_scores(emb_a: torch.Tensor, emb_b: torch.Tensor, metric: str | Scoring = "cosine") -> torch.Tensor:
    """Similarity of row i of `emb_a` with row i of `emb_b`: (N, D), (N, D) -> (N,) float32.

    `Scoring.of(metric).pairs` (metrics.scoring) in float32: "cosine" is the cosine similarity (embeddings need
    not be normalised), "euclidean" the NEGATIVE Euclidean distance, so higher means more similar for both.
    """
    return Scoring.of(metric).pairs(torch.as_tensor(emb_a).float(), torch.as_tensor(emb_b).float())


def score_matrix(emb_a: torch.Tensor, emb_b: torch.Tensor, metric: str | Scoring = "cosine") -> torch.Tensor:
    """Similarity of every row of `emb_a` (M, D) with every row of `emb_b` (N, D): (M, N) float32, entry (i, j)
    equal to `pair_scores` of rows i and j (`Scoring.of(metric).matrix` in float32)."""
    return Scoring.of(metric).matrix(torch.as_tensor(emb_a).float(), torch.as_tensor(emb_b).float())


def _as_arrays(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert to (N,) float64 scores and (N,) int64 0/1 labels, both classes present."""
    s = _to_numpy(scores).astype(np.float64).reshape(-1)
    y = _to_numpy(labels).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in length: {s.shape[0]} vs {y.shape[0]}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0 (different) or 1 (same), got values {np.unique(y)[:10].tolist()}")
    if not np.isfinite(s).all():
        raise ValueError(
            f"{int((~np.isfinite(s)).sum())} of {s.size} scores are NaN or infinite "
            "(diverged training or empty embeddings?)"
        )
    y = y.astype(np.int64)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        found = f"all {y.size} labels are {int(y[0])}" if y.size else "there are no pairs"
        raise ValueError(f"ROC AUC needs both same (1) and different (0) pairs, but {found}")
    return s, y


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().float().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def _roc(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full ROC over every distinct score; thresholds decrease, the first ("accept nothing") made finite."""
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    thr = thr.astype(np.float64)
    thr[0] = np.nextafter(s.max(), np.inf)  # sklearn uses +inf (>=1.3) or max+1: any value above every score
    return fpr, tpr, thr


def roc_points(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve (fpr, tpr, thresholds), each (M,) with M <= N + 1, starting at (0, 0); for plots.

    Point i is the operating point of accepting pairs with `score >= thresholds[i]`.
    """
    return _roc(*_as_arrays(scores, labels))


def _far_index(fpr: np.ndarray, far: float) -> int:
    """Index of the lowest threshold (highest TAR) whose FAR is still <= far; fpr is non-decreasing."""
    if not 0.0 <= far <= 1.0:
        raise ValueError(f"FAR must be in [0, 1], got {far}")
    return int(np.searchsorted(fpr, far, side="right")) - 1  # >= 0 since fpr[0] == 0


def threshold_at_far(scores: Any, labels: Any, far: float) -> float:
    """The lowest score threshold whose empirical false-accept rate on these labelled pairs is <= `far`.

    Accepting `score >= threshold` then gives FAR <= far with the highest TAR possible. With n different pairs
    FAR moves in steps of 1/n, so a target below 1/n returns a threshold above every different-pair score.
    """
    fpr, _, thr = _roc(*_as_arrays(scores, labels))
    return float(thr[_far_index(fpr, far)])


def _eer(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Equal error rate: where FAR = FRR (= 1 - TAR), linearly interpolated between the two ROC points that
    bracket the crossing. FRR - FAR falls from 1 at (0, 0) to -1 at (1, 1), so the crossing exists."""
    diff = (1.0 - tpr) - fpr
    i = int(np.argmax(diff <= 0))  # first point at or past the crossing; i >= 1 since diff[0] == 1
    t = diff[i - 1] / (diff[i - 1] - diff[i])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def far_key(far: float) -> str:
    """Report key for a TAR at a FAR target, e.g. 1e-2 -> "tar@far=1e-2"."""
    mantissa, exponent = f"{far:.0e}".split("e")
    return f"tar@far={mantissa}e{int(exponent)}"


def verification_report(scores: Any, labels: Any, fars: tuple[float, ...] = DEFAULT_FARS) -> dict[str, float]:
    """Everything we report about a set of scored, labelled pairs (scores (N,), labels (N,) of 0/1).

    Keys:
      auc: area under the ROC (sklearn `roc_auc_score`; ties count one half), the HW2P2 verification score.
      eer: equal error rate (FAR = FRR), interpolated on the ROC.
      tar@far=1e-2, tar@far=1e-3 (one per entry of `fars`): TAR at the lowest threshold whose empirical FAR
          is <= the target; no interpolation (the conservative convention), so 0 different pairs may be
          accepted when there are fewer than 1/far of them.
      best_acc, best_threshold: the highest pair accuracy over all candidate thresholds, and that threshold
          (accept `score >= best_threshold`). It is tuned on these same pairs, so it is optimistic.
      n_pairs, n_pos: N and the number of same pairs.
    Raises ValueError when only one class is present (AUC undefined) or scores are not finite.
    """
    s, y = _as_arrays(scores, labels)
    fpr, tpr, thr = _roc(s, y)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    correct = np.rint(tpr * n_pos + (1.0 - fpr) * n_neg)  # (M,) true accepts + true rejects at each threshold
    best = int(np.argmax(correct))
    report: dict[str, float] = {"auc": float(roc_auc_score(y, s)), "eer": _eer(fpr, tpr)}
    for far in fars:
        report[far_key(far)] = float(tpr[_far_index(fpr, far)])
    report.update(
        best_acc=float(correct[best] / y.size), best_threshold=float(thr[best]), n_pairs=int(y.size), n_pos=n_pos
    )
    return report
