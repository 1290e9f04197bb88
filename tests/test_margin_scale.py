"""The margin heads' scale options: AdaCos's fixed s = sqrt(2) ln(C - 1) (`scale="auto"`) and a learned s."""

from __future__ import annotations

import math

import pytest
import torch

from facerec.losses import build_loss
from facerec.losses.margin import adacos_scale
from loss_reference import approx
from loss_reference import ce as _ce
from loss_reference import unit as _unit

SCALED_HEADS = ["normface", "cosface", "arcface", "sphereface", "adaface", "subcenter_arcface", "curricularface"]


def test_adacos_scale_for_a_given_number_of_classes():
    assert adacos_scale(11) == pytest.approx(3.25634, abs=1e-5)  # sqrt(2) ln 10
    assert adacos_scale(735) == pytest.approx(math.sqrt(2) * math.log(734))
    with pytest.raises(ValueError, match="at least 3 classes"):
        build_loss("arcface", embedding_dim=4, num_classes=2, scale="auto")
    with pytest.raises(ValueError, match="number or 'auto'"):
        build_loss("cosface", embedding_dim=4, num_classes=5, scale="large")


@pytest.mark.parametrize("name", SCALED_HEADS)
def test_every_margin_head_takes_auto_and_learned_scales(name, batch):
    x, y = batch
    auto = build_loss(name, embedding_dim=8, num_classes=6, scale="auto")
    assert auto.scale == pytest.approx(math.sqrt(2) * math.log(5))
    learned = build_loss(name, embedding_dim=8, num_classes=6, scale="auto", learn_scale=True)
    assert isinstance(learned.scale, torch.nn.Parameter) and "scale" in learned.state_dict()
    assert learned.load_state_dict(auto.state_dict(), strict=False).missing_keys == ["scale"]
    torch.testing.assert_close(learned.logits(x), auto.logits(x))  # learning starts from AdaCos's value
    learned(x, y).backward()
    assert learned.scale.grad is not None and learned.scale.grad.abs() > 0


def test_learned_scale_gradient_matches_hand_formula():
    loss_fn = build_loss("cosface", embedding_dim=2, num_classes=2, scale=10.0, margin=0.2, learn_scale=True)
    with torch.no_grad():
        loss_fn.weight.copy_(torch.eye(2))
    theta = 0.4
    loss_fn(torch.tensor([_unit(theta)]), torch.tensor([0])).backward()
    z = [math.cos(theta) - 0.2, math.sin(theta)]  # dL/ds = sum_j (p_j - y_j) z_j for logits s * z
    p = [math.exp(-_ce([10 * v for v in z], j)) for j in range(2)]
    assert loss_fn.scale.grad.item() == approx((p[0] - 1) * z[0] + p[1] * z[1])
