"""Offline pair selection: draw (a, b, same) index pairs from a labelled set at a given positive:negative ratio."""

from __future__ import annotations

import torch


def select_pairs(
    labels: torch.Tensor, pos_fraction: float, n_pairs: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random pairs for a contrastive / pair-wise training set, e.g. pos_fraction 0.5, 0.6, 0.7 for 5:5, 6:4, 7:3.

    Args:
        labels: (N,) integer identity of every sample.
        pos_fraction: share of same-identity pairs; round(pos_fraction * n_pairs) of the pairs are positive.
        n_pairs: number of pairs to draw.
        generator: source of randomness (pass a seeded one for reproducible sets).
    Returns:
        idx_a, idx_b: (n_pairs,) sample indices, idx_a != idx_b; same: (n_pairs,) bool, labels[a] == labels[b].
        Pairs are drawn uniformly over anchors with replacement (a pair may repeat), then shuffled together.
    """
    labels = torch.as_tensor(labels).long().flatten()
    if not 0.0 <= pos_fraction <= 1.0:
        raise ValueError(f"pos_fraction must be in [0, 1], got {pos_fraction}")
    if n_pairs < 0:
        raise ValueError(f"n_pairs must be >= 0, got {n_pairs}")
    n_pos = round(pos_fraction * n_pairs)
    n_neg = n_pairs - n_pos
    order = torch.argsort(labels, stable=True)  # samples grouped by class
    _, inverse, counts = torch.unique(labels[order], return_inverse=True, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts  # first position of each class in `order`
    rank = torch.arange(len(labels)) - starts[inverse]  # position of each sorted sample within its class
    cls, n = inverse, len(labels)

    if n_pos and not (counts >= 2).any():
        raise ValueError("positive pairs need a class with at least 2 samples")
    if n_neg and len(counts) < 2:
        raise ValueError("negative pairs need at least 2 classes")

    eligible = torch.nonzero(counts[cls] >= 2).squeeze(1)  # sorted positions whose class has a partner
    a_pos = eligible[torch.randint(len(eligible), (n_pos,), generator=generator)] if n_pos else eligible[:0]
    size = counts[cls[a_pos]]
    shift = 1 + (torch.rand(n_pos, generator=generator) * (size - 1)).long().clamp_max(size - 2)
    b_pos = starts[cls[a_pos]] + (rank[a_pos] + shift) % size  # another member of the same class

    a_neg = torch.randint(n, (n_neg,), generator=generator)
    size = counts[cls[a_neg]]
    r = (torch.rand(n_neg, generator=generator) * (n - size)).long().clamp_max(n - size - 1)
    b_neg = torch.where(r >= starts[cls[a_neg]], r + size, r)  # skip over the anchor's own class block

    a, b = torch.cat([a_pos, a_neg]), torch.cat([b_pos, b_neg])
    shuffle = torch.randperm(n_pairs, generator=generator)
    idx_a, idx_b = order[a[shuffle]], order[b[shuffle]]
    return idx_a, idx_b, labels[idx_a] == labels[idx_b]
