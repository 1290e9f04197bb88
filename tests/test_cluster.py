"""`facerec cluster` / photos.cluster: agglomerative clustering of face embeddings by the model's scoring."""

from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import pdist, squareform

import facerec
from facerec.data.folder import DataError
from facerec.photos.cluster import (
    cluster_embeddings,
    clustering_scores,
    copy_into_folders,
    distance_matrix,
    relabel_by_size,
    write_clusters_csv,
)
from facerec.photos.embed import EmbeddingSet, embed_files, save_embeddings
from test_export import make_tiny_checkpoint, photos
from test_lfw import one_thread, real_checkpoint, run_cli  # noqa: F401  (one_thread: autouse fixture)


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to the names of the clusters."""
    return all((a[i] == a[j]) == (b[i] == b[j]) for i, j in itertools.combinations(range(len(a)), 2))


@pytest.mark.parametrize("scoring", ["cosine", "euclidean"])
def test_distance_matrix_against_scipy(scoring):
    x = np.random.default_rng(0).normal(size=(7, 5))
    d = distance_matrix(x, scoring)
    reference = squareform(pdist(x, "cosine" if scoring == "cosine" else "euclidean"))
    np.testing.assert_allclose(d, reference, atol=1e-12)
    assert (np.diag(d) == 0).all() and (d == d.T).all()


@pytest.mark.parametrize("method", ["average", "complete", "single"])
@pytest.mark.parametrize("scoring", ["cosine", "euclidean"])
@pytest.mark.parametrize("level", [0.3, 0.7])
def test_same_partition_as_scipy_hierarchy(method, scoring, level):
    """scipy's linkage + fcluster(criterion="distance") cut at the same distance gives the same clusters."""
    x = np.random.default_rng(1).normal(size=(40, 4))
    z = linkage(pdist(x, "cosine" if scoring == "cosine" else "euclidean"), method=method)
    heights = np.sort(z[:, 2])
    k = int(level * len(heights))
    cut = (heights[k - 1] + heights[k]) / 2  # between two merges: no tie at the cut
    threshold = 1 - cut if scoring == "cosine" else -cut
    reference = fcluster(z, t=cut, criterion="distance")
    ours = cluster_embeddings(x, scoring, threshold, method)
    assert len(set(ours)) == len(x) - k  # k merges happen below the cut
    assert _same_partition(ours, reference)


def test_threshold_and_linkage_semantics():
    """Unit vectors at 0, 37 and 74 degrees: neighbours have cosine 0.80, the ends 0.28."""
    x = np.array([[math.cos(math.radians(a)), math.sin(math.radians(a))] for a in (0, 37, 74)])
    assert cluster_embeddings(x, "cosine", 0.7, "single").tolist() == [0, 0, 0]  # chains through the middle
    average = cluster_embeddings(x, "cosine", 0.7, "average")  # mean(0.80, 0.28) = 0.54 < 0.7: 2 groups
    assert len(set(average)) == 2 and average[0] != average[2]
    assert cluster_embeddings(x, "cosine", 0.5, "average").tolist() == [0, 0, 0]  # 0.54 > 0.5
    assert cluster_embeddings(x, "cosine", 0.9, "average").tolist() == [0, 1, 2]  # nothing is that close
    assert cluster_embeddings(x, "cosine", 1.5, "single").tolist() == [0, 1, 2]  # above any cosine
    assert cluster_embeddings(x[:1], "cosine", 0.5).tolist() == [0]
    assert cluster_embeddings(np.zeros((0, 2)), "cosine", 0.5).tolist() == []


def test_well_separated_people_are_recovered():
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(6, 32)) * 3
    truth = np.repeat(np.arange(6), [5, 4, 4, 3, 2, 1])
    x = centres[truth] + rng.normal(scale=0.3, size=(len(truth), 32))
    for scoring, threshold in [("cosine", 0.6), ("euclidean", -4.0)]:
        pred = cluster_embeddings(x, scoring, threshold)
        assert _same_partition(pred, truth)
        assert pred.tolist() == truth.tolist()  # numbered by size, largest first
        s = clustering_scores(pred, [f"id{t}" for t in truth])
        assert s["pair_f1"] == 1.0 and s["ari"] == pytest.approx(1.0) and s["clusters"] == s["identities"] == 6


def test_relabel_by_size_breaks_ties_by_first_photo():
    assert relabel_by_size(np.array([7, 3, 3, 9, 7, 5, 5, 5])).tolist() == [1, 2, 2, 3, 1, 0, 0, 0]


def test_pair_scores_against_brute_force():
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 4, 25)
    pred = rng.integers(0, 5, 25)
    same_t = [(truth[i] == truth[j]) for i, j in itertools.combinations(range(25), 2)]
    same_p = [(pred[i] == pred[j]) for i, j in itertools.combinations(range(25), 2)]
    tp = sum(t and p for t, p in zip(same_t, same_p))
    s = clustering_scores(pred, [str(t) for t in truth])
    assert s["pair_precision"] == pytest.approx(tp / sum(same_p))
    assert s["pair_recall"] == pytest.approx(tp / sum(same_t))
    p, r = tp / sum(same_p), tp / sum(same_t)
    assert s["pair_f1"] == pytest.approx(2 * p * r / (p + r))
    assert s["identities"] == len(set(truth)) and s["clusters"] == len(set(pred))


