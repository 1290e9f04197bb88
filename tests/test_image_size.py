"""Image size from end to end (issue #15): alignment templates (facehw 64x64, insightface's ArcFace 112x112) at any
crop size, models resizing images of another size with one warning, size-relative augmentation, and a model
trained at 112x112 exported to ONNX and fed 64x64 images."""

from __future__ import annotations

import warnings
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import facerec
from conftest import make_hw2p2, tiny_overrides
from facerec.cli.main import build_parser, main
from facerec.config import Config, config_from_dict
from facerec.data.augment import PRESETS, augment, to_input
from facerec.data.images import decode_batch, decode_image
from facerec.errors import DataError
from facerec.inference.protocol import ImageSizeWarning
from facerec.photos.align import Face, FaceAligner
from facerec.photos.warp import TEMPLATE_64, TEMPLATES, similarity_transform, template_points, warp_similarity
from test_export import make_tiny_checkpoint

# insightface/utils/face_align.py `arcface_dst`, in OpenCV pixel-index coordinates (pixel i's centre at i)
ARCFACE_DST = [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]


def test_templates_scale_to_any_size_and_every_list_of_choices_agrees():
    np.testing.assert_array_equal(template_points("facehw", 64), TEMPLATE_64)
    np.testing.assert_allclose(template_points("arcface", 112), np.array(ARCFACE_DST) + 0.5, atol=1e-12)
    np.testing.assert_allclose(template_points("arcface", 224), (np.array(ARCFACE_DST) + 0.5) * 2, atol=1e-12)
    np.testing.assert_allclose(template_points("facehw", 112), TEMPLATE_64 * 1.75, atol=1e-12)
    with pytest.raises(ValueError, match="unknown alignment template 'dlib'; choose one of facehw, arcface"):
        template_points("dlib", 112)
    schema = {f.name: f.metadata for f in fields(Config().data)}["align_template"]["choices"]
    assert list(schema) == list(TEMPLATES) == ["facehw", "arcface"] and Config().data.align_template == "facehw"
    args = build_parser().parse_args(["embed", "x", "--out", "o.npz", "--align-template", "arcface"])
    assert args.align_template == "arcface"
    assert build_parser().parse_args(["align", "a", "b"]).align_template is None
    with pytest.raises(ValueError, match="choose one of"):
        FaceAligner(template="dlib")


@pytest.mark.parametrize("name, size", [("facehw", 64), ("arcface", 112), ("arcface", 64), ("facehw", 112)])
def test_landmarks_on_the_template_give_the_identity(name, size):
    """A face whose landmarks already sit on the template is left where it is: the fit is the identity and the
    warp returns the crop unchanged."""
    points = template_points(name, size)
    m = similarity_transform(points, points)
    np.testing.assert_allclose(m, [[1, 0, 0], [0, 1, 0]], atol=1e-9)
    crop = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    face = Face(np.array([0.0, 0, size, size]), 1.0, points)
    out = FaceAligner(size=size, template=name).align_face(Image.fromarray(crop), face)
    assert np.abs(np.asarray(out).astype(int) - crop).max() <= 1


def _dots(landmarks: np.ndarray, side: int, sigma: float) -> Image.Image:
    """A side x side photo with a Gaussian dot centred on each landmark (continuous coordinates)."""
    yy, xx = np.mgrid[0:side, 0:side] + 0.5  # pixel centres
    img = np.zeros((side, side))
    for x, y in landmarks:
        img += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return Image.fromarray(np.repeat((255 * img.clip(0, 1))[..., None], 3, axis=2).astype(np.uint8))


def _centroids(crop: np.ndarray, near: np.ndarray, r: int = 4) -> np.ndarray:
    """Intensity centroids (pixel-index coordinates) of the dots next to `near` (K, 2) in a uint8 crop."""
    out = []
    for x, y in near:
        x0, y0 = int(round(x)) - r, int(round(y)) - r
        patch = crop[y0 : y0 + 2 * r + 1, x0 : x0 + 2 * r + 1, 0].astype(float)
        yy, xx = np.mgrid[y0 : y0 + 2 * r + 1, x0 : x0 + 2 * r + 1]
        out.append([(patch * xx).sum() / patch.sum(), (patch * yy).sum() / patch.sum()])
    return np.array(out)


