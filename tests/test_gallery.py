"""Gallery: enroll / identify / remove round trips on synthetic embeddings (flat and IVF, cosine and Euclidean),
the CLI round trip, and identification accuracy with a model on lfw_tiny/classify (10 identities)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from facerec.data.folder import DataError
from facerec.inference.load import load
from test_lfw import one_thread, real_checkpoint, run_cli, tiny_checkpoint  # noqa: F401  (one_thread: autouse)

faiss = pytest.importorskip("faiss")
from facerec.photos.gallery import Gallery, identify  # noqa: E402


def _people(n: int, dim: int = 16, per: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n well-separated identity centres and `per` noisy embeddings of each: (n, D), (n, per, D)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n, dim)).astype(np.float32) * 3
    return centres, centres[:, None] + rng.normal(scale=0.3, size=(n, per, dim)).astype(np.float32)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_enroll_identify_remove_round_trip(tmp_path, metric):
    centres, photos = _people(4)
    g = Gallery.open(tmp_path / "g", metric, 16, fingerprint="abc")
    for i, emb in enumerate(photos):
        g.add(f"person{i}", emb, [f"p{i}_{j}.jpg" for j in range(3)])
    g.save()
    g = Gallery.open(tmp_path / "g", fingerprint="abc")
    assert g.people() == {f"person{i}": 3 for i in range(4)} and len(g) == 12
    top = g.search(torch.from_numpy(centres), k=2)
    assert [m[0].name for m in top] == [f"person{i}" for i in range(4)]
    assert all(m[0].score > m[1].score for m in top) and len({x.name for x in top[0]}) == 2
    if metric == "euclidean":
        expected = -np.linalg.norm(photos[0] - centres[0], axis=1).min()
        assert top[0][0].score == pytest.approx(expected, rel=1e-4)

    assert g.remove("person1") == 3
    g.save()
    g = Gallery.open(tmp_path / "g")
    assert "person1" not in g.people() and len(g) == 9 and g.vectors.shape == (9, 16)
    assert g.search(centres[1:2], k=3)[0][0].name != "person1"
    ids = g.add("person5", centres[1:2])  # new ids continue after the removed ones
    assert ids == [12] and g.search(centres[1:2], k=1)[0][0].name == "person5"
    with pytest.raises(DataError, match="not in the gallery"):
        g.remove("nobody")


def test_unknown_below_threshold_and_wrong_inputs(tmp_path):
    centres, photos = _people(3)
    g = Gallery.open(tmp_path / "g", "cosine", 16, fingerprint="one")
    for i, emb in enumerate(photos):
        g.add(f"p{i}", emb)
    stranger = np.random.default_rng(9).normal(size=(1, 16)).astype(np.float32)
    r = identify(g, torch.from_numpy(np.concatenate([centres[:1], stranger])), k=3, threshold=0.9)
    assert r[0]["name"] == "p0" and r[1]["name"] == "unknown" and len(r[1]["matches"]) == 3
    with pytest.raises(ValueError, match=r"\(N, 16\)"):
        g.add("x", np.zeros((2, 8)))
    with pytest.raises(DataError, match="another model"):
        Gallery.open(tmp_path / "g", fingerprint="other")
    with pytest.raises(DataError, match="not a gallery"):
        Gallery.open(tmp_path / "empty")


def test_ivf_index_is_trained_on_stored_vectors_and_still_finds_people(tmp_path):
    centres, photos = _people(60, per=5)
    g = Gallery.open(tmp_path / "g", "cosine", 16)
    for i, emb in enumerate(photos):
        g.add(f"p{i}", emb)
    g.reindex("ivf", nlist=6, nprobe=6)  # nprobe = nlist: exhaustive, so results are exact
    g.save()
    g = Gallery.open(tmp_path / "g")
    assert isinstance(faiss.downcast_index(g.index), faiss.IndexIVFFlat) and g.index.nprobe == 6
    assert [m[0].name for m in g.search(centres, k=1)] == [f"p{i}" for i in range(60)]
    g.remove("p3")
    g.add("late", centres[3:4])  # added to the trained lists without retraining
    assert g.search(centres[3:4], k=1)[0][0].name == "late" and len(g) == 296
    with pytest.raises(DataError, match="at least"):
        g.reindex("ivf", nlist=1000)
    g.reindex("flat")
    assert g.meta["index"] == "flat" and g.search(centres[:1], k=1)[0][0].name == "p0"


def test_cli_enroll_identify_list_remove(tmp_path_factory, face_dir, capsys):
    ckpt = str(tiny_checkpoint(tmp_path_factory))
    gal = str(tmp_path_factory.mktemp("gal") / "g")
    photos = sorted(face_dir.glob("*/*.jpg"))
    assert run_cli(["enroll", "alice", *map(str, photos[:2]), "--gallery", gal, "--checkpoint", ckpt]) == 0
    assert run_cli(["enroll", "--folder", str(face_dir), "--gallery", gal, "--checkpoint", ckpt]) == 0
    capsys.readouterr()
    assert run_cli(["gallery", "list", "--gallery", gal]) == 0
    assert "3 people, 14 photos" in capsys.readouterr().out
    assert (
        run_cli(
            [
                "identify",
                str(photos[0]),
                "--gallery",
                gal,
                "--checkpoint",
                ckpt,
                "--k",
                "2",
                "--threshold",
                "2",
                "--json",
            ]
        )
        == 0
    )
    r = json.loads(capsys.readouterr().out)
    assert r["name"] == "unknown" and len(r["matches"]) == 2 and r["score"] == pytest.approx(1.0, abs=1e-4)
    assert run_cli(["gallery", "remove", "alice", "--gallery", gal]) == 0
    assert run_cli(["gallery", "list", "--gallery", gal]) == 0
    assert "alice" not in capsys.readouterr().out.split("photos")[-1]
    assert run_cli(["gallery", "rename", "bob", "Bob B", "--gallery", gal]) == 0
    assert run_cli(["gallery", "reindex", "--index", "hnsw", "--ef-search", "32", "--gallery", gal]) == 0
    assert run_cli(["gallery", "list", "--gallery", gal]) == 0
    out = capsys.readouterr().out
    assert "renamed bob to Bob B: 4 photos" in out and "hnsw index over" in out and "     4  Bob B" in out
    assert "(M 32, efSearch 32)" in out  # the settings reindex recorded
    with pytest.raises(DataError, match="give both names"):
        run_cli(["gallery", "rename", "carol", "--gallery", gal])
    with pytest.raises(DataError, match="NAME PHOTO"):
        run_cli(["enroll", "--gallery", gal, "--checkpoint", ckpt])


def test_identification_accuracy_on_lfw_tiny(shared_data, tmp_path_factory):
    """Enroll photos 1-5 of each of the 10 people, identify photos 6-10 (chance: 10%)."""
    from facerec.photos.gallery import open_for_model

    root = shared_data / "lfw_tiny" / "classify"
    if not root.is_dir():
        pytest.skip("lfw_tiny not found")
    real = real_checkpoint()
    fm = load(real or tiny_checkpoint(tmp_path_factory))
    aligner = None
    if real is not None:
        pytest.importorskip("facenet_pytorch")
        from facerec.photos.align import FaceAligner

        aligner = FaceAligner()
    from facerec.photos.align import load_faces

    g = open_for_model(tmp_path_factory.mktemp("lfw_gal") / "g", fm, create=True)
    queries, truth = [], []
    for person in sorted(p.name for p in root.iterdir()):
        photos = sorted((root / person).glob("*.jpg"))
        g.add(person, fm.embed(load_faces(photos[:5], aligner)))
        queries += photos[5:10]
        truth += [person] * len(photos[5:10])
    found = [r["name"] for r in identify(g, fm.embed(load_faces(queries, aligner)), k=5)]
    accuracy = float(np.mean([f == t for f, t in zip(found, truth)]))
    print(f"lfw_tiny identification accuracy {accuracy:.2f} ({len(truth)} queries, aligned={aligner is not None})")
    assert len(truth) == 50 and len(g.people()) == 10
    if real is None:
        pytest.skip("no trained face model (models/facehw.pt or $FACEREC_TEST_MODEL): accuracy not checked")
    assert accuracy > 0.5  # chance is 0.1
