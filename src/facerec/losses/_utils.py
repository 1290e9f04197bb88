"""Small numerics shared by the loss modules: fp32 regions, distances, keeping an empty loss in the graph."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

EPS = 1e-7  # keeps acos away from +-1 and square roots away from 0, where their gradients are infinite


@contextlib.contextmanager
def fp32(device: torch.device) -> Iterator[None]:
    """Disable autocast inside: margin maths and exponentials run in fp32 even under AMP (STYLE.md #12)."""
    with torch.autocast(device_type=device.type, enabled=False):
        yield


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """fp16 / bf16 / fp32 -> fp32; float64 stays float64 (so that `torch.autograd.gradcheck` can check a head)."""
    return x if x.dtype == torch.float64 else x.float()


def pairwise_distance(x: torch.Tensor, normalize: bool) -> torch.Tensor:
    """(B, D) -> (B, B) Euclidean distances, of the L2-normalised rows when `normalize`.

    Computed from the Gram matrix in fp32 with a clamp, so the gradient at the zero diagonal is finite (not NaN).
    """
    x = x.float()
    if normalize:
        x = F.normalize(x, dim=1)
    sq = x.pow(2).sum(1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * x @ x.t()
    return d2.clamp_min(1e-12).sqrt() * (1.0 - torch.eye(len(x), device=x.device))


def attached_zero(embeddings: torch.Tensor) -> torch.Tensor:
    """A zero scalar that is still connected to `embeddings`, for batches with nothing to learn from."""
    return embeddings.sum() * 0.0


def check_positive(name: str, value: float, allow_zero: bool = False) -> None:
    """Fail loudly on a bad hyper-parameter (STYLE.md principle 11)."""
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value}")
