"""The distillation losses, and `DistillLoss`, which adds them to the student's own loss in the training step.

Embedding distillation (FitNets-style feature matching, on the unit sphere): 1 - cos(P s, t), where s is the
student's L2-normalised embedding, P a learned linear map when the widths differ (identity otherwise) and t the
teacher's target, its normalised embedding with the mean training embedding subtracted, normalised again.
Relational distillation (RKD, Park et al. CVPR 2019, arXiv:1904.05068, with cosine as the relation): the MSE
between the batch's pairwise cosine matrices of student and teacher. Both compare directions only, so the student
keeps its own scale.

They are not in the LOSSES registry: a registered loss sees `(embeddings, labels)` alone, and these need the
teacher's targets. `DistillLoss` keeps the targets of every training image and receives each batch's image
indices where a loss receives labels (distillation/run.py trains with index labels), looks up the targets and the
real labels (-1: unlabelled), and adds the student's own loss on the labelled images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from facerec.losses.base import EmbeddingLoss


def embedding_distillation(student: torch.Tensor, targets: torch.Tensor, projection: nn.Module) -> torch.Tensor:
    """Mean of 1 - cos(projection(normalise(student)), targets): (B, Ds), (B, Dt) unit rows -> ()."""
    projected = projection(F.normalize(student, dim=1))
    return (1 - F.cosine_similarity(projected, targets, dim=1)).mean()


def relational_distillation(student: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """MSE between the (B, B) cosine matrices of the student's embeddings and the teacher's unit targets."""
    s = F.normalize(student, dim=1)
    return F.mse_loss(s @ s.T, targets @ targets.T)


def centred_targets(teacher: torch.Tensor, mean: torch.Tensor | None) -> torch.Tensor:
    """Raw teacher embeddings (B, Dt) -> unit targets: normalise(normalise(t) - mean), or normalise(t) without a
    mean."""
    t = F.normalize(teacher.float(), dim=1)
    return t if mean is None else F.normalize(t - mean, dim=1)


class DistillLoss(EmbeddingLoss):
    """`forward(embeddings (B, Ds), index (B,)) -> scalar`: w_e * embedding + w_r * relational distillation
    against the targets of images `index`, + w_l * the student's own loss on those of them with a label.

    `targets` (N, Dt) are the cached teacher targets (unit rows), or None for an online teacher: the training
    step's network then returns [student (Ds) | raw teacher embedding of the same augmented batch (Dt)] side by
    side, and the targets are made here with `mean` (distillation/online.py). `labels` (N,) are the images' labels,
    -1 where an image has none. `has_logits` is False: the step's "labels" are image indices, so the epoch's
    training accuracy cannot be counted (validation uses `label_loss` directly).
    """

    def __init__(
        self,
        targets: torch.Tensor | None,
        labels: torch.Tensor,
        student_dim: int,
        teacher_dim: int,
        label_loss: EmbeddingLoss | None = None,
        weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
        mean: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.register_buffer("targets", targets, persistent=False)  # the cache holds them: not in checkpoints
        self.register_buffer("labels", labels.long(), persistent=False)
        self.register_buffer("mean", mean, persistent=False)
        self.student_dim, self.teacher_dim = student_dim, teacher_dim
        self.projection = (
            nn.Linear(student_dim, teacher_dim, bias=False) if student_dim != teacher_dim else nn.Identity()
        )
        self.w_embedding, self.w_relational, self.w_labels = (float(w) for w in weights)
        self.label_loss = label_loss if label_loss is not None and self.w_labels > 0 else None
        self.all_labelled = bool((labels >= 0).all())

    @property
    def needs_pk(self) -> bool:  # type: ignore[override]
        return self.label_loss is not None and self.label_loss.needs_pk

    @property
    def scoring(self) -> str:  # type: ignore[override]
        return self.label_loss.scoring if self.label_loss is not None else "cosine"

    def split(self, embeddings: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(student embeddings (B, Ds), unit teacher targets (B, Dt)) of a batch."""
        if self.targets is not None:
            return embeddings, self.targets[index]
        if embeddings.shape[1] != self.student_dim + self.teacher_dim:
            raise ValueError(
                f"an online teacher's step gives {self.student_dim}+{self.teacher_dim} columns, got "
                f"{embeddings.shape[1]}"
            )
        student, teacher = embeddings.split([self.student_dim, self.teacher_dim], dim=1)
        return student, centred_targets(teacher.detach(), self.mean)

    def forward(self, embeddings: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        student, targets = self.split(embeddings, index)
        total = student.new_zeros(())
        if self.w_embedding:
            total = total + self.w_embedding * embedding_distillation(student, targets, self.projection)
        if self.w_relational:
            total = total + self.w_relational * relational_distillation(student, targets)
        if self.label_loss is not None:
            labels = self.labels[index]
            if not self.all_labelled:  # a batch mixing labelled and unlabelled images (one host sync)
                keep = labels >= 0
                student, labels = student[keep], labels[keep]
            if labels.numel():
                total = total + self.w_labels * self.label_loss(student, labels)
        return total

    def on_epoch_start(self, epoch: int) -> None:
        if self.label_loss is not None:
            self.label_loss.on_epoch_start(epoch)
