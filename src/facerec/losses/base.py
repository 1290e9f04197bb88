"""The one contract every loss follows, and the factory that builds losses (alone or combined) by name."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from facerec.metrics.scoring import SCORING_NAMES, Scoring
from facerec.registry import LOSSES

SCORINGS = SCORING_NAMES  # a loss's `scoring` is one of these names (checked by `Scoring.of`, metrics/scoring.py)


class EmbeddingLoss(nn.Module):
    """Base class: `forward(embeddings (B, D), labels (B,)) -> scalar`.

    Class attributes declare what the loss needs, so the trainer never special-cases names:
      needs_classes: the factory passes `embedding_dim` and `num_classes`; the loss owns parameters
                     (class centres, a classifier) that the optimizer must update.
      has_logits:    `logits(embeddings) -> (B, C)` gives closed-set class scores.
      needs_pk:      the loss is meaningless without positives in the batch: the trainer uses a P x K sampler.
      scoring:       how embeddings trained with this loss should be compared ("cosine" or "euclidean").
    """

    needs_classes: ClassVar[bool] = False
    has_logits: ClassVar[bool] = False
    needs_pk: ClassVar[bool] = False
    scoring: ClassVar[str] = "cosine"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A misspelt `scoring` fails where the loss is defined, not at the first validation."""
        super().__init_subclass__(**kwargs)
        declared = cls.__dict__.get("scoring")
        if isinstance(declared, str):
            Scoring.of(declared, key=f"{cls.__name__}.scoring")

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Closed-set class scores (B, C) without any training margin; only when `has_logits`."""
        raise NotImplementedError(f"{type(self).__name__} has no classifier; use nearest class prototypes")

    def on_epoch_start(self, epoch: int) -> None:
        """Hook for schedules (margin warm-up, ...); `epoch` counts from 0."""


class CombinedLoss(EmbeddingLoss):
    """Weighted sum of losses, e.g. softmax + 0.01 * center. The first term decides logits and scoring."""

    def __init__(self, terms: list[tuple[float, EmbeddingLoss]]) -> None:
        super().__init__()
        if not terms:
            raise ValueError("CombinedLoss needs at least one term")
        self.weights = [float(w) for w, _ in terms]
        self.terms = nn.ModuleList([loss for _, loss in terms])
        self.last_parts: dict[str, torch.Tensor] = {}

    @property
    def primary(self) -> EmbeddingLoss:
        return self.terms[0]

    @property
    def has_logits(self) -> bool:  # type: ignore[override]
        return any(t.has_logits for t in self.terms)

    @property
    def needs_pk(self) -> bool:  # type: ignore[override]
        return any(t.needs_pk for t in self.terms)

    @property
    def scoring(self) -> str:  # type: ignore[override]
        return self.primary.scoring

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        total = embeddings.new_zeros(())
        for w, term in zip(self.weights, self.terms, strict=True):
            total = total + w * term(embeddings, labels)
        return total

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        for term in self.terms:
            if term.has_logits:
                return term.logits(embeddings)
        return super().logits(embeddings)

    def on_epoch_start(self, epoch: int) -> None:
        for term in self.terms:
            term.on_epoch_start(epoch)


def build_loss(name: str, *, embedding_dim: int, num_classes: int, **params: Any) -> EmbeddingLoss:
    """Build one registered loss, passing the class count only to losses that need it."""
    cls = LOSSES.get(name)
    if getattr(cls, "needs_classes", False):
        params.update(embedding_dim=embedding_dim, num_classes=num_classes)
    try:
        return cls(**params)
    except TypeError as err:
        raise ValueError(f"bad parameters for loss {name!r}: {err}") from None


def build_combined_loss(
    terms: list[tuple[str, float, dict[str, Any]]], *, embedding_dim: int, num_classes: int
) -> CombinedLoss:
    """Build `sum(weight * loss)` from (name, weight, params) triples; the first term is the primary one."""
    built = [
        (w, build_loss(n, embedding_dim=embedding_dim, num_classes=num_classes, **dict(p))) for n, w, p in terms
    ]
    return CombinedLoss(built)
