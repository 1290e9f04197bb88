"""UniformFace (Duan et al. 2019): SphereFace plus a uniform loss that spreads the class centres apart."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from facerec.losses._utils import check_positive, fp32
from facerec.losses.center import update_centers
from facerec.losses.margin import SphereFaceLoss
from facerec.registry import LOSSES


def uniform_loss(centers: torch.Tensor) -> torch.Tensor:
    """(C, D) -> scalar: mean over ordered pairs j1 != j2 of 1 / (|c_j1 - c_j2| + 1) (Duan et al. eq. 7)."""
    c = centers.shape[0]
    sq = centers.pow(2).sum(1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * centers @ centers.t()
    dist = d2.clamp_min(1e-12).sqrt()
    off = ~torch.eye(c, dtype=torch.bool, device=centers.device)
    return (1.0 / (dist + 1.0))[off].sum() / (c * (c - 1))


@LOSSES.register("uniformface")
class UniformFaceLoss(SphereFaceLoss):
    """SphereFace margin + lambda * uniform loss on class centres (Duan et al. 2019, UniformFace, CVPR).

    The centres are of the L2-normalised features and, as in the paper, move by the center-loss rule with rate
    `center_alpha` (a buffer). The uniform term is computed on the centres *after* this batch's step, which are a
    differentiable function of the batch's features: that is how its gradient reaches the embeddings. Needs at
    least 2 classes. Costs O(C^2) memory per step (C = number of classes).
    """

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        scale: float = 30.0,
        margin: float = 1.5,
        margin_warmup_epochs: int = 0,
        uniform_weight: float = 1.0,
        center_alpha: float = 0.5,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(embedding_dim, num_classes, scale, margin, margin_warmup_epochs, label_smoothing)
        if num_classes < 2:
            raise ValueError("uniformface needs at least 2 classes")
        check_positive("uniform_weight", uniform_weight, allow_zero=True)
        check_positive("center_alpha", center_alpha)
        self.uniform_weight, self.center_alpha = float(uniform_weight), float(center_alpha)
        self.register_buffer("centers", F.normalize(torch.randn(num_classes, embedding_dim), dim=1))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        sphere = super().forward(embeddings, labels)
        with fp32(embeddings.device):
            x = F.normalize(embeddings.float(), dim=1)
            moved = update_centers(self.centers, x, labels, self.center_alpha)
            uniform = uniform_loss(moved)
            if self.training:
                with torch.no_grad():
                    self.centers.copy_(moved)
        return sphere + self.uniform_weight * uniform
