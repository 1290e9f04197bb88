"""insightface's verification protocol (recognition/arcface_torch/eval/verification.py), on a pack's embeddings.

Each image's embedding is that of the image plus that of its mirror image, L2-normalised; pair i compares
embeddings 2i and 2i + 1 by their squared Euclidean distance (in [0, 4]; equal to 2 - 2 cos). The pairs are cut,
in order, into 10 folds (sklearn's KFold without shuffling: the first n % 10 folds hold one pair more). For each
fold, the threshold is the one of np.arange(0, 4, 0.01) with the best accuracy on the other 9 folds (the first
such, as np.argmax picks), a pair is called "same" when its distance is below it, and the fold's accuracy is
measured with it. The report is the mean and the standard deviation (numpy's, ddof=0) of the 10 accuracies, as
insightface prints them, plus facerec's ROC AUC, EER and TAR@FAR=1e-3 over all pairs (metrics.verification, on
the cosine similarity of the normalised embeddings: the same order as the distance).

The protocol always normalises, whatever scoring the model was trained with, so results compare across models
and with published tables.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.model_selection import KFold
from sklearn.preprocessing import normalize

from facerec.metrics.verification import verification_report

FOLDS = 10
THRESHOLDS = np.arange(0, 4, 0.01)  # squared distances of unit vectors lie in [0, 4]
FARS = (1e-3,)


def check_pairs(issame: Any, folds: int = FOLDS) -> None:
    """ValueError unless the labels (N,) allow the protocol: at least `folds` pairs, same and different ones."""
    y = np.asarray(issame, dtype=bool).reshape(-1)
    if y.size < folds:
        raise ValueError(f"{y.size} pairs; the protocol's {folds} folds need at least {folds}")
    if y.all() or not y.any():
        raise ValueError(f"all {y.size} pairs are {'same' if y.all() else 'different'}-person; AUC needs both")


def pair_distances(embeddings: Any) -> np.ndarray:
    """Flip-summed embeddings (2N, D), pair i in rows 2i and 2i + 1 -> (N,) float64 squared distances of the
    L2-normalised embeddings (sklearn's `normalize`, as insightface: a zero row stays zero)."""
    e = torch.as_tensor(embeddings).detach().cpu().double().numpy()
    if e.ndim != 2 or e.shape[0] % 2:
        raise ValueError(f"expected (2N, D) embeddings, two per pair, got shape {e.shape}")
    e = normalize(e)
    return np.sum(np.square(e[0::2] - e[1::2]), axis=1)


def fold_accuracy(distances: Any, issame: Any, folds: int = FOLDS) -> dict[str, Any]:
    """The k-fold accuracy of (N,) squared distances: per fold, the threshold (of THRESHOLDS) best on the other
    folds, applied to this one (module notes). Keys: accuracy, accuracy_std, fold_accuracy, fold_threshold,
    folds, protocol."""
    d = np.asarray(distances, dtype=np.float64).reshape(-1)
    y = np.asarray(issame, dtype=bool).reshape(-1)
    if d.shape != y.shape:
        raise ValueError(f"{d.size} distances for {y.size} labels")
    check_pairs(y, folds)
    accs, thrs = [], []
    for train, test in KFold(n_splits=folds, shuffle=False).split(d):
        train_acc = ((d[train][None, :] < THRESHOLDS[:, None]) == y[train][None, :]).mean(axis=1)  # (T,)
        best = float(THRESHOLDS[int(np.argmax(train_acc))])
        accs.append(float(((d[test] < best) == y[test]).mean()))
        thrs.append(best)
    return {
        "protocol": f"insightface {folds}-fold: threshold on squared L2 distance tuned on the other folds",
        "folds": folds,
        "accuracy": float(np.mean(accs)),
        "accuracy_std": float(np.std(accs)),
        "fold_accuracy": accs,
        "fold_threshold": thrs,
    }


def protocol_report(embeddings: Any, issame: Any, folds: int = FOLDS) -> dict[str, Any]:
    """The whole protocol on flip-summed embeddings (2N, D) and labels (N,): `fold_accuracy` plus auc, eer,
    tar@far=1e-3, n_pairs and n_pos over all pairs (scores: cosine = 1 - distance / 2)."""
    d = pair_distances(embeddings)
    y = np.asarray(issame, dtype=bool).reshape(-1)
    overall = verification_report(1.0 - d / 2.0, y.astype(np.int64), fars=FARS)
    return {
        **fold_accuracy(d, y, folds),
        **{k: v for k, v in overall.items() if k not in ("best_acc", "best_threshold")},
    }
