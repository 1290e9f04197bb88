"""`facerec embed` / facerec.photos.embed: photos (files and folders) -> an embedding file and back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import facerec
from facerec.data.folder import DataError
from facerec.photos.align import FaceAligner
from facerec.photos.embed import EmbeddingSet, embed_files, list_inputs, load_embeddings, save_embeddings
from test_export import make_tiny_checkpoint, photos
from test_lfw import one_thread, run_cli  # noqa: F401  (one_thread: autouse fixture)


@pytest.fixture
def model_and_photos(tmp_path: Path) -> tuple[Path, Path]:
    ckpt = make_tiny_checkpoint(tmp_path / "m.pt", threshold=0.25)
    root = tmp_path / "people"
    photos(root / "ann", 3, seed=1)
    photos(root / "bob", 2, seed=2)
    return ckpt, root


def test_embeds_every_photo_of_folders_and_files_like_the_model_does(model_and_photos, tmp_path):
    ckpt, root = model_and_photos
    extra = photos(tmp_path / "loose", 1, seed=3)[0]
    fm = facerec.load(ckpt)
    es = embed_files(fm, [root, extra, root / "ann" / "0.jpg"], log=lambda m: None, chunk=2)  # chunks of 2
    expected_paths = [root / "ann" / f"{i}.jpg" for i in range(3)] + [root / "bob" / f"{i}.jpg" for i in range(2)]
    assert es.paths == [str(p) for p in expected_paths + [extra]]  # folder order, then the file; no repeat
    reference = fm.embed([Path(p) for p in es.paths]).numpy()
    np.testing.assert_allclose(es.embeddings, reference, rtol=1e-5, atol=1e-6)
    assert es.embeddings.dtype == np.float32 and es.embeddings.shape == (6, 16)
    assert es.scoring == "cosine" and es.threshold == pytest.approx(0.25)
    no_flip = embed_files(fm, [extra], flip=False, log=lambda m: None)
    np.testing.assert_allclose(no_flip.embeddings, fm.embed([extra], flip=False).numpy(), rtol=1e-5, atol=1e-6)


def test_unreadable_photos_are_skipped_and_listed(model_and_photos):
    ckpt, root = model_and_photos
    (root / "bob" / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "bob" / "empty.png").write_bytes(b"")
    es = embed_files(facerec.load(ckpt), [root], log=lambda m: None)
    assert len(es) == 5 and sorted(Path(p).name for p in es.unreadable) == ["broken.jpg", "empty.png"]
    assert not any("broken" in p for p in es.paths)
    with pytest.raises(DataError, match="none of the 2 photos could be embedded"):
        embed_files(
            facerec.load(ckpt), [root / "bob" / "broken.jpg", root / "bob" / "empty.png"], log=lambda m: None
        )


def test_inputs_that_are_missing_or_hold_no_images(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        list_inputs([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="no images under"):
        list_inputs([tmp_path / "empty"])


@pytest.mark.parametrize("suffix", [".npz", ".csv"])
def test_file_round_trip(tmp_path, suffix):
    rng = np.random.default_rng(0)
    es = EmbeddingSet(
        rng.normal(size=(4, 3)).astype(np.float32),
        ["a.jpg", "dir/b c.jpg", "é.png", "d,e.jpg"],
        "euclidean",
        -1.25,
    )
    back = load_embeddings(save_embeddings(es, tmp_path / "sub" / f"e{suffix}"))
    assert back.paths == es.paths
    np.testing.assert_array_equal(back.embeddings, es.embeddings)  # repr() of a float32 round-trips exactly
    if suffix == ".npz":
        assert (back.scoring, back.threshold) == ("euclidean", -1.25)
        with np.load(tmp_path / "sub" / "e.npz", allow_pickle=False) as z:  # plain arrays, nothing pickled
            assert set(z.files) == {"embeddings", "paths", "scoring", "threshold"}
    else:
        header = (tmp_path / "sub" / "e.csv").read_text().splitlines()[0]
        assert header == "path,e0,e1,e2" and (back.scoring, back.threshold) == ("cosine", None)
    assert not list((tmp_path / "sub").glob("*.tmp"))


def test_file_errors(tmp_path):
    es = EmbeddingSet(np.zeros((1, 2), np.float32), ["a.jpg"])
    with pytest.raises(ValueError, match=r"name it \.npz \(NumPy\) or \.csv"):
        save_embeddings(es, tmp_path / "e.json")
    with pytest.raises(DataError, match="does not exist"):
        load_embeddings(tmp_path / "none.npz")
    (tmp_path / "x.csv").write_text("file,v\na.jpg,1\n")
    with pytest.raises(DataError, match="header must be path,e0"):
        load_embeddings(tmp_path / "x.csv")
    (tmp_path / "y.csv").write_text("path,e0,e1\na.jpg,1,zero\n")
    with pytest.raises(DataError, match="not a number"):
        load_embeddings(tmp_path / "y.csv")
    (tmp_path / "h.csv").write_text("path,e0,e1\n")
    with pytest.raises(DataError, match="holds no embeddings"):
        load_embeddings(tmp_path / "h.csv")
    (tmp_path / "z.csv").write_text("path,e0,e1\na.jpg,1\n")
    with pytest.raises(DataError, match="a path and 2 values"):
        load_embeddings(tmp_path / "z.csv")
    (tmp_path / "w.npz").write_bytes(b"PK not really")
    with pytest.raises(DataError, match="not an embedding file"):
        load_embeddings(tmp_path / "w.npz")


def test_cli_embed_json_and_file(model_and_photos, tmp_path, capsys):
    ckpt, root = model_and_photos
    (root / "bob" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    out = tmp_path / "emb.npz"
    assert run_cli(["embed", str(root), "--out", str(out), "--checkpoint", str(ckpt), "--json", "--no-align"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["embedded"] == 5 and result["dim"] == 16 and result["out"] == str(out)
    assert [Path(p).name for p in result["unreadable"]] == ["broken.jpg"]
    es = load_embeddings(out)
    np.testing.assert_allclose(
        es.embeddings, facerec.load(ckpt).embed([Path(p) for p in es.paths]).numpy(), rtol=1e-5, atol=1e-6
    )
    assert (
        run_cli(
            [
                "embed",
                str(root / "ann"),
                "--out",
                str(tmp_path / "e.csv"),
                "--checkpoint",
                str(ckpt),
                "--no-flip",
                "--no-align",
            ]
        )
        == 0
    )
    assert "3 embeddings (16-d, cosine scoring)" in capsys.readouterr().out
    back = load_embeddings(tmp_path / "e.csv")
    assert back.paths == es.paths[:3]
    np.testing.assert_allclose(
        back.embeddings,
        facerec.load(ckpt).embed([Path(p) for p in back.paths], flip=False).numpy(),
        rtol=1e-5,
        atol=1e-6,
    )


def test_onnx_export_embeds_like_the_checkpoint(model_and_photos, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from facerec.inference.export import export_onnx

    ckpt, root = model_and_photos
    onnx_path = tmp_path / "m.onnx"
    export_onnx(ckpt, onnx_path)
    a = embed_files(facerec.load(ckpt), [root], log=lambda m: None)
    b = embed_files(facerec.load(onnx_path), [root], log=lambda m: None)
    assert a.paths == b.paths and b.threshold == pytest.approx(0.25)
    np.testing.assert_allclose(b.embeddings, a.embeddings, rtol=1e-4, atol=1e-4)


def test_no_face_policy_skip_or_whole_on_a_real_face_and_a_blank_photo(shared_data, tmp_path):
    """skip: the blank photo is left out and listed; whole: it is embedded whole, resized (what --no-align
    embeds), and listed too; the face rows are the aligned crops either way."""
    pytest.importorskip("facenet_pytorch")
    from facerec.photos.align import FaceAligner, load_face
    from facerec.photos.embed import embed_photos
    from test_lfw import real_checkpoint

    ckpt = real_checkpoint() or make_tiny_checkpoint(tmp_path / "m.pt", image_size=64)
    person = sorted((shared_data / "lfw_tiny" / "classify").iterdir())[0]
    faces = sorted(person.iterdir())[:2]
    blank = tmp_path / "blank.jpg"
    Image.new("RGB", (120, 120), (128, 128, 128)).save(blank)
    fm, aligner = facerec.load(ckpt), FaceAligner()
    skip = embed_photos(fm, [*faces, blank], aligner, log=lambda m: None)
    assert skip.paths == [str(p) for p in faces] and skip.no_face == [str(blank)] and not skip.unreadable
    reference = fm.embed([load_face(p, aligner) for p in faces]).numpy()
    np.testing.assert_allclose(skip.embeddings, reference, rtol=1e-4, atol=1e-4)
    assert torch.from_numpy(skip.embeddings).isfinite().all()

    whole = embed_photos(fm, [faces[0], blank], aligner, no_face="whole", log=lambda m: None)
    assert whole.paths == [str(faces[0]), str(blank)] and whole.no_face == [str(blank)]
    np.testing.assert_allclose(whole.embeddings[0], skip.embeddings[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(whole.embeddings[1], fm.embed([blank])[0].numpy(), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="choose 'skip' or 'whole'"):
        embed_photos(fm, [blank], aligner, no_face="drop", log=lambda m: None)  # type: ignore[arg-type]


class SpyAligner(FaceAligner):
    """A FaceAligner whose detector records the photo sizes it is shown and finds no face (no MTCNN needed)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, int]] = []

    def detect(self, img):
        self.seen.append(img.size)
        return []


