"""The one scoring path: embeddings (with flip TTA) -> class scores or pair scores -> metrics.

Validation during training, `facerec evaluate`, `facerec verify`, the Python API and both submission files all
call these functions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from facerec.data.augment import to_input
from facerec.losses.base import EmbeddingLoss
from facerec.metrics.classification import topk_accuracy
from facerec.metrics.scoring import Scoring
from facerec.metrics.verification import verification_report


@torch.no_grad()
def embed(
    model: nn.Module,
    images: torch.Tensor,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    flip: bool = True,
    channels_last: bool = False,
) -> torch.Tensor:
    """uint8 images (N, S, S, 3) -> float embeddings (N, D) on the CPU.

    With `flip`, the embedding of the image and of its mirror image are summed (OpenSphere / ArcFace practice),
    which makes the embedding invariant to left-right flips.
    """
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, images.shape[0], batch_size):
        x = to_input(images[start : start + batch_size].to(device, non_blocking=True), channels_last)
        e = model(x).float()
        if flip:
            e = e + model(x.flip(3)).float()
        out.append(e.cpu())
    model.train(was_training)
    if not out:
        return torch.zeros(0, getattr(model, "embedding_dim", 0))
    return torch.cat(out)


@torch.no_grad()
def class_scores(
    embeddings: torch.Tensor, loss_fn: EmbeddingLoss | None, prototypes: torch.Tensor | None
) -> torch.Tensor:
    """(N, D) embeddings -> (N, C) closed-set scores: the loss's classifier if it has one, else cosine similarity
    to per-class prototypes (mean normalised training embeddings)."""
    if loss_fn is not None and loss_fn.has_logits:
        device = next(loss_fn.parameters()).device
        return loss_fn.logits(embeddings.to(device)).float().cpu()
    if prototypes is None:
        raise ValueError("this loss has no classifier; class prototypes are needed for closed-set prediction")
    return F.normalize(embeddings, dim=1) @ F.normalize(prototypes, dim=1).T


def class_prototypes(embeddings: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean of the L2-normalised embeddings of each class: (N, D), (N,) -> (C, D)."""
    e = F.normalize(embeddings.float(), dim=1)
    sums = torch.zeros(num_classes, e.shape[1]).index_add_(0, labels, e)
    counts = torch.bincount(labels, minlength=num_classes).clamp(min=1).unsqueeze(1)
    return sums / counts


def evaluate_closed_set(scores: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Top-1 / top-5 accuracy of (N, C) scores."""
    acc = topk_accuracy(scores, labels, ks=(1, 5))
    return {"acc": acc[1], "top5": acc[5]}


def score_pairs(
    embeddings: torch.Tensor, idx_a: torch.Tensor, idx_b: torch.Tensor, metric: str | Scoring = "cosine"
) -> torch.Tensor:
    """Scores of pairs given as indices into one embedding matrix (each unique image embedded once):
    `Scoring.of(metric).indexed_pairs` (metrics/scoring.py)."""
    return Scoring.of(metric).indexed_pairs(embeddings, idx_a, idx_b)


def evaluate_pairs(scores: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """ROC AUC, EER, TAR@FAR and best-threshold accuracy of labelled pair scores."""
    return verification_report(scores.numpy(), labels.numpy())
