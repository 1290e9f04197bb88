"""Alignment: the similarity maths (no detector needed), the template against the training crops, LFW photos
aligned onto the template, and `facerec align` on a small folder with a no-face and a two-face photo."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from facerec.cli.main import main
from facerec.data.folder import DataError
from facerec.photos.embed import load_embeddings
from facerec.photos.warp import TEMPLATE_64, similarity_transform, transform_points, warp_similarity
from test_export import make_tiny_checkpoint
from test_lfw import one_thread, real_checkpoint, run_cli  # noqa: F401  (one_thread: autouse fixture)


def test_similarity_transform_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 200, (5, 2))
    angle, scale, shift = 0.3, 0.37, np.array([5.0, -7.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = src @ (scale * rot).T + shift
    m = similarity_transform(src, dst + rng.normal(0, 1e-9, dst.shape))
    np.testing.assert_allclose(m, np.hstack([scale * rot, shift[:, None]]), atol=1e-6)
    np.testing.assert_allclose(transform_points(m, src), dst, atol=1e-6)


def test_similarity_transform_never_reflects():
    src = np.array([[0.0, 0], [1, 0], [0, 1]])
    m = similarity_transform(src, src * [-1, 1])  # a mirror image: best rotation+scale, not a reflection
    assert np.linalg.det(m[:, :2]) > 0
    with pytest.raises(ValueError, match="coincide"):
        similarity_transform(np.zeros((5, 2)), TEMPLATE_64)


@pytest.mark.parametrize("photo_size, scale", [(200, 0.5), (1200, 0.05)])  # direct warp, and shrink-then-warp
def test_warp_puts_the_landmarks_on_the_template(photo_size, scale):
    """Bright dots at the 'photo' landmarks land on the template positions of the 64x64 crop (within a pixel)."""
    landmarks = (TEMPLATE_64 - 32) / scale + photo_size / 2 + np.array([7.0, -4.0])
    img = np.zeros((photo_size, photo_size, 3), np.uint8)
    r = max(2, int(1.5 / scale))
    for x, y in landmarks:
        img[int(y) - r : int(y) + r, int(x) - r : int(x) + r] = 255
    crop = np.asarray(warp_similarity(Image.fromarray(img), similarity_transform(landmarks, TEMPLATE_64), 64))
    assert crop.shape == (64, 64, 3)
    for x, y in TEMPLATE_64:
        patch = crop[int(y) - 3 : int(y) + 4, int(x) - 3 : int(x) + 4, 0].astype(float)
        yy, xx = np.mgrid[int(y) - 3 : int(y) + 4, int(x) - 3 : int(x) + 4] + 0.5  # pixel centres
        cx, cy = (patch * xx).sum() / patch.sum(), (patch * yy).sum() / patch.sum()
        assert abs(cx - x) < 1.0 and abs(cy - y) < 1.0


def test_missing_facenet_pytorch_says_how_to_install(monkeypatch):
    """MTCNN is loaded on the first detection (a FaceAligner is free to make); without it, the install line."""
    from facerec.photos.align import FaceAligner

    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)
    aligner = FaceAligner()
    crop = Image.new("RGB", (64, 64))
    assert aligner.crop(crop) is crop  # already a crop of the aligner's size: no detector needed
    with pytest.raises(ImportError, match="pip install --no-deps facenet-pytorch==2.6.0") as err:
        aligner.crop(Image.new("RGB", (200, 200)))
    assert "--no-align" in str(err.value)


@pytest.fixture(scope="module")
def aligner():
    pytest.importorskip("facenet_pytorch")
    from facerec.photos.align import FaceAligner

    return FaceAligner()


def test_template_is_where_mtcnn_finds_landmarks_in_training_crops(aligner, facehw):
    from facerec.photos.align import measure_template

    train = facehw / "classification_data" / "train_data"
    crops = [sorted((train / str(i)).glob("*.jpg"))[0] for i in range(0, 700, 35)]  # 20 identities
    mean, found = measure_template(crops, aligner)
    assert found >= 18
    assert np.abs(mean - TEMPLATE_64).max() < 1.5, mean.round(2)


def test_aligned_lfw_photos_have_their_landmarks_on_the_template(aligner, shared_data):
    photos = sorted((shared_data / "lfw_tiny" / "classify").glob("*/*_0001.jpg"))[:6]
    if not photos:
        pytest.skip("lfw_tiny not found")
    errors = []
    for photo in photos:
        assert Image.open(photo).size == (250, 250)
        crops = aligner.align(photo)
        assert crops and crops[0].size == (64, 64)
        found = aligner.detect(crops[0])
        errors.append(np.linalg.norm(found[0].landmarks - TEMPLATE_64, axis=1).mean())
    assert np.median(errors) < 2.5, np.round(errors, 2)  # pixels, in the 64x64 crop


def test_align_folder_keeps_structure_and_reports_problems(aligner, shared_data, tmp_path, capsys):
    src = sorted((shared_data / "lfw_tiny" / "classify").glob("*/*_0002.jpg"))[:3]
    if len(src) < 3:
        pytest.skip("lfw_tiny not found")
    photos = tmp_path / "in"
    for p in src[:2]:
        (photos / p.parent.name).mkdir(parents=True)
        Image.open(p).save(photos / p.parent.name / p.name)
    two = Image.new("RGB", (500, 250))
    two.paste(Image.open(src[1]), (0, 0))
    two.paste(Image.open(src[2]).resize((200, 200)), (275, 25))
    (photos / "group").mkdir()
    two.save(photos / "group" / "two.png")
    Image.fromarray(np.full((120, 160, 3), 90, np.uint8)).save(photos / "group" / "wall.jpg")
    (photos / "group" / "notes.txt").write_text("not an image")

    out, report = tmp_path / "out", tmp_path / "report.json"
    assert run_cli(["align", str(photos), str(out), "--report", str(report), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "3 aligned" in text and "1 without a face" in text and "1 with several faces" in text
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg"))
    assert names == sorted([f"{p.parent.name}/{p.name}" for p in src[:2]] + ["group/two.jpg"])
    assert all(Image.open(out / n).size == (64, 64) for n in names)
    r = json.loads(report.read_text())
    assert r["no_face"] == ["group/wall.jpg"] and [s["photo"] for s in r["several"]] == ["group/two.png"]
    assert r["several"][0]["faces"] >= 2  # LFW photos may hold a face in the background too

    again = tmp_path / "again"
    assert run_cli(["align", str(photos), str(again), "--skip-several", "--device", "cpu"]) == 0
    assert not (again / "group" / "two.jpg").exists() and len(list(again.rglob("*.jpg"))) == 2
    assert run_cli(["align", str(photos), str(again), "--device", "cpu"]) == 0
    assert "1 aligned, 2 already there" in capsys.readouterr().out
    with pytest.raises(DataError, match="inside the input"):
        run_cli(["align", str(photos), str(photos / "sub"), "--device", "cpu"])


def test_commands_align_by_default_on_lfw_tiny_photos(aligner, shared_data, tmp_path, capsys):
    """embed, verify, enroll and identify on raw LFW photos, no flag: faces aligned (one loop, so verify's score
    is the score of embed's rows) and a photo without a face skipped (embed) or refused (verify)."""
    people = sorted((shared_data / "lfw_tiny" / "classify").iterdir())[:2]
    if len(people) < 2:
        pytest.skip("lfw_tiny not found")
    (a1, a2), b1 = sorted(people[0].glob("*.jpg"))[:2], sorted(people[1].glob("*.jpg"))[0]
    blank = tmp_path / "blank.jpg"
    Image.new("RGB", (160, 120), (90, 90, 90)).save(blank)
    real = real_checkpoint()
    ckpt = str(real or make_tiny_checkpoint(tmp_path / "m.pt", image_size=64))
    out = tmp_path / "e.npz"
    args = ["--checkpoint", ckpt, "--json", "--device", "cpu"]
    assert main(["embed", str(a1), str(a2), str(b1), str(blank), "--out", str(out), *args]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["embedded"] == 3 and r["aligned"] is True and r["no_face"] == [str(blank)]
    es = load_embeddings(out)
    assert main(["verify", "--checkpoint", ckpt, str(a1), str(a2), "--json"]) == 0
    from facerec.metrics.verification import pair_scores

    expected = float(
        pair_scores(torch.from_numpy(es.embeddings[:1]), torch.from_numpy(es.embeddings[1:2]), es.scoring)[0]
    )
    assert json.loads(capsys.readouterr().out)["score"] == pytest.approx(expected, abs=1e-5)
    assert main(["verify", "--checkpoint", ckpt, str(a1), str(blank)]) == 1
    err = capsys.readouterr().err
    assert f"no face found in {blank}" in err and "--no-align" in err

    gallery = str(tmp_path / "gallery")
    assert run_cli(["enroll", people[0].name, str(a1), "--gallery", gallery, *args]) == 0
    assert run_cli(["enroll", people[1].name, str(b1), "--gallery", gallery, *args]) == 0
    capsys.readouterr()
    assert run_cli(["identify", str(a2), "--gallery", gallery, "--threshold", "-1", *args]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["photo"] == str(a2) and len(found["matches"]) == 2
    assert dict(found["matches"])[people[0].name] == pytest.approx(expected, abs=1e-4)  # a2 vs a1, as embed did
    if real is not None:
        assert found["name"] == people[0].name