def test_a_photo_of_the_model_input_size_is_taken_as_an_aligned_crop(tmp_path):
    """32x32 photos for a 32x32 model are embedded as they are, never shown to the detector; a 48x48 photo is."""
    from facerec.photos.embed import embed_photos

    fm = facerec.load(make_tiny_checkpoint(tmp_path / "m.pt", image_size=32))
    crops, raw = photos(tmp_path / "crops", 2, size=32), photos(tmp_path / "raw", 1, size=48, seed=7)[0]
    spy = SpyAligner()
    es = embed_photos(fm, [*crops, raw], spy, log=lambda m: None)
    assert spy.seen == [(48, 48)] and es.paths == [str(p) for p in crops] and es.no_face == [str(raw)]
    np.testing.assert_allclose(es.embeddings, fm.embed(crops).numpy(), rtol=1e-5, atol=1e-6)
    whole = embed_photos(fm, [raw, crops[0]], spy, no_face="whole", log=lambda m: None)
    np.testing.assert_allclose(whole.embeddings, fm.embed([raw, crops[0]]).numpy(), rtol=1e-5, atol=1e-6)


def test_no_align_resizes_and_align_is_still_accepted(model_and_photos, tmp_path, monkeypatch, capsys):
    """--no-align embeds exactly what FaceModel.embed(path) does; --align (the default now) still parses, and
    contradicting switches are refused. Run through `facerec` itself (cli/main.py registers the module)."""
    from facerec.cli.main import build_parser, main

    ckpt, root = model_and_photos
    out = tmp_path / "e.npz"
    assert main(["embed", str(root), "--out", str(out), "--checkpoint", str(ckpt), "--no-align", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["aligned"] is False
    es = load_embeddings(out)
    reference = facerec.load(ckpt).embed([Path(p) for p in es.paths]).numpy()
    np.testing.assert_allclose(es.embeddings, reference, rtol=1e-5, atol=1e-6)
    assert build_parser().parse_args(["embed", "x", "--out", "o.npz", "--align"]).align is True
    assert build_parser().parse_args(["identify", "x", "--gallery", "g", "--checkpoint", "c"]).align is True
    with pytest.raises(SystemExit):
        build_parser().parse_args(["embed", "x", "--out", "o.npz", "--align", "--no-align"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_missing_photo_extra_says_how_to_install_or_no_align(tmp_path, monkeypatch, capsys):
    """Without facenet-pytorch, crops of the model's size still embed (MTCNN is loaded only when a photo needs
    it); any other photo stops the command with the install line and the --no-align way out."""
    import sys

    from facerec.cli.main import main

    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)  # `from facenet_pytorch import MTCNN` fails
    ckpt = make_tiny_checkpoint(tmp_path / "m.pt", image_size=32)
    crops = photos(tmp_path / "crops", 2, size=32)
    assert run_cli(["embed", *map(str, crops), "--out", str(tmp_path / "e.npz"), "--checkpoint", str(ckpt)]) == 0
    raw = photos(tmp_path / "raw", 1, size=48)
    with pytest.raises(
        ValueError, match=r"pip install --no-deps facenet-pytorch==2\.6\.0 && pip install -e"
    ) as err:
        run_cli(["embed", *map(str, raw), "--out", str(tmp_path / "f.npz"), "--checkpoint", str(ckpt)])
    assert "'.[photos]'" in str(err.value) and "--no-align" in str(err.value)
    capsys.readouterr()
    assert main(["verify", "--checkpoint", str(ckpt), str(raw[0]), str(crops[0])]) == 1
    assert "facenet-pytorch" in capsys.readouterr().err
    assert main(["verify", "--checkpoint", str(ckpt), str(raw[0]), str(crops[0]), "--no-align", "--json"]) == 0
    score = json.loads(capsys.readouterr().out)["score"]
    assert score == pytest.approx(facerec.load(ckpt).score(raw[0], crops[0]), abs=1e-5)
