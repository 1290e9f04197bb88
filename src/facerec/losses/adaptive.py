"""Margin heads that adapt to running training statistics kept in buffers: AdaFace (the feature norm as an image
quality proxy) and CurricularFace (the mean positive cosine as the curriculum's progress).

Both update their statistics only in training mode (`loss.train()`), in place, so the weight average
(engine/ema.py) and checkpoints see them; evaluation forwards use them as they are. The statistics are per
process: under DDP each rank keeps its own.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from facerec.losses._utils import EPS, at_least_fp32, check_positive, fp32
from facerec.losses.margin import AngularMarginLoss, ArcFaceLoss
from facerec.registry import LOSSES

NORM_CLIP = (1e-3, 100.0)  # AdaFace clips the norms before their statistics, as the released code does
NORM_STD_EPS = 1e-3  # ... and adds this to the std before dividing


def _check_momentum(t_alpha: float) -> float:
    if not 0.0 < t_alpha <= 1.0:
        raise ValueError(f"t_alpha is an EMA momentum and must be in (0, 1], got {t_alpha}")
    return float(t_alpha)


@LOSSES.register("adaface")
class AdaFaceLoss(AngularMarginLoss):
    """Margin that adapts to image quality via the feature norm (Kim, Jain, Liu 2022, AdaFace, CVPR).

    The un-normalised embedding's norm ||z|| (the embedder hands the loss its raw (B, D) output) is standardised
    by an EMA of the batch mean mu and std sigma of the norms (buffers `norm_mean`, `norm_std`, momentum `t_alpha`,
    initialised at the released code's 20 and 100): norm_hat = clip((||z|| - mu) / (sigma + 1e-3) * h, -1, 1), on
    detached norms. The target logit is then s * (cos(theta + g_angle) - g_add) with g_angle = -m * norm_hat and
    g_add = m * norm_hat + m (theta + g_angle clipped to [0, pi]): ArcFace's margin for low-norm (hard, low
    quality) images at norm_hat = -1, CosFace's at 0, and cos(theta - m) - 2m for high-norm ones, so hard images
    are emphasised only when they are recognisable. Logits (B, C) without margin for closed-set prediction.

    Args:
        scale: s (paper: 64; "auto" = AdaCos's fixed scale); margin: m (paper: 0.4); h: how much of the
            standardised norm range maps into [-1, 1] (paper: 0.333, about 68 % of images inside); t_alpha:
            EMA momentum of mu and sigma (paper: 0.01). margin_warmup_epochs, label_smoothing, learn_scale: as
            for the other margin heads.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        scale: float | str = 64.0,
        margin: float = 0.4,
        h: float = 0.333,
        t_alpha: float = 0.01,
        margin_warmup_epochs: int = 0,
        label_smoothing: float = 0.0,
        learn_scale: bool = False,
    ) -> None:
        super().__init__(
            embedding_dim, num_classes, scale, margin, margin_warmup_epochs, label_smoothing, learn_scale
        )
        check_positive("h", h)
        self.h, self.t_alpha = float(h), _check_momentum(t_alpha)
        self.register_buffer("norm_mean", torch.tensor(20.0))
        self.register_buffer("norm_std", torch.tensor(100.0))

    @torch.no_grad()
    def norm_hat(self, norms: torch.Tensor) -> torch.Tensor:
        """(B,) feature norms -> (B,) standardised norms in [-1, 1]; in training, first moves the EMA statistics.

        The std needs two images: a batch of one moves only the mean.
        """
        norms = norms.detach().clamp(*NORM_CLIP)
        if self.training:
            self.norm_mean.lerp_(norms.mean().to(self.norm_mean.dtype), self.t_alpha)
            if len(norms) > 1:
                self.norm_std.lerp_(norms.std().to(self.norm_std.dtype), self.t_alpha)
        return ((norms - self.norm_mean) / (self.norm_std + NORM_STD_EPS) * self.h).clamp(-1.0, 1.0)

    def target_logit(self, cos_target: torch.Tensor, norm_hat: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) target cosines and (B,) norm_hat -> (B,) cos(theta - m norm_hat) - (m norm_hat + m).

        Without `norm_hat` the image is taken to be of average norm (norm_hat = 0): CosFace's cos(theta) - m.
        """
        m = self.current_margin
        g = torch.zeros_like(cos_target) if norm_hat is None else norm_hat.to(cos_target.dtype)
        theta = torch.acos(cos_target.clamp(-1 + EPS, 1 - EPS))
        return torch.cos((theta - m * g).clamp(0.0, math.pi)) - (m * g + m)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with fp32(embeddings.device):
            x = at_least_fp32(embeddings)
            norm_hat = self.norm_hat(x.norm(dim=1))
            cos = self.cosine(x)
            target = self.target_logit(cos.gather(1, labels[:, None]).squeeze(1), norm_hat)
            logits = self.scale * self.with_target(cos, labels, target)
            return F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)


@LOSSES.register("curricularface")
class CurricularFaceLoss(ArcFaceLoss):
    """ArcFace positive plus hard negatives re-weighted by training progress (Huang et al. 2020, CurricularFace).

    The target logit is ArcFace's s * cos(theta_y + m) (linear fallback past pi - m). A negative class j is
    hard when cos theta_j exceeds that penalised target; its logit becomes s * cos theta_j * (t + cos theta_j),
    where t (buffer `t`, starting at 0) is an EMA, momentum `t_alpha`, of the batch's mean (unpenalised) target
    cosine. Early on t is near 0, so hard negatives are damped (cos^2 < cos): easy samples first; as t grows
    towards 1 hard negatives are amplified. Logits (B, C) without margin or modulation for closed-set prediction.

    Unlike the released code, which tests hardness against cos(theta_y + m) even past pi - m, a negative here is
    hard relative to the target logit actually used (the same outside that corner).

    Args:
        scale: s (paper: 64; "auto" = AdaCos's fixed scale); margin: m (paper: 0.5); t_alpha: EMA momentum of t
            (paper: 0.01). margin_warmup_epochs, label_smoothing, learn_scale: as for `arcface`.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        scale: float | str = 64.0,
        margin: float = 0.5,
        t_alpha: float = 0.01,
        margin_warmup_epochs: int = 0,
        label_smoothing: float = 0.0,
        learn_scale: bool = False,
    ) -> None:
        super().__init__(
            embedding_dim,
            num_classes,
            scale=scale,
            margin=margin,
            margin_warmup_epochs=margin_warmup_epochs,
            label_smoothing=label_smoothing,
            learn_scale=learn_scale,
        )
        self.t_alpha = _check_momentum(t_alpha)
        self.register_buffer("t", torch.tensor(0.0))

    def margin_logits(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B, C) cosines -> (B, C) scaled logits: penalised target, modulated hard negatives."""
        cos_y = cos.gather(1, labels[:, None]).squeeze(1)
        target = self.target_logit(cos_y)
        if self.training:
            with torch.no_grad():
                self.t.lerp_(cos_y.mean().to(self.t.dtype), self.t_alpha)
        hard = cos > target[:, None]
        modulated = torch.where(hard, cos * (self.t.to(cos.dtype) + cos), cos)
        return self.scale * self.with_target(modulated, labels, target)
