"""Metrics against independent references: hand-computed examples and brute-force pair counts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from facerec.metrics.classification import topk_accuracy
from facerec.metrics.verification import (
    pair_scores,
    roc_points,
    threshold_at_far,
    verification_report,
)

# ---------------------------------------------------------------- top-k accuracy


def test_topk_accuracy_hand_example() -> None:
    scores = torch.tensor(
        [
            [0.1, 0.7, 0.2],  # ranking 1, 2, 0; label 1 -> top-1 hit
            [0.5, 0.3, 0.2],  # ranking 0, 1, 2; label 1 -> top-2 hit only
            [0.2, 0.3, 0.5],  # ranking 2, 1, 0; label 0 -> top-3 hit only
            [0.9, 0.05, 0.05],  # label -1: unknown identity, always wrong
        ]
    )
    labels = torch.tensor([1, 1, 0, -1])
    assert topk_accuracy(scores, labels, ks=(1, 2, 3)) == {1: 0.25, 2: 0.5, 3: 0.75}


def test_topk_caps_k_at_number_of_classes() -> None:
    scores = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.9, 0.05, 0.05]])
    labels = torch.tensor([1, 1, 0, -1])
    assert topk_accuracy(scores, labels) == {1: 0.25, 5: 0.75}  # top-5 over 3 classes = top-3


def test_topk_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="labels"):
        topk_accuracy(torch.zeros(4, 3), torch.zeros(3, dtype=torch.long))


# ---------------------------------------------------------------- pair scores


def test_cosine_pair_scores_by_hand() -> None:
    a = torch.tensor([[3.0, 4.0], [1.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[4.0, 3.0], [0.0, 2.0], [-2.0, -2.0]])
    expected = torch.tensor([24.0 / 25.0, 0.0, -1.0])  # (12 + 12) / (5 * 5); orthogonal; opposite
    torch.testing.assert_close(pair_scores(a, b), expected)


def test_euclidean_scores_are_negative_distances() -> None:
    a = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[3.0, 4.0], [1.0, 1.0]])
    s = pair_scores(a, b, metric="euclidean")
    torch.testing.assert_close(s, torch.tensor([-5.0, 0.0]))
    assert s[1] > s[0]  # the identical pair is the more similar one


def test_unknown_metric_lists_choices() -> None:
    with pytest.raises(ValueError, match="cosine.*euclidean"):
        pair_scores(torch.zeros(2, 3), torch.zeros(2, 3), metric="manhattan")


# ---------------------------------------------------------------- verification report


def brute_force_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """P(score of a random same pair > score of a random different pair), ties counting one half."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def test_auc_matches_brute_force_pair_count() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.normal(labels * 0.8, 1.0), 1)  # rounding creates ties
    report = verification_report(scores, labels)
    assert report["auc"] == pytest.approx(brute_force_auc(scores, labels), abs=1e-12)
    assert report["n_pairs"] == 300 and report["n_pos"] == int(labels.sum())


def test_accepts_tensors() -> None:
    report = verification_report(torch.tensor([0.9, 0.8, 0.1, 0.2]), torch.tensor([1, 1, 0, 0]))
    assert report["auc"] == 1.0


def test_perfect_separation() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.1])
    labels = np.array([1, 1, 1, 0, 0, 0])
    r = verification_report(scores, labels)
    assert r["auc"] == 1.0 and r["eer"] == 0.0 and r["best_acc"] == 1.0
    assert r["tar@far=1e-2"] == 1.0 and r["tar@far=1e-3"] == 1.0
    assert 0.3 < r["best_threshold"] <= 0.7


def test_reversed_scores() -> None:
    scores = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    labels = np.array([1, 1, 1, 0, 0, 0])
    r = verification_report(scores, labels)
    assert r["auc"] == 0.0 and r["eer"] == 1.0
    assert r["best_acc"] == 0.5  # best is to accept nothing (or everything)


