"""How far a verification figure would move on another sample of pairs like these: bootstrap intervals.

facehw's val set has 3,200 pairs, 1,600 of them of different people, so TAR at FAR 1e-3 is decided by the two
highest impostor scores, and two models 0.0005 AUC apart may swap places on other pairs. These functions resample
the pairs with replacement, positives and negatives separately (a stratified bootstrap: every resample keeps the
set's numbers of same and different pairs, as the ROC needs both), recompute the metrics of `verification_report`
on each resample, and report percentile intervals:

* `bootstrap_intervals(scores, labels)`: an interval for each metric of one model.
* `paired_difference(scores_a, scores_b, labels)`: the difference b - a of two models scored on the same pairs,
  resampled together, so what both get right or wrong cancels; with the share of resamples where b is not ahead.

Pairs that share an image or an identity are not independent, and the bootstrap treats them as if they were, so
the intervals are, if anything, too narrow. Differences between training seeds are another source of noise that
no resampling of pairs can show.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from facerec.metrics.verification import _as_arrays, verification_report

METRICS = ("auc", "eer", "tar@far=1e-2", "tar@far=1e-3")
FARS = (1e-2, 1e-3)
CHUNK = 4_000_000  # resampled pair indices held at once


def _check(rounds: int, level: float) -> None:
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1 (resamples of the pairs), got {rounds}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level is the interval's coverage and must be in (0, 1), e.g. 0.95; got {level}")


def _resamples(labels: np.ndarray, rounds: int, seed: int) -> Iterator[np.ndarray]:
    """(r, N) pair indices, r <= rounds per chunk (about 4M indices each): positives (first) drawn from the
    positives, negatives from the negatives."""
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    step = max(1, CHUNK // labels.size)
    for start in range(0, rounds, step):
        r = min(step, rounds - start)
        yield np.concatenate([rng.choice(pos, (r, pos.size)), rng.choice(neg, (r, neg.size))], axis=1)


def _all_values(scores: np.ndarray, labels: np.ndarray, rounds: int, seed: int) -> np.ndarray:
    return np.concatenate([_values(scores, labels, idx) for idx in _resamples(labels, rounds, seed)])


def _values(scores: np.ndarray, labels: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """(rounds, len(METRICS)) metric values on each resample, all rounds at once.

    A resample is a count per distinct score of how often its positive and its negative pairs were drawn; the
    ROC of round r is the running sum of those counts from the highest score down (every distinct score a
    threshold, as `verification_report` has it). Equal, as the tests check, to `verification_report` on the
    resampled arrays, without sorting each resample again.
    """
    rounds = idx.shape[0]
    order, group = np.unique(-scores, return_inverse=True)  # group: rank of each pair's score, highest first
    g = order.size
    drawn = group[idx] + g * np.arange(rounds)[:, None]  # (rounds, N) group index, offset per round
    n_pos = int((labels == 1).sum())
    pos = np.bincount(drawn[:, :n_pos].ravel(), minlength=rounds * g).reshape(rounds, g)
    neg = np.bincount(drawn[:, n_pos:].ravel(), minlength=rounds * g).reshape(rounds, g)
    n_neg = idx.shape[1] - n_pos
    tp, fp = np.cumsum(pos, axis=1), np.cumsum(neg, axis=1)
    auc = (neg * (tp - pos + 0.5 * pos)).sum(axis=1) / (n_pos * n_neg)  # Mann-Whitney, ties count one half
    zero = np.zeros((rounds, 1))
    tpr, fpr = np.hstack([zero, tp / n_pos]), np.hstack([zero, fp / n_neg])  # (rounds, G + 1), from (0, 0)
    rows = np.arange(rounds)
    out = [auc, _eer_rows(fpr, tpr)]
    for far in FARS:  # the highest TAR whose FAR is still <= far (fpr is non-decreasing along a row)
        out.append(tpr[rows, (fpr <= far).sum(axis=1) - 1])
    return np.stack(out, axis=1)


def _eer_rows(fpr: np.ndarray, tpr: np.ndarray) -> np.ndarray:
    """`verification._eer` on each row: FAR = FRR, interpolated between the two points around the crossing."""
    diff = (1.0 - tpr) - fpr
    i = np.argmax(diff <= 0, axis=1)  # >= 1: diff starts at 1
    rows = np.arange(len(diff))
    d0, d1 = diff[rows, i - 1], diff[rows, i]
    f0, f1 = fpr[rows, i - 1], fpr[rows, i]
    return f0 + d0 / (d0 - d1) * (f1 - f0)


def _bounds(values: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    tail = (1.0 - level) / 2.0 * 100.0
    return np.percentile(values, tail, axis=0), np.percentile(values, 100.0 - tail, axis=0)


def bootstrap_intervals(
    scores: Any, labels: Any, rounds: int = 1000, level: float = 0.95, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """Percentile intervals of AUC, EER and TAR at FAR 1e-2 / 1e-3 over `rounds` stratified resamples.

    scores (N,), labels (N,) of 0/1 as for `verification_report`. Returns {metric: (low, high)} for every name in
    `METRICS`; the same seed gives the same intervals.
    """
    _check(rounds, level)
    s, y = _as_arrays(scores, labels)
    low, high = _bounds(_all_values(s, y, rounds, seed), level)
    return {m: (float(lo), float(hi)) for m, lo, hi in zip(METRICS, low, high)}


def paired_difference(
    scores_a: Any,
    scores_b: Any,
    labels: Any,
    metric: str = "auc",
    rounds: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Model b's `metric` minus model a's on the same labelled pairs, with a paired bootstrap interval.

    Both score arrays are resampled with the same indices. Returns `delta` (on the pairs as given), `low` and
    `high` (the interval of the difference at `level`), and `p_not_ahead`: the share of resamples where b is
    not ahead of a (for EER, where lower is better, where b's EER is not below a's).
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {list(METRICS)}")
    _check(rounds, level)
    a, y = _as_arrays(scores_a, labels)
    b, _ = _as_arrays(scores_b, labels)
    col = METRICS.index(metric)
    diff = _all_values(b, y, rounds, seed)[:, col] - _all_values(a, y, rounds, seed)[:, col]
    full = verification_report(b, y, fars=FARS)[metric] - verification_report(a, y, fars=FARS)[metric]
    ahead = diff < 0 if metric == "eer" else diff > 0
    low, high = _bounds(diff[:, None], level)
    return {
        "delta": float(full),
        "low": float(low[0]),
        "high": float(high[0]),
        "p_not_ahead": float(1 - ahead.mean()),
    }
