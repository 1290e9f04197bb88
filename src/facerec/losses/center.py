"""Center loss (Wen et al. 2016): pull each embedding towards a running centre of its class."""

from __future__ import annotations

import torch

from facerec.losses._utils import check_positive, fp32
from facerec.losses.base import EmbeddingLoss
from facerec.registry import LOSSES


def update_centers(
    centers: torch.Tensor, embeddings: torch.Tensor, labels: torch.Tensor, alpha: float
) -> torch.Tensor:
    """Wen et al.'s centre step, differentiable in `embeddings`: (C, D), (B, D), (B,) -> new (C, D).

    c_j <- c_j - alpha * sum_{i: y_i = j} (c_j - x_i) / (1 + n_j); classes absent from the batch do not move.
    """
    ones = torch.ones_like(labels, dtype=centers.dtype)
    counts = torch.zeros_like(centers[:, 0]).index_add(0, labels, ones)  # (C,); bincount would sync with the host
    sums = torch.zeros_like(centers, dtype=embeddings.dtype).index_add(0, labels, embeddings)  # (C, D)
    delta = (counts[:, None] * centers - sums) / (1.0 + counts[:, None])
    return centers - alpha * delta


@LOSSES.register("center")
class CenterLoss(EmbeddingLoss):
    """0.5 * mean squared distance to the own class centre (Wen et al. 2016, ECCV); add to softmax with a weight.

    The (C, D) centres are a buffer, not a parameter: as in the paper they move by their own rule with rate
    `alpha` (see `update_centers`) during training, so their speed does not depend on the loss weight lambda
    (0.003 to 0.01 with softmax) or on the optimizer. The paper sums over the batch; we average, so lambda does not
    depend on the batch size. Embeddings are not normalised. Scoring: cosine, as Wen et al. compare features.
    """

    needs_classes = True
    scoring = "cosine"

    def __init__(self, embedding_dim: int, num_classes: int, alpha: float = 0.5) -> None:
        super().__init__()
        check_positive("alpha", alpha)
        self.alpha = float(alpha)
        self.register_buffer("centers", torch.zeros(num_classes, embedding_dim))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with fp32(embeddings.device):
            x = embeddings.float()
            loss = 0.5 * (x - self.centers[labels]).pow(2).sum(1).mean()
            if self.training:
                with torch.no_grad():  # a non-finite batch (a step that will be skipped) leaves the centres alone
                    new = update_centers(self.centers, x, labels, self.alpha)
                    self.centers.copy_(torch.where(torch.isfinite(x).all(), new, self.centers))
        return loss
