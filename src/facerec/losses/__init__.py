"""Every built-in loss; importing this package registers them in `facerec.registry.LOSSES` (no other effect)."""

from facerec.losses import (  # noqa: F401  (imported for their @LOSSES.register side effect)
    adaptive,
    center,
    lgm,
    lsoftmax,
    margin,
    pair,
    prototypical,
    proxy,
    quadruplet,
    softmax,
    structured,
    subcenter,
    uniformface,
)
from facerec.losses.base import SCORINGS, CombinedLoss, EmbeddingLoss, build_combined_loss, build_loss
from facerec.registry import LOSSES

__all__ = ["LOSSES", "SCORINGS", "CombinedLoss", "EmbeddingLoss", "build_combined_loss", "build_loss"]
