"""Bootstrap intervals of verification metrics (metrics/bootstrap.py): the vectorised resample metrics against
`verification_report` on the resampled arrays, the AUC interval against Hanley & McNeil's standard error, paired
differences, and the errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from facerec.metrics import bootstrap
from facerec.metrics.bootstrap import METRICS, bootstrap_intervals, paired_difference
from facerec.metrics.verification import verification_report


def _binormal(n_pos: int, n_neg: int, gap: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scores = np.concatenate([rng.normal(gap, 1.0, n_pos), rng.normal(0.0, 1.0, n_neg)])
    return scores, np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]


@pytest.mark.parametrize("decimals", [None, 1])  # continuous scores, and many ties
def test_each_resample_matches_verification_report(decimals):
    scores, labels = _binormal(300, 1700, 2.0, seed=1)
    if decimals is not None:
        scores = np.round(scores, decimals)
    (idx,) = list(bootstrap._resamples(labels, rounds=6, seed=3))
    assert (labels[idx[:, :300]] == 1).all() and (labels[idx[:, 300:]] == 0).all()  # stratified
    values = bootstrap._values(scores, labels, idx)
    for r in range(6):
        report = verification_report(scores[idx[r]], labels[idx[r]], fars=(1e-2, 1e-3))
        np.testing.assert_allclose(values[r], [report[m] for m in METRICS], atol=1e-12)


def test_auc_interval_matches_hanley_mcneil():
    """The 95% interval's width ~ 2 x 1.96 x the Hanley-McNeil (1982) standard error of the AUC."""
    scores, labels = _binormal(800, 1600, 1.2, seed=2)
    auc = verification_report(scores, labels)["auc"]
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    se = math.sqrt((auc * (1 - auc) + 799 * (q1 - auc**2) + 1599 * (q2 - auc**2)) / (800 * 1600))
    low, high = bootstrap_intervals(scores, labels, rounds=2000)["auc"]
    assert low < auc < high
    assert (high - low) / (2 * 1.96 * se) == pytest.approx(1.0, abs=0.12)


def test_intervals_narrow_with_more_pairs_and_repeat_with_the_seed():
    small = bootstrap_intervals(*_binormal(100, 100, 1.5), rounds=400)
    large = bootstrap_intervals(*_binormal(3000, 3000, 1.5), rounds=400)
    for m in ("auc", "eer", "tar@far=1e-2"):
        assert large[m][1] - large[m][0] < (small[m][1] - small[m][0]) / 3
    assert bootstrap_intervals(*_binormal(100, 100, 1.5), rounds=400) == small
    assert bootstrap_intervals(*_binormal(100, 100, 1.5), rounds=400, seed=1) != small


def test_chunks_keep_every_round(monkeypatch):
    scores, labels = _binormal(50, 150, 1.0)
    monkeypatch.setattr(bootstrap, "CHUNK", 1000)  # 5 rounds a chunk
    values = bootstrap._all_values(scores, labels, rounds=23, seed=0)
    assert values.shape == (23, len(METRICS)) and len(np.unique(values[:, 0])) > 15


def test_paired_difference():
    a, labels = _binormal(500, 1500, 1.0, seed=4)
    same = paired_difference(a, a, labels, rounds=200)
    assert same == {"delta": 0.0, "low": 0.0, "high": 0.0, "p_not_ahead": 1.0}
    b = a + 0.8 * labels  # b separates the same pairs better
    up = paired_difference(a, b, labels, rounds=500)
    full = verification_report(b, labels)["auc"] - verification_report(a, labels)["auc"]
    assert up["delta"] == pytest.approx(full) and 0 < up["low"] < up["delta"] < up["high"]
    assert up["p_not_ahead"] < 0.01
    down = paired_difference(b, a, labels, rounds=500)
    assert down["delta"] == pytest.approx(-full) and down["high"] < 0 and down["p_not_ahead"] > 0.99
    eer = paired_difference(a, b, labels, metric="eer", rounds=500)  # lower is better: b is ahead
    assert eer["delta"] < 0 and eer["p_not_ahead"] < 0.01


def test_bad_arguments_say_what_is_wrong():
    scores, labels = _binormal(20, 20, 1.0)
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        bootstrap_intervals(scores, labels, rounds=0)
    with pytest.raises(ValueError, match=r"must be in \(0, 1\)"):
        bootstrap_intervals(scores, labels, level=95)
    with pytest.raises(ValueError, match="unknown metric 'acc'"):
        paired_difference(scores, scores, labels, metric="acc")
    with pytest.raises(ValueError, match="differ in length: 39 vs 40"):
        paired_difference(scores, scores[:-1], labels)
    with pytest.raises(ValueError, match="both same"):
        bootstrap_intervals(scores, np.ones_like(labels))
