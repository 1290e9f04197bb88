"""Closed-set face classification: top-k accuracy of class scores against integer labels."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def topk_accuracy(
    logits_or_scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> dict[int, float]:
    """Fraction of rows whose label is among the k highest-scoring classes, for each k in `ks`.

    Args:
        logits_or_scores: (N, C) class scores (logits, cosines or negative distances: higher = more likely).
        labels: (N,) integer class indices in [0, C). A negative label marks an identity that is not among
            the C classes (open-set rows in a closed-set evaluation); such rows always count as wrong.
        ks: the k values; each is capped at C, so top-5 over 3 classes is top-3 (= 1.0 for known labels).

    Returns:
        {k: accuracy in [0, 1]} keyed by the k values as requested (before capping).
    """
    if logits_or_scores.ndim != 2:
        raise ValueError(f"expected (N, C) scores, got shape {tuple(logits_or_scores.shape)}")
    n, c = logits_or_scores.shape
    if labels.shape != (n,):
        raise ValueError(f"expected ({n},) labels for {n} rows of scores, got shape {tuple(labels.shape)}")
    if n == 0 or c == 0:
        raise ValueError(f"top-k accuracy needs at least one row and one class, got scores of shape {(n, c)}")
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {tuple(ks)}")
    kmax = min(max(ks), c)
    top = logits_or_scores.detach().float().topk(kmax, dim=1).indices  # (N, kmax), best class first
    hits = top == labels.to(top.device).long()[:, None]  # (N, kmax); a negative label never matches
    return {int(k): hits[:, : min(int(k), c)].any(dim=1).float().mean().item() for k in ks}
