"""Losses with their own parameters or schedules: center, L-Softmax, L-GM, UniformFace, and the proxy losses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from facerec.losses import build_loss
from loss_reference import approx
from loss_reference import ce as _ce
from loss_reference import unit as _unit

# ---------------------------------------------------------------- center, L-Softmax, L-GM, UniformFace


def test_center_loss_value_and_centre_update_match_hand_loop():
    loss_fn = build_loss("center", embedding_dim=2, num_classes=3, alpha=0.5)
    c0 = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, -1.0]])
    loss_fn.centers.copy_(c0)
    x = torch.tensor([[1.0, 0.0], [0.0, 3.0], [2.0, 1.0], [0.5, 0.5]])
    y = torch.tensor([0, 1, 1, 0])
    expected = sum(0.5 * float(((x[i] - c0[y[i]]) ** 2).sum()) for i in range(4)) / 4
    assert loss_fn(x, y).item() == approx(expected)
    for j in range(3):
        members = [i for i in range(4) if y[i] == j]
        delta = sum((c0[j] - x[i] for i in members), torch.zeros(2)) / (1 + len(members))
        torch.testing.assert_close(loss_fn.centers[j], c0[j] - 0.5 * delta)
    frozen = loss_fn.centers.clone()
    loss_fn.eval()(x, y)
    torch.testing.assert_close(loss_fn.centers, frozen)  # no update outside training


def test_lsoftmax_matches_hand_formula_and_anneals_lambda():
    loss_fn = build_loss("lsoftmax", embedding_dim=2, num_classes=2, margin=2, lambda_min=0.0)
    with torch.no_grad():
        loss_fn.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 1.0]]))
    assert loss_fn.current_lambda() == approx(1000.0)
    loss_fn.iteration.fill_(100)
    lam = 1000.0 / (1 + 0.12 * 100)
    assert loss_fn.current_lambda() == approx(lam)
    for theta in (0.5, 2.0):  # k = 0 and k = 1 branches of psi for m = 2
        x = torch.tensor([_unit(theta)]) * 1.5
        m_theta = 2 * theta
        k = math.floor(m_theta / math.pi)
        psi = (-1) ** k * math.cos(m_theta) - 2 * k
        f_y = (lam * 3.0 * math.cos(theta) + 3.0 * psi) / (1 + lam)
        expected = _ce([f_y, 1.5 * math.sin(theta)], 0)
        loss_fn.iteration.fill_(100)
        assert loss_fn(x, torch.tensor([0])).item() == approx(expected)
    assert int(loss_fn.iteration) == 101  # training forward passes advance the schedule
    assert loss_fn.logits(x).tolist()[0] == approx([3.0 * math.cos(2.0), 1.5 * math.sin(2.0)])


@pytest.mark.parametrize("learn_covariance", [False, True])
def test_lgm_matches_hand_loop(learn_covariance):
    loss_fn = build_loss(
        "lgm", embedding_dim=2, num_classes=3, alpha=0.3, lambda_lkd=0.2, learn_covariance=learn_covariance
    )
    mu = torch.tensor([[0.0, 0.0], [1.0, 2.0], [-1.0, 1.0]])
    log_var = torch.tensor([[0.0, 0.5], [-0.3, 0.2], [0.1, 0.0]]) if learn_covariance else torch.zeros(3, 2)
    with torch.no_grad():
        loss_fn.means.copy_(mu)
        if learn_covariance:
            loss_fn.log_var.copy_(log_var)
    x, y = torch.tensor([[0.5, 0.5], [1.0, 1.0]]), torch.tensor([1, 2])
    total = 0.0
    for i in range(2):
        d = [0.5 * sum((x[i, t] - mu[k, t]) ** 2 / math.exp(log_var[k, t]) for t in range(2)) for k in range(3)]
        log_det = [float(log_var[k].sum()) for k in range(3)]
        z = [-float(d[k]) * (1 + 0.3 * (k == int(y[i]))) - 0.5 * log_det[k] for k in range(3)]
        total += _ce(z, int(y[i])) + 0.2 * (float(d[int(y[i])]) + 0.5 * log_det[int(y[i])])
    assert loss_fn(x, y).item() == approx(total / 2)


def test_uniformface_adds_uniform_term_on_moved_centres():
    loss_fn = build_loss("uniformface", embedding_dim=2, num_classes=3, uniform_weight=0.7, center_alpha=0.5)
    sphere = build_loss("sphereface", embedding_dim=2, num_classes=3)
    sphere.load_state_dict({"weight": loss_fn.weight.detach()})
    c0 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    loss_fn.centers.copy_(c0)
    x, y = torch.tensor([[2.0, 1.0], [0.0, -3.0]]), torch.tensor([0, 0])
    xn = F.normalize(x, dim=1)
    moved = c0.clone()
    moved[0] = c0[0] - 0.5 * ((c0[0] - xn[0]) + (c0[0] - xn[1])) / 3
    pairs = [(i, j) for i in range(3) for j in range(3) if i != j]
    uniform = sum(1.0 / (float((moved[i] - moved[j]).norm()) + 1.0) for i, j in pairs) / 6
    expected = sphere(x, y).item() + 0.7 * uniform
    assert loss_fn(x, y).item() == approx(expected)
    torch.testing.assert_close(loss_fn.centers, moved)


# ---------------------------------------------------------------- proxy losses


def test_maskproxy_keeps_batch_classes_and_matches_hand_softmax():
    loss_fn = build_loss("maskproxy", embedding_dim=2, num_classes=40, keep_negatives=0.25, scale=5.0, seed=3)
    y = torch.tensor([7, 31])
    x = torch.tensor([[0.6, 0.8], [-1.0, 0.2]])
    probe = torch.Generator().manual_seed(3)
    keep = torch.rand(40, generator=probe) < 0.25
    keep[y] = True
    kept = torch.nonzero(keep).squeeze(1).tolist()
    assert 2 < len(kept) < 40
    w = F.normalize(loss_fn.weight.detach(), dim=1)
    xn = F.normalize(x, dim=1)
    expected = sum(_ce([5.0 * float(xn[i] @ w[k]) for k in kept], kept.index(int(y[i]))) for i in range(2)) / 2
    assert loss_fn(x, y).item() == approx(expected)


def test_maskproxy_with_every_proxy_is_normface():
    mp = build_loss("maskproxy", embedding_dim=4, num_classes=6, keep_negatives=1.0)
    nf = build_loss("normface", embedding_dim=4, num_classes=6)
    nf.load_state_dict(mp.state_dict())
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 1, 4, 5])
    torch.testing.assert_close(mp(x, y), nf(x, y))


def test_softtriple_matches_hand_loop_and_saves_its_centres():
    loss_fn = build_loss(
        "softtriple", embedding_dim=2, num_classes=2, centers_per_class=2, la=5.0, gamma=0.5, margin=0.1, tau=0.3
    )
    assert "pml.fc" in loss_fn.state_dict() and any(p is loss_fn.pml.fc for p in loss_fn.parameters())
    centres = [[_unit(0.0), _unit(0.4)], [_unit(2.0), _unit(2.5)]]  # class c, centre k
    with torch.no_grad():
        loss_fn.pml.fc.copy_(torch.tensor([centres[0][0], centres[0][1], centres[1][0], centres[1][1]]).t())
    x, y = torch.tensor([[1.0, 0.5], [-0.5, 1.0]]), torch.tensor([0, 1])
    total = 0.0
    for i in range(2):
        xi = F.normalize(x[i], dim=0).tolist()
        rel = []
        for c in range(2):
            s = [xi[0] * w[0] + xi[1] * w[1] for w in centres[c]]
            e = [math.exp(v / 0.5) for v in s]
            rel.append(sum(ek / sum(e) * sk for ek, sk in zip(e, s, strict=True)))
        total += _ce([5.0 * (rel[c] - 0.1 * (c == int(y[i]))) for c in range(2)], int(y[i]))
    reg = sum(math.dist(centres[c][0], centres[c][1]) * 2 for c in range(2)) / (2 * 2 * 1)
    assert loss_fn(x, y).item() == approx(total / 2 + 0.3 * reg)
