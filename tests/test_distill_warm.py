"""A distillation restart's projection (distillation/warm.py): the checkpoint's own for the same teacher, else the
least-squares map from the restarted student's embeddings to the teacher's targets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from facerec.distillation.losses import DistillLoss, embedding_distillation
from facerec.distillation.warm import warm_projection
from facerec.engine.checkpoint import FORMAT
from facerec.engine.evaluate import embed  # the path warm.py embeds with

N, SIDE, DS, DT = 64, 4, 8, 5


class Flat(nn.Module):
    """A fixed linear student on the flattened image, as the engine's `embed` feeds it (N, 3, S, S)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3 * SIDE * SIDE, DS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


def _setup(seed: int = 0) -> tuple[Flat, torch.Tensor, torch.Tensor, torch.Tensor, DistillLoss]:
    """(student, images, the student's unit embeddings of them, a known map W (DS, DT), a loss with a fresh
    projection); the teacher's "targets" are exactly unit_student @ W."""
    torch.manual_seed(seed)
    model = Flat().eval()
    images = torch.randint(0, 256, (N, SIDE, SIDE, 3), dtype=torch.uint8)
    unit = F.normalize(embed(model, images, flip=False), dim=1)
    known = torch.randn(DS, DT)
    loss = DistillLoss(unit @ known, torch.zeros(N), DS, DT)
    return model, images, unit, known, loss


def test_without_a_saved_projection_it_is_the_least_squares_map(tmp_path: Path) -> None:
    model, images, unit, known, loss = _setup()
    exported = tmp_path / "model.pt"  # an exported model file: no "distill" entry
    torch.save({"format": FORMAT, "model": model.state_dict()}, exported)
    targets = unit @ known
    unit_targets = F.normalize(targets, dim=1)
    with torch.no_grad():
        fresh = float(embedding_distillation(unit, unit_targets, loss.projection))
    lines: list[str] = []
    warm_projection(loss, str(exported), "teacher-a", model, images, targets, lines.append, sample=N)
    torch.testing.assert_close(loss.projection.weight, known.T, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        fitted = float(embedding_distillation(unit, unit_targets, loss.projection))
    assert fitted < 1e-6 < fresh
    assert (
        "least squares on 64 training images" in lines[0]
        and "mean cosine to the teacher's targets 1.000" in lines[0]
    )


def test_a_distillation_checkpoint_of_the_same_teacher_gives_its_own(tmp_path: Path) -> None:
    model, images, unit, known, loss = _setup()
    own = torch.randn(DT, DS)
    checkpoint = tmp_path / "best.pt"
    distill = {"fingerprint": "teacher-a", "state": {"projection.weight": own}}
    torch.save({"format": FORMAT, "model": model.state_dict(), "distill": distill}, checkpoint)
    lines: list[str] = []
    warm_projection(loss, str(checkpoint), "teacher-a", model, images, unit @ known, lines.append)
    torch.testing.assert_close(loss.projection.weight, own, rtol=0, atol=0)
    assert "from " + str(checkpoint) in lines[0]
    # another teacher's projection maps to another space: fitted instead
    warm_projection(loss, str(checkpoint), "teacher-b", model, images, unit @ known, lines.append)
    torch.testing.assert_close(loss.projection.weight, known.T, rtol=1e-4, atol=1e-4)


def test_equal_widths_have_no_projection_to_start() -> None:
    loss = DistillLoss(torch.zeros(2, DS), torch.zeros(2), DS, DS)
    lines: list[str] = []
    warm_projection(
        loss, "/nonexistent.pt", "t", Flat(), torch.zeros(2, SIDE, SIDE, 3), torch.zeros(2, DS), lines.append
    )
    assert isinstance(loss.projection, nn.Identity) and lines == []


@pytest.mark.parametrize("sample", [16, 40])
def test_the_fit_uses_a_seeded_sample_of_the_training_images(tmp_path: Path, sample: int) -> None:
    model, images, unit, known, loss = _setup()
    exported = tmp_path / "model.pt"
    torch.save({"format": FORMAT, "model": model.state_dict()}, exported)
    noisy = unit @ known + 0.3 * torch.randn(N, DT)  # not exactly linear: the fit depends on the sample
    weights = []
    for _ in range(2):
        warm_projection(loss, str(exported), "t", model, images, noisy, lambda _: None, sample=sample, seed=3)
        weights.append(loss.projection.weight.detach().clone())
    torch.testing.assert_close(weights[0], weights[1], rtol=0, atol=0)
    pick = torch.randperm(N, generator=torch.Generator().manual_seed(3))[:sample]
    reference = torch.linalg.lstsq(unit[pick].double(), noisy[pick].double()).solution.T.float()
    torch.testing.assert_close(weights[0], reference, rtol=1e-4, atol=1e-4)