def _photo_face(points: np.ndarray) -> tuple[Image.Image, Face]:
    """A 300x300 'photo' whose five landmarks are `points` rotated 12 degrees, scaled 1.6x and moved."""
    a, s = np.radians(12), 1.6
    rot = s * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    landmarks = (np.asarray(points) - np.mean(points, axis=0)) @ rot.T + [160.0, 140.0]
    return _dots(landmarks, 300, 3.0), Face(np.array([60.0, 40, 260, 240]), 0.99, landmarks)


def test_the_arcface_template_puts_the_landmarks_where_insightface_does():
    """Warped with the ArcFace template at 112, the dots land on arcface_dst (pixel-index coordinates, as
    insightface's cv2.warpAffine crops have them); the model's template is used unless the aligner has its own."""
    photo, face = _photo_face(np.array(ARCFACE_DST))
    crop = FaceAligner(size=112, template="arcface").align_face(photo, face)
    assert crop.size == (112, 112)
    np.testing.assert_allclose(_centroids(np.asarray(crop), np.array(ARCFACE_DST)), ARCFACE_DST, atol=0.25)
    follows = FaceAligner(size=112).align_face(photo, face, model_template="arcface")
    np.testing.assert_array_equal(np.asarray(follows), np.asarray(crop))
    own = FaceAligner(size=112, template="facehw").align_face(photo, face, model_template="arcface")
    expected = warp_similarity(photo, similarity_transform(face.landmarks, TEMPLATE_64 * 112 / 64), 112)
    np.testing.assert_array_equal(np.asarray(own), np.asarray(expected))


def test_facehw_at_64_is_the_warp_it_always_was():
    """The default aligner (facehw, 64) fits the landmarks to TEMPLATE_64 itself, byte for byte; at 128 the
    template doubles, so the dots land at twice their 64x64 places."""
    photo, face = _photo_face(TEMPLATE_64 * 2)
    crop = FaceAligner().align_face(photo, face)
    expected = warp_similarity(photo, similarity_transform(face.landmarks, TEMPLATE_64), 64)
    np.testing.assert_array_equal(np.asarray(crop), np.asarray(expected))
    assert FaceAligner().crop(crop) is crop  # a photo of the aligner's size is a crop already
    big = np.asarray(FaceAligner(size=128).align_face(photo, face))
    np.testing.assert_allclose(_centroids(big, TEMPLATE_64 * 2), TEMPLATE_64 * 2 - 0.5, atol=0.35)


def _resized(u8: torch.Tensor, size: int) -> torch.Tensor:
    """The reference resize, PIL's antialiased bilinear, image by image."""
    return torch.stack(
        [
            torch.from_numpy(np.array(Image.fromarray(a).resize((size, size), Image.Resampling.BILINEAR)))
            for a in u8.numpy()
        ]
    )


def test_decode_batch_resizes_a_tensor_of_another_size_as_it_resizes_arrays():
    u8 = torch.randint(0, 256, (3, 20, 20, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    seen: list[tuple[int, int]] = []
    out = decode_batch(u8, 32, on_resize=lambda w, h: seen.append((w, h)))
    torch.testing.assert_close(out, _resized(u8, 32), rtol=0, atol=0)
    torch.testing.assert_close(out, decode_batch(list(u8.numpy()), 32), rtol=0, atol=0)
    assert seen == [(20, 20)] * 3
    assert decode_batch(u8, 20) is u8  # the model's size: passed through
    assert decode_batch(u8[:0], 32).shape == (0, 32, 32, 3)
    with pytest.raises(DataError, match=r"uint8 \(N, H, W, 3\) tensor, got torch.float32 \(3, 20, 20, 3\)"):
        decode_batch(u8.float(), 32)
    with pytest.raises(DataError, match="uint8"):
        decode_batch(u8[..., :1], 32)


def test_decode_image_reports_a_files_own_size(tmp_path: Path):
    """A big JPEG is DCT-shrunk while decoding, yet `on_resize` is told its size as stored."""
    path = tmp_path / "big.jpg"
    Image.new("RGB", (400, 300), (90, 120, 150)).save(path)
    seen: list[tuple[int, int]] = []
    assert decode_image(path, 32, on_resize=lambda w, h: seen.append((w, h))).shape == (32, 32, 3)
    assert seen == [(400, 300)]
    decode_image(np.zeros((32, 32, 3), np.uint8), 32, on_resize=lambda w, h: seen.append((w, h)))
    assert seen == [(400, 300)]


def _size_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, ImageSizeWarning)]


