"""Quadruplet loss (Chen et al. 2017): the triplet term plus a term against a pair of two other identities."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from facerec.losses._utils import attached_zero, check_positive, fp32, pairwise_distance
from facerec.losses.base import EmbeddingLoss
from facerec.registry import LOSSES


@LOSSES.register("quadruplet")
class QuadrupletLoss(EmbeddingLoss):
    """[g(a,p)^2 - g(a,n1)^2 + m1]_+ + [g(a,p)^2 - g(n1,n2)^2 + m2]_+ (Chen et al. 2017, CVPR, arXiv:1704.01719).

    g is the Euclidean distance of the (by default L2-normalised) embeddings, squared as in the paper's eq. 3.
    Online hard mining inside the batch (the paper's margin-based OHNM, batch-hard style): per anchor, the farthest
    positive p, the nearest negative n1, and the nearest pair (n1', n2) of two *different* identities that both
    differ from the anchor's. The second term pushes inter-class distances above intra-class ones in general, not
    only around the anchor; it needs >= 3 identities in the batch (otherwise only the triplet term is used).
    """

    needs_pk = True
    scoring = "cosine"

    def __init__(self, margin1: float = 1.0, margin2: float = 0.5, normalize: bool = True) -> None:
        super().__init__()
        check_positive("margin1", margin1, allow_zero=True)
        check_positive("margin2", margin2, allow_zero=True)
        self.margin1, self.margin2, self.normalize = float(margin1), float(margin2), bool(normalize)
        if not self.normalize:
            self.scoring = "euclidean"  # type: ignore[misc]

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with fp32(embeddings.device):
            d2 = pairwise_distance(embeddings, self.normalize).pow(2)  # (B, B)
            same = labels[:, None] == labels[None, :]
            eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
            pos_mask, neg_mask = same & ~eye, ~same
            valid = pos_mask.any(1) & neg_mask.any(1)  # anchors with a positive and a negative
            if not valid.any():
                return attached_zero(embeddings)
            inf = torch.finfo(d2.dtype).max
            hardest_pos = d2.masked_fill(~pos_mask, -inf).amax(1)  # (B,)
            hardest_neg = d2.masked_fill(~neg_mask, inf).amin(1)
            triplet = F.relu(hardest_pos - hardest_neg + self.margin1)
            # (P, B, B) per batch identity c: pairs (k, l) of different identities, both different from c
            ids, inverse = torch.unique(labels, return_inverse=True)
            not_c = labels[None, :] != ids[:, None]  # (P, B)
            other = neg_mask[None] & not_c[:, :, None] & not_c[:, None, :]
            has_pair = other.flatten(1).any(1)[inverse]  # (B,)
            nearest_pair = d2[None].masked_fill(~other, inf).flatten(1).amin(1)[inverse]
            second = torch.where(
                has_pair, F.relu(hardest_pos - nearest_pair + self.margin2), torch.zeros_like(triplet)
            )
            return (triplet + second)[valid].mean()
