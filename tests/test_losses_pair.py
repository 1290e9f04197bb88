"""Pair, tuple and prototypical losses, miners and offline pair selection: reference values from plain loops."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from facerec.losses import build_loss
from facerec.losses.mining import MINERS, build_miner, mine_triplets
from facerec.losses.selection import select_pairs

X = torch.tensor(
    [[1.0, 0.2, 0.0], [0.8, 0.5, 0.1], [0.9, -0.3, 0.2], [0.0, 1.0, 0.3],
     [0.2, 0.7, -0.5], [-0.1, 0.9, 0.4], [-1.0, 0.1, 0.2], [-0.4, -0.6, 0.8], [0.7, 0.1, -0.9]]
)  # fmt: skip
Y = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
N = len(Y)


def approx(value: float):
    return pytest.approx(value, rel=1e-4, abs=1e-6)


def dist(i: int, j: int, normalize: bool = True) -> float:
    a, b = (F.normalize(X[i], dim=0), F.normalize(X[j], dim=0)) if normalize else (X[i], X[j])
    return math.sqrt(sum((float(u) - float(v)) ** 2 for u, v in zip(a, b, strict=True)))


def cos(i: int, j: int) -> float:
    return float(F.normalize(X[i], dim=0) @ F.normalize(X[j], dim=0))


def same(i: int, j: int) -> bool:
    return int(Y[i]) == int(Y[j])


def softplus(v: float) -> float:
    return math.log1p(math.exp(v))


# ---------------------------------------------------------------- contrastive, triplet, pair-wise


@pytest.mark.parametrize("normalize", [True, False])
def test_contrastive_is_equation_1_over_all_pairs(normalize):
    m = 1.2
    terms = []
    for i, j in itertools.combinations(range(N), 2):
        d = dist(i, j, normalize)
        terms.append(d**2 if same(i, j) else max(0.0, m - d) ** 2)
    loss_fn = build_loss("contrastive", embedding_dim=3, num_classes=3, margin=m, normalize=normalize)
    assert loss_fn(X, Y).item() == approx(sum(terms) / len(terms))
    assert loss_fn.scoring == ("cosine" if normalize else "euclidean")


def test_triplet_batch_hard_matches_loop():
    m, terms = 0.3, []
    for a in range(N):
        hard_pos = max(dist(a, p) for p in range(N) if p != a and same(a, p))
        hard_neg = min(dist(a, n) for n in range(N) if not same(a, n))
        terms.append(max(0.0, hard_pos - hard_neg + m))
    loss_fn = build_loss("triplet", embedding_dim=3, num_classes=3, margin=m)
    assert loss_fn(X, Y).item() == approx(sum(terms) / N)


@pytest.mark.parametrize("soft", [False, True])
def test_triplet_batch_all_matches_loop(soft):
    m, terms = 0.3, []
    for a, p, n in itertools.product(range(N), repeat=3):
        if a != p and same(a, p) and not same(a, n):
            gap = dist(a, p) - dist(a, n)
            terms.append(softplus(gap) if soft else max(0.0, gap + m))
    loss_fn = build_loss("triplet", embedding_dim=3, num_classes=3, margin=m, miner="none", soft_margin=soft)
    assert loss_fn(X, Y).item() == approx(sum(terms) / len(terms))


def test_triplet_semi_hard_matches_loop():
    m, terms = 0.5, []
    for a, p, n in itertools.product(range(N), repeat=3):
        if a != p and same(a, p) and not same(a, n) and dist(a, p) < dist(a, n) < dist(a, p) + m:
            terms.append(dist(a, p) - dist(a, n) + m)
    assert terms
    loss_fn = build_loss("triplet", embedding_dim=3, num_classes=3, margin=m, miner="semi_hard")
    assert loss_fn(X, Y).item() == approx(sum(terms) / len(terms))


def test_pairwise_logistic_matches_loop_and_learns_w_b():
    w, b = 7.0, -2.0
    pos = [softplus(-(w * cos(i, j) + b)) for i, j in itertools.combinations(range(N), 2) if same(i, j)]
    neg = [softplus(w * cos(i, j) + b) for i, j in itertools.combinations(range(N), 2) if not same(i, j)]
    loss_fn = build_loss("pairwise", embedding_dim=3, num_classes=3, init_w=w, init_b=b)
    loss = loss_fn(X, Y)
    assert loss.item() == approx(0.5 * (sum(pos) / len(pos) + sum(neg) / len(neg)))
    loss.backward()
    assert loss_fn.w.grad.abs() > 0 and loss_fn.b.grad.abs() > 0


# ---------------------------------------------------------------- quadruplet, N-pair, lifted, multi-similarity


def test_quadruplet_matches_loop():
    m1, m2, terms = 0.8, 0.4, []
    for a in range(N):
        d_ap = max(dist(a, p) ** 2 for p in range(N) if p != a and same(a, p))
        d_an = min(dist(a, n) ** 2 for n in range(N) if not same(a, n))
        d_kl = min(
            dist(k, q) ** 2
            for k, q in itertools.permutations(range(N), 2)
            if not same(k, q) and not same(a, k) and not same(a, q)
        )
        terms.append(max(0.0, d_ap - d_an + m1) + max(0.0, d_ap - d_kl + m2))
    loss_fn = build_loss("quadruplet", embedding_dim=3, num_classes=3, margin1=m1, margin2=m2)
    assert loss_fn(X, Y).item() == approx(sum(terms) / N)


def test_npair_matches_loop_over_first_two_images_per_identity():
    anchors, positives = [0, 3, 6], [1, 4, 7]  # first two images of each identity
    dot = [[float(X[a] @ X[p]) for p in positives] for a in anchors]
    ce = [-dot[i][i] + math.log(sum(math.exp(v) for v in dot[i])) for i in range(3)]
    reg = sum(float(X[i] @ X[i]) for i in range(N)) / N
    loss_fn = build_loss("npair", embedding_dim=3, num_classes=3, l2_reg=0.01)
    assert loss_fn(X, Y).item() == approx(sum(ce) / 3 + 0.01 * reg)


def test_lifted_structure_is_song_equation_4():
    alpha, terms = 1.0, []
    for i, j in itertools.combinations(range(N), 2):
        if not same(i, j):
            continue
        negs = [math.exp(alpha - dist(i, k)) for k in range(N) if not same(i, k)]
        negs += [math.exp(alpha - dist(j, q)) for q in range(N) if not same(j, q)]
        terms.append(max(0.0, math.log(sum(negs)) + dist(i, j)) ** 2)
    loss_fn = build_loss("lifted", embedding_dim=3, num_classes=3, margin=alpha)
    assert loss_fn(X, Y).item() == approx(sum(terms) / (2 * len(terms)))


@pytest.mark.parametrize("miner", ["multi_similarity", "none"])
def test_multi_similarity_matches_loop_with_ms_mining(miner):
    alpha, beta, lam, eps = 2.0, 10.0, 0.5, 0.1
    total = 0.0
    for a in range(N):
        pos = [cos(a, p) for p in range(N) if p != a and same(a, p)]
        neg = [cos(a, n) for n in range(N) if not same(a, n)]
        if miner == "multi_similarity":
            pos, neg = [s for s in pos if s - eps < max(neg)], [s for s in neg if s + eps > min(pos)]
        total += math.log1p(sum(math.exp(-alpha * (s - lam)) for s in pos)) / alpha
        total += math.log1p(sum(math.exp(beta * (s - lam)) for s in neg)) / beta
    loss_fn = build_loss("multisimilarity", embedding_dim=3, num_classes=3, alpha=alpha, beta=beta, miner=miner)
    assert loss_fn(X, Y).item() == approx(total / N)


# ---------------------------------------------------------------- B-way prototypical


@pytest.mark.parametrize("query", ["loo", "split"])
def test_bway_matches_loop(query):
    a, b = 8.0, -3.0
    xn = F.normalize(X, dim=1)
    members = {c: [i for i in range(N) if int(Y[i]) == c] for c in range(3)}
    queries = list(range(N)) if query == "loo" else [members[c][-1] for c in range(3)]
    total = 0.0
    for q in queries:
        logits = []
        for c in range(3):
            support = [i for i in members[c] if i != q] if (query == "loo" and int(Y[q]) == c) else members[c]
            if query == "split":
                support = members[c][:-1]
            proto = F.normalize(sum(xn[i] for i in support) / len(support), dim=0)
            logits.append(a * float(xn[q] @ proto) + b)
        y = int(Y[q])
        total += -logits[y] + math.log(sum(math.exp(v) for v in logits))
    loss_fn = build_loss("bway", embedding_dim=3, num_classes=3, init_a=a, init_b=b, query=query)
    assert loss_fn(X, Y).item() == approx(total / len(queries))


def test_bway_scale_and_bias_are_learnable():
    x = X.clone().requires_grad_()
    loss_fn = build_loss("bway", embedding_dim=3, num_classes=0)
    assert {n for n, _ in loss_fn.named_parameters()} == {"a", "b"}
    assert loss_fn.a.item() == 10.0 and loss_fn.b.item() == -5.0
    loss_fn(x, Y).backward()
    assert loss_fn.a.grad.abs() > 1e-3 and x.grad.abs().sum() > 0
    # b is a parameter and gets a gradient, but softmax is shift-invariant: that gradient is zero up to rounding
    assert loss_fn.b.grad is not None and loss_fn.b.grad.abs() < 1e-5
    opt = torch.optim.SGD(loss_fn.parameters(), lr=1.0)
    before = loss_fn(X, Y).item()
    for _ in range(5):
        opt.zero_grad()
        loss_fn(X, Y).backward()
        opt.step()
    assert loss_fn(X, Y).item() < before and loss_fn.a.item() != 10.0  # learning a alone lowers the loss


def test_bway_ignores_singleton_identities_as_queries():
    y = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 5])  # identity 5 has one image: prototype only
    loss_fn = build_loss("bway", embedding_dim=3, num_classes=0)
    assert torch.isfinite(loss_fn(X, y))


# ---------------------------------------------------------------- miners and offline selection


@pytest.mark.parametrize("miner", MINERS)
def test_every_miner_works_with_the_pair_losses(miner):
    torch.manual_seed(0)
    x, y = torch.randn(16, 6).requires_grad_(), torch.arange(4).repeat_interleave(4)
    for name in ("contrastive", "triplet", "pairwise", "lifted", "multisimilarity"):
        loss = build_loss(name, embedding_dim=6, num_classes=4, miner=miner)(x, y)
        assert loss.ndim == 0 and torch.isfinite(loss), name
        loss.backward()
        assert torch.isfinite(x.grad).all(), name


def test_batch_hard_miner_picks_hardest_positive_and_negative():
    a, p, n = mine_triplets(build_miner("batch_hard"), X, Y)
    for anchor, pos, neg in zip(a.tolist(), p.tolist(), n.tolist(), strict=True):
        assert dist(anchor, pos) == approx(
            max(dist(anchor, q) for q in range(N) if q != anchor and same(anchor, q))
        )
        assert dist(anchor, neg) == approx(min(dist(anchor, q) for q in range(N) if not same(anchor, q)))


@pytest.mark.parametrize("pos_fraction", [0.5, 0.6, 0.7])
def test_select_pairs_hits_the_ratio_and_the_labels(pos_fraction):
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3, 3, 3, 4])  # identities 2 and 4 have a single image
    a, b, same_id = select_pairs(labels, pos_fraction, 200, torch.Generator().manual_seed(1))
    assert a.shape == b.shape == same_id.shape == (200,)
    assert int(same_id.sum()) == round(pos_fraction * 200)
    assert (a != b).all()
    assert torch.equal(same_id, labels[a] == labels[b])
    again = select_pairs(labels, pos_fraction, 200, torch.Generator().manual_seed(1))
    assert all(torch.equal(u, v) for u, v in zip((a, b, same_id), again, strict=True))
    assert not torch.isin(a[same_id], torch.tensor([5, 10])).any()  # singletons never anchor a positive


def test_select_pairs_rejects_impossible_requests():
    with pytest.raises(ValueError, match="2 samples"):
        select_pairs(torch.tensor([0, 1, 2]), 0.5, 10)
    with pytest.raises(ValueError, match="2 classes"):
        select_pairs(torch.tensor([0, 0, 0]), 0.5, 10)
    with pytest.raises(ValueError, match="pos_fraction"):
        select_pairs(torch.tensor([0, 0, 1]), 1.5, 10)
