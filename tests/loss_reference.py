"""Hand-computed reference helpers shared by the loss tests (plain floats, independent of facerec)."""

from __future__ import annotations

import math

import pytest


def approx(value):
    """fp32 results against float64 hand values."""
    return pytest.approx(value, rel=1e-4, abs=1e-6)


def ce(logits: list[float], target: int) -> float:
    """Cross-entropy of one row, by hand."""
    return -logits[target] + math.log(sum(math.exp(z) for z in logits))


def unit(theta: float) -> list[float]:
    return [math.cos(theta), math.sin(theta)]
