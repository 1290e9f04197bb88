"""Pair and triplet losses on in-batch tuples: contrastive (Hadsell et al. 2006), triplet (Hermans et al. 2017),
and a pair-wise logistic loss. All need several images per identity in the batch (P x K sampling)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from facerec.losses._utils import attached_zero, check_positive, fp32, pairwise_distance
from facerec.losses.base import EmbeddingLoss
from facerec.losses.mining import build_miner, mine_pairs, mine_triplets
from facerec.registry import LOSSES


class MinedLoss(EmbeddingLoss):
    """Shared set-up: optional L2 normalisation (then compare by cosine, else by Euclidean distance), a miner."""

    needs_pk = True
    scoring = "cosine"

    def __init__(self, normalize: bool, miner: str, margin: float) -> None:
        super().__init__()
        self.normalize = bool(normalize)
        self.miner_name = miner
        self.miner = build_miner(miner, normalize=self.normalize, margin=margin)
        if not self.normalize:
            # un-normalised embeddings: their norm carries meaning, so rank pairs by Euclidean distance
            self.scoring = "euclidean"  # type: ignore[misc]


@LOSSES.register("contrastive")
class ContrastiveLoss(MinedLoss):
    """y d^2 + (1 - y) max(0, m - d)^2 averaged over in-batch pairs (Hadsell et al. 2006; spec eq. 1).

    d is the Euclidean distance between the (by default L2-normalised, so d is in [0, 2]) embeddings. With
    miner="none" (default) every one of the B(B-1)/2 unordered pairs counts once (online selection); otherwise the
    miner's pairs are used. Negatives outnumber positives in a P x K batch; the mean is over all pairs (eq. 1).
    """

    def __init__(self, margin: float = 1.0, normalize: bool = True, miner: str = "none") -> None:
        super().__init__(normalize, miner, margin)
        check_positive("margin", margin)
        self.margin = float(margin)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with fp32(embeddings.device):
            dist = pairwise_distance(embeddings, self.normalize)  # (B, B)
            a1, p, a2, n = mine_pairs(self.miner, embeddings, labels)
            if self.miner is None:  # all ordered pairs -> each unordered pair once
                a1, p, a2, n = a1[a1 < p], p[a1 < p], a2[a2 < n], n[a2 < n]
            if len(a1) + len(a2) == 0:
                return attached_zero(embeddings)
            pos = dist[a1, p].pow(2)
            neg = F.relu(self.margin - dist[a2, n]).pow(2)
            return torch.cat([pos, neg]).mean()


@LOSSES.register("triplet")
class TripletLoss(MinedLoss):
    """max(0, d(a, p) - d(a, n) + m) over mined triplets; batch-hard by default (Hermans et al. 2017, 1703.07737).

    miner: "batch_hard" (hardest positive and negative per anchor), "semi_hard" (FaceNet), "multi_similarity",
    "distance_weighted", or "none" (batch-all: mean over every valid triplet, zeros included).
    soft_margin: replace the hinge by softplus(d(a, p) - d(a, n)), Hermans et al.'s soft-margin variant.
    """

    def __init__(
        self, margin: float = 0.2, normalize: bool = True, miner: str = "batch_hard", soft_margin: bool = False
    ) -> None:
        super().__init__(normalize, miner, margin)
        check_positive("margin", margin, allow_zero=soft_margin)
        self.margin, self.soft_margin = float(margin), bool(soft_margin)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with fp32(embeddings.device):
            dist = pairwise_distance(embeddings, self.normalize)
            a, p, n = mine_triplets(self.miner, embeddings, labels)
            if len(a) == 0:
                return attached_zero(embeddings)
            gap = dist[a, p] - dist[a, n]
            return (F.softplus(gap) if self.soft_margin else F.relu(gap + self.margin)).mean()


@LOSSES.register("pairwise")
class PairwiseLoss(MinedLoss):
    """Pair-wise logistic loss on s = w cos + b over in-batch pairs, learnable w, b (after Dharmyal et al. 2019).

    Our documented formulation (the paper's exact form was not available to us): every pair (i, j) is a binary
    same/different decision with probability sigmoid(w cos(x_i, x_j) + b), w > 0 (init 10) and b (init -5)
    learnable as in the angular prototypical loss; the loss is 0.5 * (mean BCE over positive pairs + mean BCE over
    negative pairs), balanced so the many negatives of a P x K batch do not swamp the positives. The scores it
    learns are verification scores. miner="none" uses every unordered pair.
    """

    def __init__(self, init_w: float = 10.0, init_b: float = -5.0, miner: str = "none") -> None:
        super().__init__(True, miner, 0.2)
        check_positive("init_w", init_w)
        self.w = nn.Parameter(torch.tensor(float(init_w)))
        self.b = nn.Parameter(torch.tensor(float(init_b)))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with fp32(embeddings.device):
            x = F.normalize(embeddings.float(), dim=1)
            score = self.w.clamp_min(1e-6) * (x @ x.t()) + self.b  # (B, B)
            a1, p, a2, n = mine_pairs(self.miner, embeddings, labels)
            if self.miner is None:
                a1, p, a2, n = a1[a1 < p], p[a1 < p], a2[a2 < n], n[a2 < n]
            parts = [F.softplus(-score[a1, p]).mean()] if len(a1) else []
            parts += [F.softplus(score[a2, n]).mean()] if len(a2) else []
            if not parts:
                return attached_zero(embeddings) + 0.0 * (self.w + self.b)
            return torch.stack(parts).mean()
