"""Scoring (metrics/scoring.py) against independent references: numpy cosines and distances written out by hand,
FAISS searches that rank like `matrix`, the accept rule at its threshold, and the one name check."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facerec.errors import ConfigError
from facerec.metrics.scoring import SCORING_NAMES, Scoring
from facerec.metrics.verification import pair_scores, score_matrix

RNG = np.random.default_rng(7)
A = RNG.normal(size=(9, 5))
B = RNG.normal(size=(9, 5))


def numpy_score(x: np.ndarray, y: np.ndarray, name: str) -> float:
    """One pair by hand: x.y / (|x| |y|), or -sqrt(sum (x - y)^2)."""
    if name == "cosine":
        return float(np.dot(x, y) / (np.sqrt(np.dot(x, x)) * np.sqrt(np.dot(y, y))))
    return float(-np.sqrt(np.sum((x - y) ** 2)))


@pytest.mark.parametrize("name", SCORING_NAMES)
def test_pairs_and_matrix_match_numpy_by_hand(name: str) -> None:
    s = Scoring.of(name)
    want_pairs = [numpy_score(a, b, name) for a, b in zip(A, B)]
    want_matrix = [[numpy_score(a, b, name) for b in B] for a in A]
    np.testing.assert_allclose(s.pairs(A, B).numpy(), want_pairs, rtol=1e-12, atol=1e-12)  # float64 stays
    np.testing.assert_allclose(s.matrix(A, B).numpy(), want_matrix, rtol=1e-12, atol=1e-12)
    a32, b32 = torch.tensor(A, dtype=torch.float32), torch.tensor(B, dtype=torch.float32)
    assert s.pairs(a32, b32).dtype == torch.float32 and s.pairs(a32.half(), b32.half()).dtype == torch.float32
    np.testing.assert_allclose(s.pairs(a32, b32).numpy(), want_pairs, atol=1e-5)


def test_hand_values_and_scale() -> None:
    a, b = np.array([[3.0, 4.0], [1.0, 0.0]]), np.array([[4.0, 3.0], [0.0, 2.0]])
    np.testing.assert_allclose(Scoring.of("cosine").pairs(a, b).numpy(), [24 / 25, 0.0])
    np.testing.assert_allclose(Scoring.of("euclidean").pairs(a, b).numpy(), [-np.sqrt(2), -np.sqrt(5)])
    # cosine ignores length, euclidean does not
    np.testing.assert_allclose(Scoring.of("cosine").pairs(a, 10 * b).numpy(), [24 / 25, 0.0])
    assert Scoring.of("cosine").unit_length and not Scoring.of("euclidean").unit_length


@pytest.mark.parametrize("name", SCORING_NAMES)
def test_indexed_pairs_and_public_wrappers(name: str) -> None:
    s = Scoring.of(name)
    emb = torch.tensor(A, dtype=torch.float32)
    ia, ib = [0, 3, 3, 8], [1, 1, 5, 0]
    want = [numpy_score(A[i], A[j], name) for i, j in zip(ia, ib)]
    for idx in ((ia, ib), (np.array(ia), np.array(ib)), (torch.tensor(ia), torch.tensor(ib))):
        np.testing.assert_allclose(s.indexed_pairs(emb, *idx).numpy(), want, atol=1e-5)
    torch.testing.assert_close(pair_scores(emb[ia], emb[ib], name), s.pairs(emb[ia], emb[ib]))
    torch.testing.assert_close(score_matrix(emb, emb, name), s.matrix(emb, emb))
    assert pair_scores(torch.tensor(A), torch.tensor(B), name).dtype == torch.float32  # as it always was


@pytest.mark.parametrize("name", SCORING_NAMES)
def test_distance_round_trip(name: str) -> None:
    s = Scoring.of(name)
    scores = s.matrix(A, B)
    d = s.to_distance(scores)
    torch.testing.assert_close(s.from_distance(d), scores)
    if name == "euclidean":
        want = np.sqrt(((A[:, None, :] - B[None, :, :]) ** 2).sum(-1))
    else:
        want = 1 - A @ B.T / np.outer(np.linalg.norm(A, axis=1), np.linalg.norm(B, axis=1))
    np.testing.assert_allclose(d.numpy(), want, atol=1e-12)
    assert s.to_distance(0.25) == (0.75 if name == "cosine" else -0.25)  # a threshold, too


def test_accept_is_score_at_or_above_threshold() -> None:
    assert Scoring.accept(0.5, 0.5) is True and Scoring.accept(np.nextafter(0.5, 0), 0.5) is False
    assert Scoring.of("euclidean").accept(-1.0, -1.0) is True and Scoring.accept(-1.5, -1.0) is False
    assert Scoring.accept(np.float32(0.7), 0.5) is True
    np.testing.assert_array_equal(Scoring.accept(np.array([0.1, 0.5, 0.9]), 0.5), [False, True, True])
    assert Scoring.accept(torch.tensor([0.4, 0.6]), 0.5).tolist() == [False, True]


def test_bad_name_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown scoring 'cosin'; choose one of cosine, euclidean"):
        Scoring.of("cosin")
    with pytest.raises(ValueError, match=r"unknown loss.scoring 'l1'; choose one of auto, cosine, euclidean"):
        Scoring.of("l1", key="loss.scoring", also=("auto",))
    with pytest.raises(ConfigError, match="unknown scoring"):
        Scoring("manhattan")
    s = Scoring.of("euclidean")
    assert Scoring.of(s) is s and s == Scoring("euclidean") and str(s) == "euclidean"


def test_shape_errors() -> None:
    s = Scoring.of("cosine")
    with pytest.raises(ValueError, match="equal shape"):
        s.pairs(np.zeros((3, 4)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"\(M, D\) and \(N, D\)"):
        s.matrix(np.zeros((3, 4)), np.zeros((2, 5)))


@pytest.mark.parametrize("name", SCORING_NAMES)
@pytest.mark.parametrize("nlist", [0, 2])
def test_faiss_ranks_like_matrix(name: str, nlist: int) -> None:
    pytest.importorskip("faiss")
    s = Scoring.of(name)
    rng = np.random.default_rng(1)
    gallery, queries = rng.normal(size=(80, 6)).astype(np.float32), rng.normal(size=(7, 6)).astype(np.float32)
    index = s.faiss_index(6, nlist)
    if nlist:
        index.train(s.index_vectors(gallery))
        index.nprobe = nlist  # every list: exact
    index.add(s.index_vectors(gallery))
    values, found = index.search(s.index_vectors(queries), 10)
    m = s.matrix(queries, gallery).numpy()
    np.testing.assert_array_equal(found, np.argsort(-m, axis=1, kind="stable")[:, :10])
    np.testing.assert_allclose(s.index_scores(values), np.take_along_axis(m, found, axis=1), atol=1e-4)
    unit = np.linalg.norm(s.index_vectors(gallery), axis=1)
    assert np.allclose(unit, 1.0) == (name == "cosine")


def approximate_index(s: Scoring, kind: str, train: np.ndarray) -> object:
    """An IVF, HNSW or LSH index of `s` at generous settings (every list probed; a wide graph search; a third of
    the gallery re-scored)."""
    if kind == "lsh":
        return s.faiss_index(train.shape[1], lsh_bits=64, refine=40)
    if kind == "ivf":
        index = s.faiss_index(train.shape[1], 8)
        index.train(train)
        index.nprobe = 8
        return index
    return s.faiss_index(train.shape[1], hnsw_m=16, ef_construction=80, ef_search=64)


@pytest.mark.parametrize("name", SCORING_NAMES)
@pytest.mark.parametrize("kind", ["ivf", "hnsw", "lsh"])
def test_approximate_index_top1_matches_exact_matrix(name: str, kind: str) -> None:
    """recall@1 = 1 against `Scoring.matrix`, with the scores `index_scores` gives equal to the matrix's."""
    faiss = pytest.importorskip("faiss")
    s = Scoring.of(name)
    rng = np.random.default_rng(3)
    gallery = rng.normal(size=(600, 16)).astype(np.float32)
    queries = gallery[rng.choice(600, 40, replace=False)] + 0.8 * rng.normal(size=(40, 16)).astype(np.float32)
    vectors = s.index_vectors(gallery)
    index = approximate_index(s, kind, vectors)
    index.add(vectors)
    values, found = index.search(s.index_vectors(queries), 5)
    m = s.matrix(queries, gallery).numpy()
    np.testing.assert_array_equal(found[:, 0], m.argmax(axis=1))
    np.testing.assert_allclose(s.index_scores(values), np.take_along_axis(m, found, axis=1), atol=1e-4)
    want = {"ivf": faiss.IndexIVFFlat, "hnsw": faiss.IndexHNSWFlat, "lsh": faiss.IndexRefine}[kind]
    metric = faiss.METRIC_INNER_PRODUCT if name == "cosine" else faiss.METRIC_L2
    assert isinstance(index, want) and index.metric_type == metric


