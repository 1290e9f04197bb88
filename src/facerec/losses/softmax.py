"""Plain softmax classification loss: a linear classifier over the embedding, trained with cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from facerec.losses.base import EmbeddingLoss
from facerec.registry import LOSSES


@LOSSES.register("softmax")
class SoftmaxLoss(EmbeddingLoss):
    """Linear classifier + cross-entropy (the HW2P2 baseline; optional label smoothing, Szegedy et al. 2016)."""

    needs_classes = True
    has_logits = True
    scoring = "cosine"  # the usual way to compare softmax-trained features (Wen et al. 2016; spec Appendix A)

    def __init__(self, embedding_dim: int, num_classes: int, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing
        self.classifier = nn.Linear(embedding_dim, num_classes)

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, C) class scores."""
        return self.classifier(embeddings)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(embeddings), labels, label_smoothing=self.label_smoothing)