def test_errors(monkeypatch):
    import facerec.photos.cluster as cluster

    with pytest.raises(ValueError, match="unknown linkage 'ward'"):
        cluster_embeddings(np.zeros((3, 2)), "cosine", 0.5, "ward")
    with pytest.raises(ValueError, match="unknown scoring"):
        cluster_embeddings(np.ones((3, 2)), "dot", 0.5)
    monkeypatch.setattr(cluster, "MAX_IMAGES", 4)
    with pytest.raises(DataError, match="5 photos are more than clustering takes at once"):
        cluster_embeddings(np.ones((5, 2)), "cosine", 0.5)


def test_csv_and_folder_copies(tmp_path):
    srcs = photos(tmp_path / "a", 3, seed=1) + photos(tmp_path / "b", 2, seed=2)  # a/0.jpg and b/0.jpg: one name
    labels = np.array([0, 1, 0, 0, 2])
    out = write_clusters_csv([str(p) for p in srcs], labels, tmp_path / "c" / "clusters.csv")
    rows = list(csv.DictReader(out.open()))
    assert [(Path(r["path"]).relative_to(tmp_path).as_posix(), r["cluster"], r["cluster_size"]) for r in rows] == [
        ("a/0.jpg", "0", "3"),
        ("a/2.jpg", "0", "3"),
        ("b/0.jpg", "0", "3"),
        ("a/1.jpg", "1", "1"),
        ("b/1.jpg", "2", "1"),
    ]
    folders = copy_into_folders([str(p) for p in srcs], labels, tmp_path / "sorted")
    assert sorted(p.relative_to(folders).as_posix() for p in folders.rglob("*.jpg")) == [
        "cluster_0001/0.jpg",
        "cluster_0001/0_1.jpg",
        "cluster_0001/2.jpg",
        "singletons/1.jpg",
        "singletons/1_1.jpg",
    ]
    assert (folders / "cluster_0001" / "0_1.jpg").read_bytes() == srcs[3].read_bytes()
    with pytest.raises(DataError, match="is not empty"):
        copy_into_folders([str(p) for p in srcs], labels, folders)


def test_cli_cluster_from_an_embedding_file(tmp_path, capsys):
    rng = np.random.default_rng(4)
    centres = rng.normal(size=(3, 16)) * 3
    truth = np.repeat(np.arange(3), 4)
    x = (centres[truth] + rng.normal(scale=0.3, size=(12, 16))).astype(np.float32)
    paths = [f"people/{['ann', 'bob', 'cy'][t]}/{i}.jpg" for i, t in enumerate(truth)]
    save_embeddings(EmbeddingSet(x, paths, "cosine", 0.5), tmp_path / "e.npz")
    out = tmp_path / "clusters.csv"
    assert run_cli(["cluster", str(tmp_path / "e.npz"), "--out", str(out), "--evaluate", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["clusters"] == 3 and r["singletons"] == 0 and r["threshold"] == 0.5 and r["linkage"] == "average"
    assert r["pair_f1"] == 1.0 and r["identities"] == 3
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 12 and {r["cluster_size"] for r in rows} == {"4"}
    assert (
        run_cli(
            [
                "cluster",
                str(tmp_path / "e.npz"),
                "--out",
                str(out),
                "--threshold",
                "0.9999",
                "--linkage",
                "complete",
            ]
        )
        == 0
    )
    assert "0 clusters of 2 or more (largest 1) and 12 single photos" in capsys.readouterr().out
    save_embeddings(EmbeddingSet(x, paths), tmp_path / "e.csv")  # a CSV stores no threshold
    with pytest.raises(DataError, match="pass --threshold"):
        run_cli(["cluster", str(tmp_path / "e.csv"), "--out", str(out)])


def test_cli_cluster_photos_with_a_model(tmp_path, capsys):
    ckpt = make_tiny_checkpoint(tmp_path / "m.pt", threshold=0.3)
    root = tmp_path / "people"
    photos(root / "ann", 3, seed=1)
    photos(root / "bob", 3, seed=2)
    out = tmp_path / "c.csv"
    assert (
        run_cli(
            [
                "cluster",
                str(root),
                "--checkpoint",
                str(ckpt),
                "--out",
                str(out),
                "--folders",
                str(tmp_path / "sorted"),
                "--json",
                "--no-align",  # noise photos: no face to detect
            ]
        )
        == 0
    )
    r = json.loads(capsys.readouterr().out)
    es = embed_files(facerec.load(ckpt), [root], log=lambda m: None)
    expected = cluster_embeddings(es.embeddings, "cosine", 0.3)
    rows = list(csv.DictReader(out.open()))
    got = {row["path"]: int(row["cluster"]) for row in rows}
    assert [got[p] for p in es.paths] == expected.tolist()
    assert r["photos"] == 6 and r["clusters"] == len(set(expected))
    assert len(list((tmp_path / "sorted").rglob("*.jpg"))) == 6


def test_lfw_tiny_people_are_grouped(shared_data):
    """The shipped model on 10 people x 10 raw LFW photos, aligned: far better than chance (measured ARI 0.75 at
    the model's threshold, bench/cluster.py)."""
    pytest.importorskip("facenet_pytorch")
    ckpt = real_checkpoint()
    if ckpt is None:
        pytest.skip("needs models/facehw.pt")
    from facerec.photos.align import FaceAligner

    fm = facerec.load(ckpt)
    es = embed_files(fm, [shared_data / "lfw_tiny" / "classify"], FaceAligner(), log=lambda m: None)
    s = clustering_scores(
        cluster_embeddings(es.embeddings, fm.scoring, fm.threshold), [Path(p).parent.name for p in es.paths]
    )
    assert s["identities"] == 10 and s["ari"] > 0.6 and s["pair_precision"] > 0.6 and s["pair_recall"] > 0.6
