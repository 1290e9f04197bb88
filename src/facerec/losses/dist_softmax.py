"""Softmax cross-entropy over classes split across processes, and the autograd pieces it is made of.

Every rank holds (B, k_r) logits of the same B rows against its own k_r classes. The loss of row b is
log sum_r sum_j exp(z_rbj - m_b) - (z_b,y_b - m_b): the row maximum m_b (all_reduce MAX, a constant: the loss does
not depend on it), the sum of exponentials and the target logit (all_reduce SUM) are combined over ranks. Every
rank then holds the same loss value, so the backward of those sums is the identity: each rank's graph gives the
exact gradient for its own logits (Partial FC, losses/partial_fc.py; insightface's `DistCrossEntropy`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


class _SumOverRanks(torch.autograd.Function):
    """all_reduce SUM whose backward is the identity: the sum feeds a loss that every rank computes alike."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad


class ScaleGrad(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by `factor`."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.factor, None


class SumGradOverRanks(torch.autograd.Function):
    """Identity forward; the backward sums the gradient over ranks: a parameter all ranks share (the scale)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad


def distributed_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Softmax cross-entropy over classes split across ranks, the mean over the B rows (module notes).

    Args:
        logits: (B, k_r) this rank's logits of the global batch against its k_r >= 1 classes.
        target: (B,) column of each row's class among them, -1 where the class is on another rank.
        label_smoothing: as in `F.cross_entropy`, spread over all ranks' k_r classes.
    """
    with torch.no_grad():
        row_max = logits.amax(dim=1)
        dist.all_reduce(row_max, op=dist.ReduceOp.MAX)
    z = logits - row_max[:, None]
    log_sum = _SumOverRanks.apply(z.exp().sum(dim=1)).log()
    here = target >= 0
    z_target = torch.where(here, z.gather(1, target.clamp_min(0)[:, None]).squeeze(1), 0.0)
    nll = log_sum - _SumOverRanks.apply(z_target)
    if label_smoothing:
        count = torch.tensor(float(logits.shape[1]), device=logits.device)
        dist.all_reduce(count)
        smooth = log_sum - _SumOverRanks.apply(z.sum(dim=1)) / count
        nll = (1.0 - label_smoothing) * nll + label_smoothing * smooth
    return nll.mean()