def test_eer_hand_built() -> None:
    # same pairs 0.9, 0.8, 0.6, 0.2; different pairs 0.7, 0.5, 0.4, 0.1.
    # ROC (FAR, TAR): (0,0) (0,.25) (0,.5) (.25,.5) (.25,.75) (.5,.75) (.75,.75) (.75,1) (1,1).
    # FRR - FAR: at (.25,.5) it is .25, at (.25,.75) it is 0 -> EER exactly 0.25 (threshold 0.6).
    scores = np.array([0.9, 0.8, 0.6, 0.2, 0.7, 0.5, 0.4, 0.1])
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    assert verification_report(scores, labels)["eer"] == pytest.approx(0.25)


def test_eer_interpolates_between_roc_points() -> None:
    # same 0.9, 0.8, 0.3; different 0.5, 0.1 -> (0,1/3) (0,2/3) (.5,2/3) (.5,1) (1,1)
    # FRR - FAR: 1/3 at (0,2/3), 1/3 - 1/2 = -1/6 at (.5,2/3): t = (1/3)/(1/2) = 2/3, EER = 2/3 * 0.5 = 1/3.
    scores = np.array([0.9, 0.8, 0.3, 0.5, 0.1])
    labels = np.array([1, 1, 1, 0, 0])
    assert verification_report(scores, labels)["eer"] == pytest.approx(1.0 / 3.0)


def test_tar_at_far_hand_built() -> None:
    # 200 different pairs with scores 0.000 .. 0.199 (the top ones 0.199, 0.198, ...), and 4 same pairs.
    neg = np.arange(200) / 1000.0
    pos = np.array([0.5, 0.1985, 0.1975, 0.05])
    scores, labels = np.concatenate([pos, neg]), np.r_[np.ones(4), np.zeros(200)].astype(int)
    r = verification_report(scores, labels, fars=(1e-2, 5e-3, 1e-3))
    # FAR <= 1e-2 allows 2 of 200 false accepts (0.199, 0.198): the lowest such threshold is the same-pair
    # score 0.1975 (0.197 would be the 3rd false accept), accepting 0.5, 0.1985, 0.1975 -> TAR 3/4.
    # FAR <= 5e-3 allows 1 (0.199): threshold 0.1985 -> TAR 2/4. FAR <= 1e-3 allows none: threshold 0.5 -> 1/4.
    assert r["tar@far=1e-2"] == 0.75
    assert r["tar@far=5e-3"] == 0.5
    assert r["tar@far=1e-3"] == 0.25
    assert threshold_at_far(scores, labels, 1e-2) == 0.1975
    assert threshold_at_far(scores, labels, 1e-3) == 0.5


def test_single_class_raises() -> None:
    with pytest.raises(ValueError, match="both same"):
        verification_report(np.array([0.1, 0.5, 0.9]), np.array([1, 1, 1]))


def test_non_binary_labels_and_nan_scores_raise() -> None:
    with pytest.raises(ValueError, match="0 .* or 1"):
        verification_report(np.array([0.1, 0.5]), np.array([0, 2]))
    with pytest.raises(ValueError, match="NaN"):
        verification_report(np.array([0.1, math.nan]), np.array([0, 1]))


# ---------------------------------------------------------------- thresholds and ROC


@pytest.mark.parametrize("far", [0.0, 1e-3, 1e-2, 0.1, 0.37])
def test_threshold_at_far_respects_target(far: float) -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 2000)
    scores = rng.normal(labels * 1.5, 1.0)
    t = threshold_at_far(scores, labels, far)
    neg = scores[labels == 0]
    assert (neg >= t).mean() <= far
    # ... and it is the loosest such threshold: the next lower score would break the target.
    lower = scores[scores < t]
    if lower.size:
        assert (neg >= lower.max()).mean() > far


def test_roc_points_shape_and_ends() -> None:
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 50)
    fpr, tpr, thr = roc_points(rng.normal(size=50), labels)
    assert fpr.shape == tpr.shape == thr.shape
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.isfinite(thr).all() and (np.diff(thr) < 0).all()
