"""Normalised-softmax family: NormFace, SphereFace, CosFace, ArcFace on one base; a variant overrides one hook.

All of them score `s * cos(theta_j)` between the L2-normalised embedding and L2-normalised class centres
W_j, and penalise only the target class: `s * psi(cos theta_y)`. The maths runs in fp32 even under AMP.
The scale s is a number, "auto" (AdaCos's fixed s = sqrt(2) ln(C - 1)), and with `learn_scale` a parameter.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from facerec.losses._utils import EPS, at_least_fp32, check_positive, fp32
from facerec.losses.base import EmbeddingLoss
from facerec.registry import LOSSES


def sphere_psi(cos: torch.Tensor, m: float) -> torch.Tensor:
    """Monotone extension of cos(m theta) to theta in [0, pi] (Liu et al. 2016): (-1)^k cos(m theta) - 2k."""
    m_theta = m * torch.acos(cos.clamp(-1 + EPS, 1 - EPS))
    k = torch.floor(m_theta / math.pi).detach()
    sign = 1.0 - 2.0 * torch.remainder(k, 2.0)  # (-1)^k
    return sign * torch.cos(m_theta) - 2.0 * k


def adacos_scale(num_classes: int) -> float:
    """AdaCos's fixed scale s = sqrt(2) ln(C - 1) (Zhang et al. 2019, AdaCos, arXiv:1905.00292).

    With the other C - 1 classes at 90 degrees, the target probability e^(s cos t) / (e^(s cos t) + C - 1) passes
    1/2, where it changes fastest, at t = 45 degrees for this s: the loss keeps a useful gradient over the angles
    that training visits. It grows with C only logarithmically (C = 10: 3.1, C = 735: 9.3, C = 100,000: 16.3), far
    below the usual 30-64, which suits few classes. Needs C >= 3 (C = 2 gives s = 0).
    """
    if num_classes < 3:
        raise ValueError(
            f"scale='auto' (AdaCos, sqrt(2) ln(C - 1)) needs at least 3 classes, got {num_classes}; "
            "give a number for loss.params.scale instead"
        )
    return math.sqrt(2.0) * math.log(num_classes - 1)


def resolve_scale(scale: float | str, num_classes: int) -> float:
    """A number as given, or "auto" -> `adacos_scale(num_classes)`; anything else is an error that says so."""
    if isinstance(scale, str):
        if scale != "auto":
            raise ValueError(f"scale must be a number or 'auto' (AdaCos's fixed scale), got {scale!r}")
        return adacos_scale(num_classes)
    check_positive("scale", scale)
    return float(scale)


class AngularMarginLoss(EmbeddingLoss):
    """Owns the (C, D) class-centre matrix; subclasses only penalise the target cosine in `target_logit`.

    Args:
        scale: s, the radius of the hypersphere the logits live on; "auto" = AdaCos's fixed sqrt(2) ln(C - 1).
        margin: m, the full margin (its meaning depends on the subclass).
        margin_warmup_epochs: ramp the margin linearly from "no margin" at epoch 0 to m at this epoch; margin
            losses trained from scratch on small data can otherwise stay at chance.
        label_smoothing: passed to the cross-entropy.
        learn_scale: s becomes a 0-d parameter (as in NormFace), initialised at `scale`, trained without weight
            decay by the loss's optimiser group. Its gradient, E_p[logit / s] - target logit / s, shrinks s while
            the margin keeps the target below the average and grows it once classes separate.
    """

    needs_classes = True
    has_logits = True
    scoring = "cosine"
    no_margin: ClassVar[float] = 0.0  # the margin value at which target_logit(cos) == cos

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        scale: float,
        margin: float,
        margin_warmup_epochs: int = 0,
        label_smoothing: float = 0.0,
        learn_scale: bool = False,
    ) -> None:
        super().__init__()
        s = resolve_scale(scale, num_classes)
        check_positive("margin_warmup_epochs", margin_warmup_epochs, allow_zero=True)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.scale: float | nn.Parameter = nn.Parameter(torch.tensor(s)) if learn_scale else s
        self.margin = float(margin)
        self.margin_warmup_epochs, self.label_smoothing = int(margin_warmup_epochs), float(label_smoothing)
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.xavier_uniform_(self.weight)
        self.current_margin = self.scheduled_margin(0)

    def scheduled_margin(self, epoch: int) -> float:
        """Margin in force during 0-based `epoch`: no_margin + (m - no_margin) * min(1, epoch / warmup)."""
        ramp = 1.0 if self.margin_warmup_epochs == 0 else min(1.0, epoch / self.margin_warmup_epochs)
        return self.no_margin + (self.margin - self.no_margin) * ramp

    def on_epoch_start(self, epoch: int) -> None:
        self.current_margin = self.scheduled_margin(epoch)

    def target_logit(self, cos_target: torch.Tensor) -> torch.Tensor:
        """Penalise the target-class cosines with `self.current_margin`, (B,) -> (B,)."""
        raise NotImplementedError

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, C) cosines between embeddings and class centres, in fp32 (float64 stays float64)."""
        w = F.normalize(at_least_fp32(self.weight), dim=1)
        return F.linear(F.normalize(at_least_fp32(embeddings), dim=1), w)

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, C) scaled cosines, without margin: the closed-set classifier."""
        with fp32(embeddings.device):
            return self.scale * self.cosine(embeddings)

    @staticmethod
    def with_target(cos: torch.Tensor, labels: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(B, C) with each row's target column replaced by `target` (B,); out-of-place, so autograd sees it."""
        return cos.scatter(1, labels[:, None], target[:, None].to(cos.dtype))

    def margin_logits(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B, C) cosines -> (B, C) scaled logits with the target column replaced by target_logit."""
        penalised = self.target_logit(cos.gather(1, labels[:, None]).squeeze(1))
        return self.scale * self.with_target(cos, labels, penalised)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with fp32(embeddings.device):
            logits = self.margin_logits(self.cosine(embeddings), labels)
            return F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)


@LOSSES.register("normface")
class NormFaceLoss(AngularMarginLoss):
    """Normalised softmax, s * cos(theta), no margin (Wang et al. 2017, NormFace, arXiv:1704.06369)."""

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        scale: float | str = 30.0,
        label_smoothing: float = 0.0,
        learn_scale: bool = False,
    ) -> None:
        super().__init__(embedding_dim, num_classes, scale, 0.0, 0, label_smoothing, learn_scale)

    def target_logit(self, cos_target: torch.Tensor) -> torch.Tensor:
        return cos_target


@LOSSES.register("cosface")
class CosFaceLoss(AngularMarginLoss):
    """Additive cosine margin, s * (cos(theta) - m) (Wang et al. 2018, CosFace, arXiv:1801.09414)."""

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        scale: float | str = 30.0,
        margin: float = 0.25,
        margin_warmup_epochs: int = 0,
        label_smoothing: float = 0.0,
        learn_scale: bool = False,
    ) -> None:
        super().__init__(
            embedding_dim, num_classes, scale, margin, margin_warmup_epochs, label_smoothing, learn_scale
        )

    def target_logit(self, cos_target: torch.Tensor) -> torch.Tensor:
        return cos_target - self.current_margin


@LOSSES.register("arcface")
class ArcFaceLoss(AngularMarginLoss):
    """Additive angular margin, s * cos(theta + m) (Deng et al. 2019, ArcFace, arXiv:1801.07698).

    easy_margin: Deng et al.'s released variant that applies the margin only where cos(theta) > 0 (easier to
    start from scratch, not monotone). Otherwise, past theta = pi - m, where cos(theta + m) would rise again, the
    target logit falls back to the linear penalty cos(theta) - m sin(m) (insightface's "th / mm" branch).
    """

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        scale: float | str = 30.0,
        margin: float = 0.3,
        margin_warmup_epochs: int = 0,
        easy_margin: bool = False,
        label_smoothing: float = 0.0,
        learn_scale: bool = False,
    ) -> None:
        super().__init__(
            embedding_dim, num_classes, scale, margin, margin_warmup_epochs, label_smoothing, learn_scale
        )
        self.easy_margin = bool(easy_margin)

    def target_logit(self, cos_target: torch.Tensor) -> torch.Tensor:
        m = self.current_margin
        theta = torch.acos(cos_target.clamp(-1 + EPS, 1 - EPS))
        shifted = torch.cos(theta + m)
        if self.easy_margin:
            return torch.where(cos_target > 0, shifted, cos_target)
        return torch.where(theta <= math.pi - m, shifted, cos_target - m * math.sin(m))


@LOSSES.register("sphereface")
class SphereFaceLoss(AngularMarginLoss):
    """Multiplicative angular margin, s * psi(m * theta) on normalised features (Liu et al. 2017, SphereFace).

    Uses the feature-normalised form with a fixed scale (as OpenSphere's SphereFace-R does) instead of the
    original's feature norm and lambda annealing; warm-up ramps m from 1 (no margin) instead. m may be non-integer.
    """

    no_margin = 1.0

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        scale: float | str = 30.0,
        margin: float = 1.5,
        margin_warmup_epochs: int = 0,
        label_smoothing: float = 0.0,
        learn_scale: bool = False,
    ) -> None:
        if margin < 1.0:
            raise ValueError(f"sphereface margin multiplies the angle and must be >= 1, got {margin}")
        super().__init__(
            embedding_dim, num_classes, scale, margin, margin_warmup_epochs, label_smoothing, learn_scale
        )

    def target_logit(self, cos_target: torch.Tensor) -> torch.Tensor:
        return sphere_psi(cos_target, self.current_margin)
