"""Losses, tier (b) registry-wide checks and the classifier-style losses' reference values (tier (a))."""

from __future__ import annotations

import math

import pytest
import torch

from facerec.losses import SCORINGS, build_combined_loss, build_loss
from facerec.registry import LOSSES
from loss_reference import approx
from loss_reference import ce as _ce
from loss_reference import unit as _unit

NAMES = LOSSES.names()


# ---------------------------------------------------------------- tier (b): every registered loss


@pytest.mark.parametrize("name", NAMES)
def test_every_loss_gives_finite_scalar_and_gradient(name, batch):
    x, y = batch
    loss_fn = build_loss(name, embedding_dim=8, num_classes=3)
    loss = loss_fn(x, y)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for pname, p in loss_fn.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", NAMES)
def test_every_loss_declares_its_needs_and_a_one_line_doc(name):
    cls = LOSSES.get(name)
    assert cls.scoring in SCORINGS
    assert build_loss(name, embedding_dim=8, num_classes=3).scoring in SCORINGS
    assert (
        isinstance(cls.needs_classes, bool) and isinstance(cls.has_logits, bool) and isinstance(cls.needs_pk, bool)
    )
    assert LOSSES.describe()[name].strip()
    if cls.has_logits:
        assert cls.needs_classes


@pytest.mark.parametrize("name", [n for n in NAMES if LOSSES.get(n).has_logits])
def test_logits_have_one_column_per_class(name, batch):
    x, _ = batch
    assert build_loss(name, embedding_dim=8, num_classes=5).logits(x).shape == (12, 5)


@pytest.mark.parametrize("name", NAMES)
def test_every_loss_decreases_under_optimisation(name):
    """30 Adam steps on free embeddings (and the loss's own parameters) of 3 identities x 4 must lower the loss."""
    torch.manual_seed(0)
    x = torch.randn(12, 8).requires_grad_()
    y = torch.arange(3).repeat_interleave(4)
    loss_fn = build_loss(name, embedding_dim=8, num_classes=3)
    opt = torch.optim.Adam([x, *loss_fn.parameters()], lr=0.05)
    history = []
    for _ in range(30):
        opt.zero_grad()
        loss = loss_fn(x, y)
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert history[-1] < 0.7 * history[0], history


@pytest.mark.parametrize("name", NAMES)
def test_every_loss_runs_in_fp32_under_autocast(name, batch):
    x, y = batch
    loss_fn = build_loss(name, embedding_dim=8, num_classes=3).eval()
    expected = loss_fn(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = loss_fn(x.bfloat16(), y)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0.05, atol=0.05)


def test_unknown_loss_and_bad_params_fail_loudly():
    with pytest.raises(ValueError, match="choose one of"):
        build_loss("arcfacee", embedding_dim=8, num_classes=3)
    with pytest.raises(ValueError, match="bad parameters"):
        build_loss("arcface", embedding_dim=8, num_classes=3, margn=0.3)
    with pytest.raises(ValueError, match="label_smoothing"):
        build_loss("cosface", embedding_dim=8, num_classes=3, label_smoothing=1.5)
    with pytest.raises(ValueError, match="miner"):
        build_loss("triplet", embedding_dim=8, num_classes=3, miner="hardest")


def test_softmax_plus_center_combined(batch):
    x, y = batch
    combo = build_combined_loss([("softmax", 1.0, {}), ("center", 0.01, {})], embedding_dim=8, num_classes=3)
    soft, center = combo.terms
    expected = soft(x, y) + 0.01 * center.eval()(x, y)
    combo.eval()
    torch.testing.assert_close(combo(x, y), expected)
    assert combo.has_logits and combo.scoring == "cosine" and not combo.needs_pk


# ---------------------------------------------------------------- softmax and the normalised-softmax family


def test_softmax_matches_hand_cross_entropy():
    loss_fn = build_loss("softmax", embedding_dim=2, num_classes=3, label_smoothing=0.1)
    with torch.no_grad():
        loss_fn.classifier.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 1.0]]))
        loss_fn.classifier.bias.copy_(torch.tensor([0.5, 0.0, -0.5]))
    x, y = torch.tensor([[0.3, -0.2]]), torch.tensor([2])
    z = [0.3 + 0.5, -0.4, -0.3 - 0.2 - 0.5]
    log_p = [-_ce(z, j) for j in range(3)]
    expected = 0.9 * -log_p[2] + 0.1 * -sum(log_p) / 3
    assert loss_fn(x, y).item() == approx(expected)


