"""The online teacher (`distill.teacher_view=augmented`): the teacher embeds the student's own augmented batch.

With the cached (clean) view, the teacher saw each image once, flip-averaged, and the student learns to map every
augmentation of it to that one target. With the augmented view the target follows the augmentation: the training
step's network becomes `OnlineTeacher`, which returns the student's embeddings and the frozen teacher's embeddings
of the same augmented batch side by side, and `DistillLoss` takes them apart. It costs a teacher forward pass per
step, so it is offered for facerec PyTorch teachers only (not dlib, whose 128-d descriptor runs on the CPU at
tens of images per second, nor ONNX files).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class OnlineTeacher(nn.Module):
    """(B, 3, S, S) in [-1, 1] -> (B, Ds + Dt): [student(x) | teacher(x at the teacher's input size)]; the teacher
    stays frozen and in eval mode whatever `train()` is called with."""

    def __init__(self, student: nn.Module, teacher: nn.Module, teacher_size: int) -> None:
        super().__init__()
        self.student = student
        self.teacher = teacher.eval().requires_grad_(False)
        self.teacher_size = teacher_size

    def train(self, mode: bool = True) -> OnlineTeacher:
        self.training = mode
        self.student.train(mode)
        self.teacher.eval()  # BatchNorm statistics and dropout of the teacher never change
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        student = self.student(x)
        with torch.no_grad():
            if x.shape[-1] != self.teacher_size:
                size = (self.teacher_size, self.teacher_size)
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
            teacher = self.teacher(x)
        return torch.cat([student, teacher.to(student.dtype)], dim=1)
