"""AdaFace, sub-center ArcFace and CurricularFace (the scale options are in test_margin_scale.py).

Each head is checked against a float64 reference written here from the papers' formulas (never by calling the
implementation), by gradients (gradcheck, or autograd through the reference), by a few SGD steps, by its buffers,
by closed-set logits, and by one `facerec train` run that saves and reloads a checkpoint.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch.func import functional_call

import facerec
from facerec.cli.main import main
from facerec.losses import build_loss
from facerec.registry import LOSSES
from loss_reference import adaface_reference, approx, cos_matrix, curricular_reference, subcenter_reference
from loss_reference import ce as _ce
from loss_reference import unit as _unit
from test_cli import TINY

NEW_HEADS = ["adaface", "subcenter_arcface", "curricularface"]


def _data(b: int = 6, c: int = 4, d: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = (
        torch.randn(b, d, generator=g, dtype=torch.float64)
        * torch.linspace(0.5, 6.0, b, dtype=torch.float64)[:, None]
    )
    return x, torch.arange(b) % c


def _gradcheck(loss_fn: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> bool:
    """torch.autograd.gradcheck in float64 with respect to the embeddings and the centre matrix."""
    w = loss_fn.weight.detach().clone().requires_grad_()
    return torch.autograd.gradcheck(
        lambda x_, w_: functional_call(loss_fn, {"weight": w_}, (x_, y)), (x.requires_grad_(), w)
    )


# ---------------------------------------------------------------- AdaFace


def test_adaface_matches_reference_value_gradient_and_norm_ema():
    x, y = _data()
    loss_fn = build_loss("adaface", embedding_dim=5, num_classes=4, scale=16.0, t_alpha=0.3).double()
    loss_fn.norm_mean.fill_(3.0)  # statistics that put the batch's norms across the whole [-1, 1] range
    loss_fn.norm_std.fill_(1.5)
    w = loss_fn.weight.detach().clone().requires_grad_()
    xr = x.clone().requires_grad_()
    expected, mean, std = adaface_reference(xr, w, y, 16.0, 0.4, 0.333, 3.0, 1.5, 0.3)
    expected.backward()
    xi = x.clone().requires_grad_()
    got = loss_fn(xi, y)
    got.backward()
    assert got.item() == approx(expected.item())
    assert loss_fn.norm_mean.item() == approx(mean) and loss_fn.norm_std.item() == approx(std)
    torch.testing.assert_close(xi.grad, xr.grad)  # norm_hat is detached in both
    torch.testing.assert_close(loss_fn.weight.grad, w.grad)


def test_adaface_margin_spans_arcface_cosface_and_beyond():
    loss_fn = build_loss("adaface", embedding_dim=2, num_classes=2, margin=0.4)
    cos = torch.tensor([math.cos(0.3), math.cos(1.2), math.cos(3.0)])
    theta = torch.acos(cos)
    low = loss_fn.target_logit(cos, torch.full((3,), -1.0))
    mid = loss_fn.target_logit(cos, torch.zeros(3))
    high = loss_fn.target_logit(cos, torch.ones(3))
    arc = [math.cos(min(t + 0.4, math.pi)) for t in theta.tolist()]  # ArcFace, capped at pi
    torch.testing.assert_close(low, torch.tensor(arc))
    torch.testing.assert_close(mid, cos - 0.4)  # CosFace
    rec = [math.cos(max(t - 0.4, 0.0)) - 0.8 for t in theta.tolist()]  # angle floored at 0 (theta = 0.3)
    torch.testing.assert_close(high, torch.tensor(rec))
    torch.testing.assert_close(loss_fn.target_logit(cos), mid)  # no norm given: an average image


def test_adaface_uses_the_raw_norm_and_buffers_move_only_in_training():
    loss_fn = build_loss("adaface", embedding_dim=5, num_classes=4, t_alpha=0.5)
    x, y = _data()
    x = x.float()
    loss_fn.eval()
    a = loss_fn(x, y)
    assert loss_fn.norm_mean.item() == 20.0 and loss_fn.norm_std.item() == 100.0  # eval: frozen
    loss_fn.norm_mean.fill_(x.norm(dim=1).mean())
    loss_fn.norm_std.fill_(1.0)
    assert not torch.isclose(loss_fn(x, y), a)  # the norm decides the margin ...
    arc = build_loss("arcface", embedding_dim=5, num_classes=4)
    torch.testing.assert_close(arc(x, y), arc(3 * x, y))  # ... unlike ArcFace's
    loss_fn.train()
    loss_fn(x[:1], y[:1])  # one image: the mean moves, the std (undefined) does not
    assert loss_fn.norm_std.item() == 1.0
    assert loss_fn.norm_mean.item() == approx(0.5 * float(x.norm(dim=1).mean() + x[0].norm()))


def test_adaface_gradcheck_where_the_norm_term_is_saturated():
    x = torch.tensor([[0.3, 0.2, 0.4], [2.0, -1.0, 3.0], [0.1, -0.5, 0.2], [-2.0, 2.5, 1.0]], dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1])
    loss_fn = build_loss("adaface", embedding_dim=3, num_classes=3, scale=8.0).double().eval()
    loss_fn.norm_mean.fill_(2.0)  # norms 0.5 .. 3.9 against std 0.1: every norm_hat is clipped to -1 or 1
    loss_fn.norm_std.fill_(0.1)
    assert _gradcheck(loss_fn, x, y)


# ---------------------------------------------------------------- CurricularFace


def test_curricularface_matches_reference_value_gradient_and_t_ema():
    x, y = _data(seed=1)
    loss_fn = build_loss("curricularface", embedding_dim=5, num_classes=4, scale=8.0, margin=0.5, t_alpha=0.2)
    loss_fn = loss_fn.double()
    loss_fn.t.fill_(0.6)  # a late-curriculum t, so some negatives are amplified
    w = loss_fn.weight.detach().clone().requires_grad_()
    xr = x.clone().requires_grad_()
    expected, t = curricular_reference(xr, w, y, 8.0, 0.5, 0.6, 0.2)
    expected.backward()
    xi = x.clone().requires_grad_()
    got = loss_fn(xi, y)
    got.backward()
    assert got.item() == approx(expected.item())
    assert loss_fn.t.item() == approx(t)
    torch.testing.assert_close(xi.grad, xr.grad)
    torch.testing.assert_close(loss_fn.weight.grad, w.grad)


def test_curricularface_hard_negative_on_2d_example():
    loss_fn = build_loss("curricularface", embedding_dim=2, num_classes=2, scale=10.0, margin=0.5, t_alpha=0.01)
    with torch.no_grad():
        loss_fn.weight.copy_(torch.eye(2))
    theta = 0.6  # cos(theta + m) = 0.454 < sin(theta) = 0.565: class 1 is a hard negative
    x, y = torch.tensor([_unit(theta)]), torch.tensor([0])
    t = 0.01 * math.cos(theta)
    neg = math.sin(theta) * (t + math.sin(theta))
    assert loss_fn(x, y).item() == approx(_ce([10 * math.cos(theta + 0.5), 10 * neg], 0))
    assert loss_fn.t.item() == approx(t)
    loss_fn.eval()(x, y)
    assert loss_fn.t.item() == approx(t)  # no update outside training
    easy = torch.tensor([_unit(0.2)])  # cos(0.7) = 0.765 > sin(0.2): the negative is left alone
    assert loss_fn(easy, y).item() == approx(_ce([10 * math.cos(0.7), 10 * math.sin(0.2)], 0))


def test_curricularface_gradcheck():
    x, y = _data(b=5, c=3, d=3, seed=2)
    loss_fn = build_loss("curricularface", embedding_dim=3, num_classes=3, scale=4.0).double().eval()
    loss_fn.t.fill_(0.3)
    assert _gradcheck(loss_fn, x, y)


# ---------------------------------------------------------------- sub-center ArcFace


def test_subcenter_matches_reference_value_and_counts_winners():
    x, y = _data(seed=3)
    loss_fn = build_loss("subcenter_arcface", embedding_dim=5, num_classes=4, subcenters=3, scale=8.0).double()
    assert loss_fn.weight.shape == (12, 5)
    w = loss_fn.weight.detach()
    assert loss_fn(x, y).item() == approx(subcenter_reference(x, w, y, 8.0, 0.5, 3).item())
    winners = cos_matrix(x, w).view(6, 4, 3).argmax(2)[torch.arange(6), y]
    expected = torch.zeros(4, 3, dtype=torch.long)
    for yi, k in zip(y.tolist(), winners.tolist(), strict=True):
        expected[yi, k] += 1
    torch.testing.assert_close(loss_fn.counts, expected)
    loss_fn.eval()(x, y)
    torch.testing.assert_close(loss_fn.counts, expected)  # only training images are counted


def test_subcenter_with_one_centre_is_arcface():
    x, y = _data(seed=4)
    sub = build_loss("subcenter_arcface", embedding_dim=5, num_classes=4, subcenters=1, scale=30.0, margin=0.3)
    arc = build_loss("arcface", embedding_dim=5, num_classes=4)
    arc.load_state_dict({"weight": sub.weight.detach()})
    torch.testing.assert_close(sub(x.float(), y), arc(x.float(), y))


def test_subcenter_gradcheck():
    x, y = _data(b=5, c=3, d=3, seed=5)
    loss_fn = build_loss("subcenter_arcface", embedding_dim=3, num_classes=3, subcenters=2, scale=4.0).double()
    assert _gradcheck(loss_fn, x, y)


def _fan_head() -> torch.nn.Module:
    """2 classes x 3 sub-centres on the unit circle: class 0 at 0, 1, 2 rad; class 1 at 3, 4, 5 rad."""
    loss_fn = build_loss("subcenter_arcface", embedding_dim=2, num_classes=2, subcenters=3, scale=10.0)
    with torch.no_grad():
        loss_fn.weight.copy_(torch.tensor([_unit(a) for a in range(6)]))
    return loss_fn


def test_pruning_keeps_the_dominant_centres_logits():
    loss_fn = _fan_head()
    loss_fn.counts.copy_(torch.tensor([[1, 5, 2], [0, 0, 0]]))
    assert loss_fn.prune_to_dominant().tolist() == [1, 0]  # class 1 never seen: its first sub-centre
    assert loss_fn.active.tolist() == [[False, True, False], [True, False, False]]
    x = torch.tensor([_unit(0.1), _unit(4.9)])  # nearest to pruned centres (0 rad and 5 rad)
    dominant = [1.0, 3.0]
    expected = [[10 * math.cos(a - c) for c in dominant] for a in (0.1, 4.9)]
    assert loss_fn.logits(x).flatten().tolist() == approx(sum(expected, []))
    loss_fn.counts.copy_(torch.tensor([[9, 0, 0], [0, 0, 0]]))
    assert loss_fn.prune_to_dominant().tolist() == [1, 0]  # a pruned centre never comes back


def test_pruning_from_embeddings_and_after_an_epoch():
    loss_fn = _fan_head()
    x = torch.tensor([_unit(1.9), _unit(2.1), _unit(0.2), _unit(4.1)])
    assert loss_fn.prune_to_dominant(x, torch.tensor([0, 0, 0, 1])).tolist() == [2, 1]
    with pytest.raises(ValueError, match="labels"):
        _fan_head().prune_to_dominant(x)
    scheduled = build_loss("subcenter_arcface", embedding_dim=2, num_classes=2, prune_after_epochs=2)
    scheduled.counts.copy_(torch.tensor([[0, 0, 3], [0, 4, 1]]))
    for epoch in range(2):
        scheduled.on_epoch_start(epoch)
        assert scheduled.active.all()
    scheduled.on_epoch_start(2)
    assert scheduled.active.long().argmax(1).tolist() == [2, 1] and scheduled.active.sum() == 2


# ---------------------------------------------------------------- all three: optimisation, logits, registry


@pytest.mark.parametrize("name", NEW_HEADS)
def test_sgd_steps_lower_the_loss(name, batch):
    x, y = batch
    torch.manual_seed(0)
    loss_fn = build_loss(name, embedding_dim=8, num_classes=3)
    opt = torch.optim.SGD([x, *loss_fn.parameters()], lr=0.05, momentum=0.9)
    history = []
    for _ in range(15):
        opt.zero_grad()
        loss = loss_fn(x, y)
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert history[-1] < 0.5 * history[0], history


@pytest.mark.parametrize("name", NEW_HEADS)
def test_closed_set_logits_are_scaled_cosines_without_margin(name):
    loss_fn = build_loss(name, embedding_dim=6, num_classes=5, scale=7.0)
    centres = loss_fn.weight.detach()[:: getattr(loss_fn, "k", 1)]  # (sub-)centre 0 of each class
    logits = loss_fn.logits(3 * centres)
    assert logits.shape == (5, 5)
    if name != "subcenter_arcface":  # sub-centres: the best of K, not necessarily centre 0
        torch.testing.assert_close(logits, 7.0 * cos_matrix(centres, centres))
    assert logits.argmax(1).tolist() == list(range(5))  # an embedding on a class centre is that class
    assert logits.diagonal().tolist() == pytest.approx([7.0] * 5)


def test_registry_and_cli_list_the_new_heads(capsys):
    assert set(NEW_HEADS) <= set(LOSSES.names())
    assert main(["list", "losses"]) == 0
    out = capsys.readouterr().out
    for name, words in [("adaface", "AdaFace"), ("subcenter_arcface", "sub-center"), ("curricularface", "Curr")]:
        line = next(ln for ln in out.splitlines() if ln.split() and ln.split()[0] == name)
        assert words in line


# ---------------------------------------------------------------- end to end: train, save, load


@pytest.mark.parametrize(
    ("name", "params", "epochs"),
    [
        ("adaface", "{t_alpha: 0.5}", 1),
        ("subcenter_arcface", "{prune_after_epochs: 1}", 2),
        ("curricularface", "{scale: auto, learn_scale: true}", 1),
    ],
)
def test_train_saves_and_reloads_each_new_head(name, params, epochs, hw2p2_dir: Path, tmp_path, monkeypatch):
    monkeypatch.setenv("FACEREC_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    args = ["--data", str(hw2p2_dir), "--out", str(run), f"train.epochs={epochs}", *TINY]
    assert main(["train", *args, f"loss.name={name}", f"loss.params={params}"]) == 0
    assert type(facerec.load(str(run / "best.pt")).loss_fn.primary) is LOSSES.get(name)
    model = facerec.load(str(run / "last.pt"))  # the state after the last epoch (best.pt may be earlier)
    head = model.loss_fn.primary
    assert type(head) is LOSSES.get(name)
    ver = sorted((hw2p2_dir / "verification_data").iterdir())
    top = model.classify([ver[0]], k=2)[0]
    assert len(top) == 2 and top[0][0] in model.classes
    if name == "adaface":  # the embedder's raw BatchNorm output, norm ~ sqrt(32), not unit vectors
        assert 2.0 < head.norm_mean.item() < 15.0 and head.norm_std.item() < 5.0
    elif name == "subcenter_arcface":
        assert head.counts.sum() == 2 * 96  # 2 epochs of 12 identities x 8 images, pruned after the first
        assert head.active.sum(1).tolist() == [1] * 12
    else:
        assert head.t.item() != 0.0 and head.scale.item() != pytest.approx(math.sqrt(2) * math.log(11), abs=1e-6)
