"""Sub-center ArcFace: K centres per class, the class cosine is the best of them, so noisy images can gather at
a non-dominant sub-centre instead of pulling the class's main centre towards them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from facerec.losses._utils import at_least_fp32, check_positive, fp32
from facerec.losses.margin import ArcFaceLoss
from facerec.registry import LOSSES


@LOSSES.register("subcenter_arcface")
class SubCenterArcFaceLoss(ArcFaceLoss):
    """ArcFace over K sub-centres per class, class cosine = max over them (Deng et al. 2020, ECCV, sub-center).

    The centre matrix `weight` is (C * K, D), rows c * K .. c * K + K - 1 belonging to class c. The cosine of
    class c is max_k cos(x, W_ck), (B, C); the ArcFace margin then acts on the target class's best sub-centre,
    and the closed-set `logits()` use the same max. Clean images of a class crowd one dominant sub-centre and
    noisy ones the others; the paper then drops the non-dominant centres (`prune_to_dominant`, or
    `prune_after_epochs`) and trains on with one centre per class. Which sub-centre wins for each training
    image's own class is counted in the buffer `counts` (C, K); pruned centres are masked out by the buffer
    `active` (C, K), so shapes, the optimiser state and checkpoints stay as they are. With K = 1 this is
    `arcface` exactly.

    Args:
        subcenters: K, sub-centres per class (the paper's default 3).
        prune_after_epochs: keep only each class's dominant sub-centre (by `counts`) from the start of this
            0-based epoch on, i.e. after this many epochs; 0 = never.
        scale, margin, margin_warmup_epochs, easy_margin, label_smoothing, learn_scale: as for `arcface`
            (defaults: the paper's s = 64, m = 0.5).
    """

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        subcenters: int = 3,
        scale: float | str = 64.0,
        margin: float = 0.5,
        prune_after_epochs: int = 0,
        margin_warmup_epochs: int = 0,
        easy_margin: bool = False,
        label_smoothing: float = 0.0,
        learn_scale: bool = False,
    ) -> None:
        super().__init__(
            embedding_dim,
            num_classes,
            scale=scale,
            margin=margin,
            margin_warmup_epochs=margin_warmup_epochs,
            easy_margin=easy_margin,
            label_smoothing=label_smoothing,
            learn_scale=learn_scale,
        )
        check_positive("subcenters", subcenters)
        check_positive("prune_after_epochs", prune_after_epochs, allow_zero=True)
        self.num_classes, self.k, self.prune_after_epochs = num_classes, int(subcenters), int(prune_after_epochs)
        self.weight = nn.Parameter(torch.empty(num_classes * self.k, embedding_dim))
        nn.init.xavier_uniform_(self.weight)
        self.register_buffer("counts", torch.zeros(num_classes, self.k, dtype=torch.long))
        self.register_buffer("active", torch.ones(num_classes, self.k, dtype=torch.bool))

    def subcenter_cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, C, K) cosines to every sub-centre; pruned ones are -inf."""
        w = F.normalize(at_least_fp32(self.weight), dim=1)
        cos = F.linear(F.normalize(at_least_fp32(embeddings), dim=1), w)
        return cos.view(len(embeddings), self.num_classes, self.k).masked_fill(~self.active, float("-inf"))

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, C): each class's best active sub-centre."""
        return self.subcenter_cosine(embeddings).amax(dim=2)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with fp32(embeddings.device):
            cos, nearest = self.subcenter_cosine(embeddings).max(dim=2)  # (B, C) each
            if self.training:
                self._count(labels, nearest.gather(1, labels[:, None]).squeeze(1))
            logits = self.margin_logits(cos, labels)
            return F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)

    @torch.no_grad()
    def _count(self, labels: torch.Tensor, winners: torch.Tensor) -> None:
        """counts[y_i, k_i] += 1 for each image i whose own class's best sub-centre is k_i."""
        flat = labels * self.k + winners
        self.counts.view(-1).index_add_(0, flat, torch.ones_like(flat))

    @torch.no_grad()
    def prune_to_dominant(
        self, embeddings: torch.Tensor | None = None, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Keep one sub-centre per class: the one most images of that class are nearest to.

        Args:
            embeddings: (N, D) images to judge by, with their `labels` (N,); by default the training counts
                gathered so far (`counts`). Ties and classes without images keep their lowest-index candidate.

        Returns:
            (C,) index in 0..K-1 of the sub-centre each class keeps.
        """
        if embeddings is None:
            votes = self.counts
        else:
            if labels is None:
                raise ValueError("prune_to_dominant: give the labels (N,) of the embeddings (N, D) too")
            winners = self.subcenter_cosine(embeddings).argmax(dim=2).gather(1, labels[:, None]).squeeze(1)
            votes = torch.zeros_like(self.counts).view(-1)
            votes.index_add_(0, labels * self.k + winners, torch.ones_like(labels))
            votes = votes.view(self.num_classes, self.k)
        votes = votes.masked_fill(~self.active, -1)  # a pruned centre never comes back
        dominant = votes.argmax(dim=1)
        self.active.copy_(F.one_hot(dominant, self.k).bool())
        return dominant

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        if self.prune_after_epochs and epoch == self.prune_after_epochs:
            self.prune_to_dominant()