def test_hnsw_settings_and_ids() -> None:
    faiss = pytest.importorskip("faiss")
    s = Scoring.of("cosine")
    index = s.faiss_index(4, hnsw_m=8, ef_construction=20, ef_search=33)
    assert (index.hnsw.efConstruction, index.hnsw.efSearch, index.is_trained) == (20, 33, True)
    assert s.faiss_index(4, hnsw_m=8).hnsw.efConstruction == 80  # not FAISS's 40: see faiss_index
    ided = faiss.IndexIDMap(index)  # how a gallery keeps its own ids on a graph index
    x = s.index_vectors(np.eye(4, dtype=np.float32) + 0.1)
    ided.add_with_ids(x, np.array([10, 20, 30, 40], dtype=np.int64))
    assert ided.search(x[2:3], 1)[1].tolist() == [[30]]
    with pytest.raises(ValueError, match=r"nlist=4 \(IVF\), hnsw_m=8 \(HNSW\), lsh_bits=0: set one"):
        s.faiss_index(4, 4, hnsw_m=8)


def test_lsh_finds_candidates_by_sign_bits_and_scores_them_exactly() -> None:
    """Sign bits of a seeded rotation (the same in every process), Hamming search, `refine` x k exact rescores:
    with refine 1 the answer is the Hamming order; with a wide refine the exact one."""
    faiss = pytest.importorskip("faiss")
    s = Scoring.of("cosine")
    rng = np.random.default_rng(5)
    x = s.index_vectors(rng.normal(size=(400, 32)).astype(np.float32))
    q = s.index_vectors(x[:30] + 0.9 * rng.normal(size=(30, 32)).astype(np.float32) / np.sqrt(32))
    a, b = s.faiss_index(32, lsh_bits=32, refine=1), s.faiss_index(32, lsh_bits=32, refine=1)
    a.add(x)
    b.add(x)
    assert np.array_equal(a.search(q, 3)[1], b.search(q, 3)[1])  # one rotation, not a random one per index
    bits = faiss.downcast_index(a.base_index)
    assert (bits.nbits, a.k_factor, a.ntotal, faiss.downcast_index(a.refine_index).ntotal) == (32, 1.0, 400, 400)
    hamming = bits.search(q, 3)[1]
    refined = a.search(q, 3)[1]
    assert np.array_equal(np.sort(refined, axis=1), np.sort(hamming, axis=1))  # refine 1: the Hamming top 3,
    assert not np.array_equal(refined, hamming)  # ordered by the exact score
    a.k_factor = 100.0  # everything re-scored: exact
    found, want = a.search(q, 3), faiss.knn(q, x, 3, metric=faiss.METRIC_INNER_PRODUCT)
    np.testing.assert_array_equal(found[1], want[1])
    np.testing.assert_allclose(found[0], want[0], atol=1e-5)