def test_a_model_resizes_other_sizes_and_warns_once(tmp_path: Path):
    """A 32x32 model given 48x48 images: embeddings equal those of the images resized first, and one warning
    naming both sizes over two calls; a second model instance warns again; the right size never warns."""
    ckpt = make_tiny_checkpoint(tmp_path / "m.pt", image_size=32)
    fm = facerec.load(ckpt)
    u8 = torch.randint(0, 256, (5, 48, 48, 3), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    small = _resized(u8, 32)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        first, second = fm.embed(u8), fm.class_scores(u8[:2])
        assert _size_warnings(record) == [
            "this model was trained on 32x32 images and was given a 48x48 one: images of another size are resized "
            "to 32x32 (antialiased bilinear); align or resize them to 32x32 to choose how"
        ]
        reference = fm.embed(small)
        torch.testing.assert_close(first, reference, rtol=0, atol=0)
        torch.testing.assert_close(second, fm.class_scores(small[:2]), rtol=0, atol=0)
        facerec.load(ckpt).embed(small)
        assert len(_size_warnings(record)) == 1  # the right size: silent
        facerec.load(ckpt).embed([u8[0].numpy()])
        assert len(_size_warnings(record)) == 2  # another model: its own warning


@pytest.mark.parametrize("preset", ["standard", "robust"])
def test_augmentation_is_relative_to_the_image_size(preset: str):
    """Shifts, zooms, rotations and low-resolution factors are fractions of the side: one face augmented at 112
    and shrunk to 64 matches the same face augmented at 64 with the same random draws (and not with others)."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 112), torch.linspace(-1, 1, 112), indexing="ij")
    smooth = torch.stack([torch.sin(3 * xx + yy), torch.cos(2 * yy - xx), torch.sin(xx * yy * 4)], -1)
    big = ((smooth + 1) * 127.5).round().to(torch.uint8).expand(8, -1, -1, -1).contiguous()
    small = _resized(big, 64)

    def run(u8: torch.Tensor, seed: int) -> torch.Tensor:
        return augment(to_input(u8), PRESETS[preset], torch.Generator().manual_seed(seed))

    shrunk = F.interpolate(run(big, 3), size=(64, 64), mode="bilinear", antialias=True, align_corners=False)
    same, other = (shrunk - run(small, 3)).abs().mean(), (shrunk - run(small, 4)).abs().mean()
    assert same < 0.04 and other > 4 * same, (float(same), float(other))


def _train_export(tmp_path: Path, backbone: str) -> tuple[Path, Path]:
    """A few steps at data.image_size=112 on a tiny 112x112 dataset, then the .onnx export of its best.pt."""
    data = make_hw2p2(tmp_path / "hw", n_ids=4, per_id=4, size=112)
    run = tmp_path / "run"
    overrides = tiny_overrides(
        f"model.backbone={backbone}",
        "data.image_size=112",
        "data.align_template=arcface",
        "data.batch_size=8",
        "train.max_steps_per_epoch=2",
    )
    assert main(["train", "--data", str(data), "--out", str(run), "train.epochs=1", *overrides]) == 0
    onnx = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(run / "best.pt"), "--out", str(onnx), "--no-check"]) == 0
    return run / "best.pt", onnx


@pytest.mark.parametrize("backbone", ["tiny_cnn", pytest.param("iresnet18", marks=pytest.mark.slow)])
def test_train_at_112_export_and_embed_64px_images(tmp_path: Path, monkeypatch, backbone: str):
    """Trained at 112, exported to ONNX, loaded with facerec.load: a 64x64 image is resized (one warning per
    model), both backends agree, and the config carries the size and the ArcFace template."""
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("FACEREC_CACHE", str(tmp_path / "cache"))
    pt_path, onnx_path = _train_export(tmp_path, backbone)
    face = torch.randint(0, 256, (2, 64, 64, 3), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    for path in (pt_path, onnx_path):
        fm = facerec.load(path)
        assert fm.image_size == 112 and fm.config.data.align_template == "arcface"
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            got = [fm.embed(face), fm.embed([face[0].numpy()])]
        assert len(_size_warnings(record)) == 1 and "112x112" in _size_warnings(record)[0]
        if path == pt_path:
            pt = got
        torch.testing.assert_close(got[0], fm.embed(_resized(face, 112)), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got[0], pt[0], rtol=1e-4, atol=1e-4)  # .onnx against .pt
    torch.testing.assert_close(got[1], pt[1], rtol=1e-4, atol=1e-4)
    assert config_from_dict({"data": {"image_size": 112}}).data.align_template == "facehw"  # older configs