def _two_class_head(name: str, **params):
    loss_fn = build_loss(name, embedding_dim=2, num_classes=2, scale=10.0, **params)
    with torch.no_grad():
        loss_fn.weight.copy_(torch.eye(2))  # class centres on the x and y axes
    return loss_fn


@pytest.mark.parametrize(
    ("name", "margin", "theta", "target"),
    [
        ("normface", None, 0.3, lambda t: math.cos(t)),
        ("cosface", 0.35, 0.3, lambda t: math.cos(t) - 0.35),
        ("arcface", 0.5, 0.3, lambda t: math.cos(t + 0.5)),
        ("arcface", 0.5, 2.9, lambda t: math.cos(t) - 0.5 * math.sin(0.5)),  # past pi - m: linear fallback
        ("sphereface", 1.5, 0.3, lambda t: math.cos(1.5 * t)),
        ("sphereface", 1.5, 2.5, lambda t: -math.cos(1.5 * t) - 2.0),  # k = 1 branch of psi
    ],
)
def test_margin_losses_match_formula_on_2d_example(name, margin, theta, target):
    params = {} if margin is None else {"margin": margin}
    loss_fn = _two_class_head(name, **params)
    x = torch.tensor([_unit(theta)]) * 3.0  # the norm must not matter
    expected = _ce([10.0 * target(theta), 10.0 * math.sin(theta)], 0)
    assert loss_fn(x, torch.tensor([0])).item() == approx(expected)
    assert loss_fn.logits(x).tolist()[0] == approx([10 * math.cos(theta), 10 * math.sin(theta)])


def test_arcface_easy_margin_leaves_obtuse_angles_alone():
    loss_fn = _two_class_head("arcface", margin=0.5, easy_margin=True)
    for theta, target in [(0.3, math.cos(0.8)), (2.0, math.cos(2.0))]:
        x = torch.tensor([_unit(theta)])
        expected = _ce([10 * target, 10 * math.sin(theta)], 0)
        assert loss_fn(x, torch.tensor([0])).item() == approx(expected)


def test_margin_label_smoothing_matches_hand_formula():
    loss_fn = _two_class_head("cosface", margin=0.2, label_smoothing=0.2)
    theta = 0.4
    z = [10 * (math.cos(theta) - 0.2), 10 * math.sin(theta)]
    expected = 0.8 * _ce(z, 0) + 0.2 * (_ce(z, 0) + _ce(z, 1)) / 2
    assert loss_fn(torch.tensor([_unit(theta)]), torch.tensor([0])).item() == approx(expected)


@pytest.mark.parametrize("name", ["sphereface", "cosface", "arcface", "uniformface", "maskproxy"])
def test_margin_makes_target_logit_smaller_and_stays_monotone(name):
    params = {"margin": 0.2} if name == "maskproxy" else {}
    cos = torch.linspace(-0.99, 0.99, 50)
    penalised = build_loss(name, embedding_dim=4, num_classes=5, **params).target_logit(cos)
    assert (penalised <= cos + 1e-6).all() and (penalised.diff() > 0).all()
    assert (penalised < cos - 1e-3).all()  # a real penalty at every angle


@pytest.mark.parametrize(("name", "full", "start"), [("arcface", 0.4, 0.0), ("sphereface", 2.0, 1.0)])
def test_margin_warmup_ramps_linearly_from_no_margin(name, full, start):
    loss_fn = build_loss(name, embedding_dim=2, num_classes=2, margin=full, margin_warmup_epochs=4)
    assert loss_fn.current_margin == pytest.approx(start)  # before any epoch hook: epoch 0
    seen = []
    for epoch in range(6):
        loss_fn.on_epoch_start(epoch)
        seen.append(loss_fn.current_margin)
    assert seen == pytest.approx([start + (full - start) * min(1, e / 4) for e in range(6)])


def test_margin_at_warmup_start_equals_normface():
    arc = _two_class_head("arcface", margin=0.5, margin_warmup_epochs=3)
    norm = _two_class_head("normface")
    x, y = torch.tensor([_unit(0.7), _unit(1.2)]), torch.tensor([0, 1])
    arc.on_epoch_start(0)
    torch.testing.assert_close(arc(x, y), norm(x, y))
    arc.on_epoch_start(3)
    assert arc(x, y) > norm(x, y) + 0.1
