"""Large-margin softmax (L-Softmax, Liu et al. 2016): multiplicative angular margin on un-normalised logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from facerec.losses._utils import check_positive, fp32
from facerec.losses.base import EmbeddingLoss
from facerec.losses.margin import sphere_psi
from facerec.registry import LOSSES


@LOSSES.register("lsoftmax")
class LSoftmaxLoss(EmbeddingLoss):
    """L-Softmax: target logit |W||x| psi(theta) with cos(m theta), annealed by lambda (Liu et al. 2016, ICML).

    Logits are W_j . x (no bias, no normalisation). The target logit is blended as in the paper's released code,
    f_y = (lambda |W_y||x| cos(theta) + |W_y||x| psi(theta)) / (1 + lambda), with psi(theta) = (-1)^k cos(m theta)
    - 2k, and lambda = max(lambda_min, base * (1 + gamma * it)^(-power)) decays with the training iteration `it`
    (a buffer, so it survives a checkpoint). Large lambda = plain softmax: the annealing is what makes it train.
    """

    needs_classes = True
    has_logits = True
    scoring = "cosine"

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        margin: int = 2,
        lambda_base: float = 1000.0,
        lambda_gamma: float = 0.12,
        lambda_power: float = 1.0,
        lambda_min: float = 5.0,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if int(margin) != margin or margin < 1:
            raise ValueError(f"lsoftmax margin is an integer multiplier of the angle (1, 2, 3, 4), got {margin}")
        for name, value in [("lambda_gamma", lambda_gamma), ("lambda_power", lambda_power)]:
            check_positive(name, value, allow_zero=True)
        check_positive("lambda_min", lambda_min, allow_zero=True)
        self.margin, self.label_smoothing = int(margin), float(label_smoothing)
        self.lambda_base, self.lambda_gamma, self.lambda_power = lambda_base, lambda_gamma, lambda_power
        self.lambda_min = lambda_min
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.xavier_uniform_(self.weight)
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))

    def current_lambda(self) -> float:
        """The annealed blend weight at the current iteration."""
        it = float(self.iteration.item())
        return max(self.lambda_min, self.lambda_base * (1.0 + self.lambda_gamma * it) ** (-self.lambda_power))

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, C) plain logits W x, without margin."""
        with fp32(embeddings.device):
            return F.linear(embeddings.float(), self.weight.float())

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with fp32(embeddings.device):
            x, w = embeddings.float(), self.weight.float()
            logits = F.linear(x, w)  # (B, C)
            norms = x.norm(dim=1) * w[labels].norm(dim=1)  # (B,) |x_i| |W_y|
            target = logits.gather(1, labels[:, None]).squeeze(1)  # (B,) |x||W| cos
            cos = target / norms.clamp_min(1e-12)
            lam = self.current_lambda()
            blended = (lam * target + norms * sphere_psi(cos, self.margin)) / (1.0 + lam)
            logits = logits.scatter(1, labels[:, None], blended[:, None])
            loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        if self.training and torch.is_grad_enabled():
            self.iteration += 1
        return loss
