"""Losses over the whole batch structure, wrapping pytorch-metric-learning: N-pair, lifted structure, and
multi-similarity. Each class owns its PML object as a submodule, so PML parameters would be trained and saved."""

from __future__ import annotations

import torch

from facerec.losses._utils import attached_zero, check_positive, fp32
from facerec.losses.base import EmbeddingLoss
from facerec.losses.mining import build_miner, mine
from facerec.registry import LOSSES


def _graph_safe(loss: torch.Tensor | float, embeddings: torch.Tensor) -> torch.Tensor:
    """PML returns a bare 0 when a batch has no usable tuple; keep the result a scalar in the graph."""
    if not torch.is_tensor(loss) or not loss.requires_grad:
        return attached_zero(embeddings) + float(loss)
    return loss


@LOSSES.register("npair")
class NPairLoss(EmbeddingLoss):
    """Multi-class N-pair loss: softmax over f_a . f_p+ across the batch's identities (Sohn 2016, NeurIPS).

    Per identity in the batch PML takes one (anchor, positive) pair, its first two samples; the logits are the
    dot products of every anchor with every positive, the target the own positive. Embeddings are not normalised;
    as in the paper an L2 penalty `l2_reg * mean |x|^2` over the batch keeps their norms in check.
    """

    needs_pk = True
    scoring = "cosine"

    def __init__(self, l2_reg: float = 0.002) -> None:
        super().__init__()
        check_positive("l2_reg", l2_reg, allow_zero=True)
        self.l2_reg = float(l2_reg)
        from pytorch_metric_learning import losses as pml  # heavy (scipy, sklearn): only when built
        from pytorch_metric_learning.distances import DotProductSimilarity

        # PML's default similarity normalises the embeddings; Sohn's loss uses the raw inner product
        self.pml = pml.NPairsLoss(distance=DotProductSimilarity(normalize_embeddings=False))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with fp32(embeddings.device):
            x = embeddings.float()
            loss = _graph_safe(self.pml(x, labels), embeddings)
            return loss + self.l2_reg * x.pow(2).sum(1).mean()


@LOSSES.register("lifted")
class LiftedStructureLoss(EmbeddingLoss):
    """Lifted structured loss: per positive pair, a smooth max over its negative pairs (Song et al. 2016, CVPR).

    J_ij = log(sum_{(i,k) in N} e^{m - D_ik} + sum_{(j,l) in N} e^{m - D_jl}) + D_ij, loss = 1/(2|P|) sum_P
    max(0, J_ij)^2 (the paper's eq. 4), D Euclidean on the (by default L2-normalised) embeddings. Via PML's
    LiftedStructureLoss; `miner` restricts the pairs (default "none": all pairs).
    """

    needs_pk = True
    scoring = "cosine"

    def __init__(self, margin: float = 1.0, normalize: bool = True, miner: str = "none") -> None:
        super().__init__()
        check_positive("margin", margin, allow_zero=True)
        self.normalize = bool(normalize)
        if not self.normalize:
            self.scoring = "euclidean"  # type: ignore[misc]
        self.miner = build_miner(miner, normalize=self.normalize)
        from pytorch_metric_learning import losses as pml
        from pytorch_metric_learning.distances import LpDistance

        distance = LpDistance(normalize_embeddings=self.normalize)
        self.pml = pml.LiftedStructureLoss(neg_margin=margin, pos_margin=0.0, distance=distance)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with fp32(embeddings.device):
            x = embeddings.float()
            return _graph_safe(self.pml(x, labels, mine(self.miner, x, labels)), embeddings)


@LOSSES.register("multisimilarity")
class MultiSimilarityLoss(EmbeddingLoss):
    """Multi-similarity loss with MS pair mining, on cosine similarity (Wang et al. 2019, CVPR, arXiv:1904.06627).

    Per anchor: 1/alpha log(1 + sum_P e^{-alpha (S - base)}) + 1/beta log(1 + sum_N e^{beta (S - base)}), over the
    pairs kept by the miner (default "multi_similarity", epsilon 0.1: a positive is kept if it is less similar than
    the most similar negative + epsilon, a negative if more similar than the least similar positive - epsilon),
    averaged over the batch. Via PML's MultiSimilarityLoss and MultiSimilarityMiner.
    """

    needs_pk = True
    scoring = "cosine"

    def __init__(
        self, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5, miner: str = "multi_similarity"
    ) -> None:
        super().__init__()
        check_positive("alpha", alpha)
        check_positive("beta", beta)
        self.miner = build_miner(miner)
        from pytorch_metric_learning import losses as pml

        self.pml = pml.MultiSimilarityLoss(alpha=alpha, beta=beta, base=base)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with fp32(embeddings.device):
            x = embeddings.float()
            return _graph_safe(self.pml(x, labels, mine(self.miner, x, labels)), embeddings)
