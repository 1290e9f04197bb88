"""The distillation losses against values worked out by hand, and DistillLoss's bookkeeping (targets by image
index, labels only where an image has one, the online teacher's columns)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from facerec.distillation.losses import (
    DistillLoss,
    centred_targets,
    embedding_distillation,
    relational_distillation,
)
from facerec.distillation.online import OnlineTeacher
from facerec.losses.base import build_loss


def test_embedding_distillation_is_one_minus_the_cosine_of_the_projected_student() -> None:
    student = torch.tensor([[3.0, 0.0], [0.0, 2.0]])
    targets = torch.tensor([[math.cos(0.5), math.sin(0.5)], [1.0, 0.0]])
    expected = ((1 - math.cos(0.5)) + (1 - 0.0)) / 2  # angles 0.5 and pi/2
    assert embedding_distillation(student, targets, nn.Identity()).item() == pytest.approx(expected, rel=1e-6)
    swap = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        swap.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))  # (x, y) -> (y, x)
    assert embedding_distillation(torch.tensor([[0.0, 5.0]]), torch.tensor([[1.0, 0.0]]), swap).item() == 0.0


def test_relational_distillation_compares_cosine_matrices_not_scales() -> None:
    t = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]), dim=1)
    assert relational_distillation(7 * t, t).item() == pytest.approx(0.0, abs=1e-7)  # any scale, same directions
    s = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # the middle point moved onto the first
    c = 1 / math.sqrt(2)
    # cosine matrices differ in (0,1),(1,0): 1 vs c; (1,2),(2,1): 0 vs c
    expected = (2 * (1 - c) ** 2 + 2 * c**2) / 9
    assert relational_distillation(s, t).item() == pytest.approx(expected, rel=1e-6)


def test_centred_targets_remove_the_teachers_common_component() -> None:
    raw = torch.tensor([[10.0, 1.0], [10.0, -1.0]])  # nearly the same direction: cosine 0.98
    mean = F.normalize(raw, dim=1).mean(0)
    t = centred_targets(raw, mean)
    assert F.cosine_similarity(t[:1], t[1:]).item() == pytest.approx(-1.0, abs=1e-6)
    assert torch.allclose(t.norm(dim=1), torch.ones(2))
    assert torch.allclose(centred_targets(raw, None), F.normalize(raw, dim=1))


def test_distill_loss_looks_up_targets_by_index_and_labels_only_where_known() -> None:
    g = torch.Generator().manual_seed(0)
    targets = F.normalize(torch.randn(6, 4, generator=g), dim=1)
    labels = torch.tensor([0, 1, -1, 0, -1, 1])
    head = build_loss("cosface", embedding_dim=3, num_classes=2)
    loss = DistillLoss(targets, labels, 3, 4, head, weights=(1.0, 2.0, 0.5))
    emb, index = torch.randn(4, 3, generator=g), torch.tensor([5, 2, 0, 4])
    keep = torch.tensor([True, False, True, False])
    expected = (
        embedding_distillation(emb, targets[index], loss.projection)
        + 2.0 * relational_distillation(emb, targets[index])
        + 0.5 * head(emb[keep], labels[index][keep])
    )
    torch.testing.assert_close(loss(emb, index), expected)
    assert not loss.has_logits and loss.scoring == head.scoring
    unlabelled = torch.tensor([2, 4])  # no labelled image: the teacher's losses alone
    alone = embedding_distillation(emb[:2], targets[unlabelled], loss.projection) + 2.0 * relational_distillation(
        emb[:2], targets[unlabelled]
    )
    torch.testing.assert_close(loss(emb[:2], unlabelled), alone)
    assert "targets" not in loss.state_dict() and "projection.weight" in loss.state_dict()


def test_online_teacher_appends_a_frozen_teachers_embeddings() -> None:
    student, teacher = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5)), nn.Sequential(nn.Flatten())
    teacher.append(nn.Linear(3 * 2 * 2, 2)).append(nn.Dropout(0.9))
    net = OnlineTeacher(student, teacher, teacher_size=2).train()
    x = torch.randn(3, 3, 4, 4)
    out = net(x)
    assert out.shape == (3, 7) and net.student.training and not net.teacher.training
    small = F.interpolate(x, size=(2, 2), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(out[:, 5:], teacher(small))  # eval mode: no dropout
    out.sum().backward()
    assert all(p.grad is None for p in teacher.parameters())
    mean = torch.zeros(2)
    loss = DistillLoss(None, torch.full((3,), -1), 5, 2, None, (1.0, 0.0, 0.0), mean)
    expected = embedding_distillation(out[:, :5], F.normalize(out[:, 5:], dim=1), loss.projection)
    torch.testing.assert_close(loss(out, torch.arange(3)), expected)
