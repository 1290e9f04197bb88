"""Hand-computed reference helpers shared by the loss tests, independent of facerec: plain floats, and float64
torch written one row at a time from the papers' formulas (so autograd through them gives reference gradients)."""

from __future__ import annotations

import math

import pytest
import torch


def approx(value):
    """fp32 results against float64 hand values."""
    return pytest.approx(value, rel=1e-4, abs=1e-6)


def ce(logits: list[float], target: int) -> float:
    """Cross-entropy of one row, by hand."""
    return -logits[target] + math.log(sum(math.exp(z) for z in logits))


def unit(theta: float) -> list[float]:
    return [math.cos(theta), math.sin(theta)]


def cos_matrix(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (x / x.norm(dim=1, keepdim=True)) @ (w / w.norm(dim=1, keepdim=True)).t()


def _ce_row(logits: list[torch.Tensor], target: int) -> torch.Tensor:
    z = torch.stack(logits)
    return torch.logsumexp(z, 0) - z[target]


def _arc_target(c: torch.Tensor, m: float) -> torch.Tensor:
    theta = torch.acos(c)
    return torch.cos(theta + m) if float(theta.detach()) <= math.pi - m else c - m * math.sin(m)


def adaface_reference(x, w, y, s, m, h, mean0, std0, alpha):
    """Kim et al. 2022, eq. 9-11, with the released code's norm clip [1e-3, 100] and std + 1e-3."""
    norms = [min(max(float(v), 1e-3), 100.0) for v in x.detach().norm(dim=1)]
    mean = (1 - alpha) * mean0 + alpha * sum(norms) / len(norms)
    var = sum((n - sum(norms) / len(norms)) ** 2 for n in norms) / (len(norms) - 1)
    std = (1 - alpha) * std0 + alpha * math.sqrt(var)
    cos, total = cos_matrix(x, w), 0.0
    for i, yi in enumerate(y.tolist()):
        nh = min(1.0, max(-1.0, (norms[i] - mean) / (std + 1e-3) * h))
        theta = torch.acos(cos[i, yi])
        target = torch.cos((theta - m * nh).clamp(0, math.pi)) - (m * nh + m)
        row = [s * (target if j == yi else cos[i, j]) for j in range(w.shape[0])]
        total = total + _ce_row(row, yi)
    return total / len(y), mean, std


def curricular_reference(x, w, y, s, m, t0, alpha):
    """Huang et al. 2020, eq. 7-9: ArcFace target; negatives above it become cos (t + cos); t an EMA first."""
    cos = cos_matrix(x, w)
    t = (1 - alpha) * t0 + alpha * float(sum(cos[i, yi].detach() for i, yi in enumerate(y.tolist()))) / len(y)
    total = 0.0
    for i, yi in enumerate(y.tolist()):
        target = _arc_target(cos[i, yi], m)
        row = []
        for j in range(w.shape[0]):
            c = cos[i, j]
            row.append(
                s * (target if j == yi else c * (t + c) if float(c.detach()) > float(target.detach()) else c)
            )
        total = total + _ce_row(row, yi)
    return total / len(y), t


def subcenter_reference(x, w, y, s, m, k):
    """Deng et al. 2020: cos of class j = max over its K sub-centres (rows j*K .. j*K+K-1), then ArcFace."""
    cos, total = cos_matrix(x, w), 0.0
    for i, yi in enumerate(y.tolist()):
        per_class = [torch.max(cos[i, j * k : (j + 1) * k]) for j in range(w.shape[0] // k)]
        row = [s * (_arc_target(c, m) if j == yi else c) for j, c in enumerate(per_class)]
        total = total + _ce_row(row, yi)
    return total / len(y)
