"""Large-margin Gaussian mixture loss (L-GM, Wan et al. 2018): classes as Gaussians, margin on the distance."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from facerec.losses._utils import check_positive, fp32
from facerec.losses.base import EmbeddingLoss
from facerec.registry import LOSSES


@LOSSES.register("lgm")
class LGMLoss(EmbeddingLoss):
    """Gaussian-mixture softmax with a (1 + alpha) margin plus likelihood regularisation (Wan et al. 2018, CVPR).

    d_k = 0.5 (x - mu_k)^T Sigma_k^-1 (x - mu_k) with diagonal Sigma_k; logits_k = -d_k - 0.5 log|Sigma_k| (equal
    priors), and the target's d_y is multiplied by (1 + alpha) in training. Loss = CE + lambda_lkd * mean(d_y +
    0.5 log|Sigma_y|). With `learn_covariance=False` (the default, steadier from scratch) Sigma = I, the identity
    covariance case of the paper. Embeddings are not normalised, so compare them by Euclidean distance.
    """

    needs_classes = True
    has_logits = True
    scoring = "euclidean"

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        alpha: float = 0.1,
        lambda_lkd: float = 0.1,
        learn_covariance: bool = False,
    ) -> None:
        super().__init__()
        check_positive("alpha", alpha, allow_zero=True)
        check_positive("lambda_lkd", lambda_lkd, allow_zero=True)
        self.alpha, self.lambda_lkd = float(alpha), float(lambda_lkd)
        self.means = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.xavier_uniform_(self.means)
        log_var = torch.zeros(num_classes, embedding_dim)
        self.log_var = nn.Parameter(log_var) if learn_covariance else None
        if not learn_covariance:
            self.register_buffer("fixed_log_var", log_var)

    def _terms(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D) -> d (B, C) half squared Mahalanobis distances, log|Sigma| (C,)."""
        log_var = (self.log_var if self.log_var is not None else self.fixed_log_var).float()
        x, mu, inv_var = embeddings.float(), self.means.float(), torch.exp(-log_var)
        # 0.5 * sum_d (x_d - mu_kd)^2 / var_kd, expanded so no (B, C, D) tensor is built
        d = 0.5 * ((x.pow(2) @ inv_var.t()) - 2.0 * x @ (mu * inv_var).t() + (mu.pow(2) * inv_var).sum(1))
        d = d.clamp_min(0.0)  # the expansion can dip below 0 by rounding
        return d, log_var.sum(1)

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, C) log-likelihoods up to a constant, without margin."""
        with fp32(embeddings.device):
            d, log_det = self._terms(embeddings)
            return -d - 0.5 * log_det

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with fp32(embeddings.device):
            d, log_det = self._terms(embeddings)
            margin = F.one_hot(labels, d.shape[1]).to(d.dtype) * self.alpha  # (B, C)
            cls = F.cross_entropy(-d * (1.0 + margin) - 0.5 * log_det, labels)
            d_y = d.gather(1, labels[:, None]).squeeze(1)
            return cls + self.lambda_lkd * (d_y + 0.5 * log_det[labels]).mean()
