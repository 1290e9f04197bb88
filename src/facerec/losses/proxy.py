"""Proxy-based losses: SoftTriple (several proxies per class) and mask-proxy (a random subset of class proxies)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from facerec.losses._utils import check_positive, fp32
from facerec.losses.base import EmbeddingLoss
from facerec.losses.margin import CosFaceLoss
from facerec.registry import LOSSES


@LOSSES.register("softtriple")
class SoftTripleLoss(EmbeddingLoss):
    """SoftTriple: softmax over classes with K centres each, relaxed by an inner softmax (Qian et al. 2019, ICCV).

    S_c = sum_k softmax_k(S_ck / gamma) S_ck on cosine similarities; loss = CE(la * (S - delta onehot)) + tau R,
    where R = sum_c sum_{k<k'} |w_ck - w_ck'| / (C K (K - 1)) pulls the centres of a class together so that
    redundant ones merge (the paper's regulariser; PML's SoftTripleLoss, which we wrap, does not add it).
    """

    needs_classes = True
    has_logits = True
    scoring = "cosine"

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        centers_per_class: int = 10,
        la: float = 20.0,
        gamma: float = 0.1,
        margin: float = 0.01,
        tau: float = 0.2,
    ) -> None:
        super().__init__()
        for name, value in [("centers_per_class", centers_per_class), ("la", la), ("gamma", gamma)]:
            check_positive(name, value)
        check_positive("tau", tau, allow_zero=True)
        self.tau, self.num_classes, self.k = float(tau), num_classes, int(centers_per_class)
        from pytorch_metric_learning import losses as pml  # heavy (scipy, sklearn): only when built

        self.pml = pml.SoftTripleLoss(num_classes, embedding_dim, centers_per_class, la, gamma, margin)

    def centre_regulariser(self) -> torch.Tensor:
        """Mean distance between the unit-norm centres of the same class, over C K (K - 1) ordered pairs."""
        if self.k < 2:
            return self.pml.fc.sum() * 0.0
        w = F.normalize(self.pml.fc.float().t(), dim=1).view(self.num_classes, self.k, -1)  # (C, K, D)
        d2 = (2.0 - 2.0 * w @ w.transpose(1, 2)).clamp_min(1e-12)  # (C, K, K)
        off = ~torch.eye(self.k, dtype=torch.bool, device=w.device)
        return d2.sqrt()[:, off].sum() / (self.num_classes * self.k * (self.k - 1))

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, C) la * relaxed class similarity, without margin."""
        with fp32(embeddings.device):
            return self.pml.la * self.pml.get_logits(embeddings.float())

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with fp32(embeddings.device):
            return self.pml(embeddings.float(), labels) + self.tau * self.centre_regulariser()


@LOSSES.register("maskproxy")
class MaskProxyLoss(CosFaceLoss):
    """Normalised proxy softmax over the batch's classes + a random subset of the other classes' proxies.

    Our documented formulation of "mask-proxy": per batch, the proxies (class centres W, as in NormFace) of the
    classes in the batch are always kept, and each other class's proxy is kept with probability `keep_negatives`
    (the rest are masked out of the softmax). The loss is s * (cos - m) cross-entropy over the kept proxies only,
    so each step costs O(kept classes) and sees a changing set of negatives (cf. Partial FC, An et al. 2021).
    With keep_negatives=1 and margin 0 this is NormFace. The random masks come from a private generator seeded
    by `seed`. Closed-set `logits()` use every proxy.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        scale: float = 30.0,
        margin: float = 0.0,
        keep_negatives: float = 0.5,
        seed: int = 0,
        margin_warmup_epochs: int = 0,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(embedding_dim, num_classes, scale, margin, margin_warmup_epochs, label_smoothing)
        if not 0.0 < keep_negatives <= 1.0:
            raise ValueError(f"keep_negatives must be in (0, 1], got {keep_negatives}")
        self.keep_negatives = float(keep_negatives)
        self.generator = torch.Generator().manual_seed(seed)

    def kept_classes(self, labels: torch.Tensor) -> torch.Tensor:
        """(K,) sorted class indices whose proxies enter this batch's softmax: all positives + sampled others."""
        keep = torch.rand(self.weight.shape[0], generator=self.generator) < self.keep_negatives
        keep = keep.to(labels.device)
        keep[labels] = True
        return torch.nonzero(keep).squeeze(1)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        kept = self.kept_classes(labels)
        remap = torch.full((self.weight.shape[0],), -1, dtype=torch.long, device=labels.device)
        remap[kept] = torch.arange(len(kept), device=labels.device)
        local = remap[labels]  # targets within the kept columns
        with fp32(embeddings.device):
            w = F.normalize(self.weight[kept].float(), dim=1)
            cos = F.linear(F.normalize(embeddings.float(), dim=1), w)  # (B, K)
            return F.cross_entropy(self.margin_logits(cos, local), local, label_smoothing=self.label_smoothing)
