"""facerec.load: one loader for run checkpoints, model files, ensembles and ONNX exports, and every `--checkpoint`
command taking each of them (inference/load.py, inference/protocol.py)."""

from __future__ import annotations

import csv
import inspect
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import facerec
from conftest import REPO, make_hw2p2
from facerec.cli.main import main
from facerec.config import config_from_dict
from facerec.data.images import decode_image
from facerec.engine.checkpoint import load_checkpoint, save_checkpoint
from facerec.errors import CheckpointError, DataError
from facerec.evaluation.ensemble import build_ensemble
from facerec.inference.load import load
from facerec.inference.model import EnsembleFaceModel, FaceModel
from facerec.inference.protocol import FaceModelLike
from test_export import make_tiny_checkpoint, rel_err

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
from facerec.inference.export import export_onnx  # noqa: E402
from facerec.inference.onnx import OnnxFaceModel  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A tiny model, a 2-model ensemble, and the ONNX export of each."""
    tmp = tmp_path_factory.mktemp("load")
    pt = make_tiny_checkpoint(tmp / "best.pt")
    members = [make_tiny_checkpoint(tmp / f"m{i}.pt", seed=i + 1) for i in range(2)]
    build_ensemble(members, tmp / "ens.pt", log=lambda m: None)
    return {
        "pt": pt,
        "ens": tmp / "ens.pt",
        "onnx": export_onnx(pt, tmp / "model.onnx")[0],
        "ens_onnx": export_onnx(tmp / "ens.pt", tmp / "ens.onnx")[0],
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_hw2p2(tmp_path_factory.mktemp("hw") / "hw", n_ids=3)  # identities "1", "4", "7", as the models'


def _images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    "kind, cls",
    [("pt", FaceModel), ("ens", EnsembleFaceModel), ("onnx", OnnxFaceModel), ("ens_onnx", OnnxFaceModel)],
)
def test_every_kind_of_model_file_satisfies_the_protocol(files, kind, cls):
    model = load(files[kind])
    assert type(model) is cls and isinstance(model, FaceModelLike)
    assert model.image_size == 32 and model.scoring == "cosine" and model.classes == ["1", "4", "7"]
    assert isinstance(model.fingerprint, str) and len(model.fingerprint) == 16
    assert model.config.model.embedding_dim == model.info()["embedding_dim"] == (32 if "ens" in kind else 16)
    for name, member in vars(FaceModelLike).items():  # each method: the protocol's parameters, same defaults
        if name.startswith("_") or not callable(member):
            continue
        want = list(inspect.signature(member).parameters.values())[1:]
        got = list(inspect.signature(getattr(model, name)).parameters.values())
        assert [(p.name, p.default) for p in got[: len(want)]] == [(p.name, p.default) for p in want], name
        assert all(p.default is not inspect.Parameter.empty for p in got[len(want) :]), name


@pytest.mark.parametrize("pt, onnx", [("pt", "onnx"), ("ens", "ens_onnx")])
def test_an_onnx_export_gives_its_checkpoints_embeddings_and_class_scores(files, pt, onnx):
    torch_model, onnx_model = load(files[pt]), load(files[onnx])
    x = _images(5, seed=1)
    for flip in (True, False):
        assert rel_err(onnx_model.embed(x, flip=flip), torch_model.embed(x, flip=flip)) < 1e-4
        ref = torch_model.class_scores(x, flip=flip)
        assert rel_err(onnx_model.class_scores(x, flip=flip), ref) < 1e-4
    assert [c[0][0] for c in onnx_model.classify(x)] == [c[0][0] for c in torch_model.classify(x)]
    assert onnx_model.fingerprint == torch_model.fingerprint  # galleries of the one open with the other
    assert onnx_model.threshold == pytest.approx(torch_model.threshold)
    assert onnx_model.embed([]).shape == (0, torch_model.info()["embedding_dim"])


def _prototype_checkpoint(path: Path, prototypes: torch.Tensor | None) -> Path:
    """A tiny model trained (say) with triplet loss: no classifier; class scores only from prototypes."""
    state = load_checkpoint(make_tiny_checkpoint(path))
    state["config"]["loss"] = {"name": "triplet", "params": {}, "extra": [], "scoring": "auto"}
    state["loss"] = {}
    state.pop("format"), state.pop("version")
    if prototypes is not None:
        state["prototypes"] = prototypes
    assert config_from_dict(state["config"]).loss.name == "triplet"
    return save_checkpoint(state, path)


def test_class_scores_from_prototypes_and_a_clear_error_without_them(tmp_path):
    protos = torch.randn(3, 16, generator=torch.Generator().manual_seed(0))
    pt = _prototype_checkpoint(tmp_path / "p.pt", protos)
    om, fm = load(export_onnx(pt, tmp_path / "p.onnx")[0]), load(pt)
    x = _images(4, seed=2)
    expected = torch.nn.functional.normalize(fm.embed(x), dim=1) @ torch.nn.functional.normalize(protos, dim=1).T
    torch.testing.assert_close(fm.class_scores(x), expected)
    assert rel_err(om.class_scores(x), expected) < 1e-4
    bare = load(export_onnx(_prototype_checkpoint(tmp_path / "b.pt", None), tmp_path / "b.onnx")[0])
    with pytest.raises(CheckpointError, match="no classifier and the checkpoint no class prototypes"):
        bare.class_scores(x)
    assert bare.embed(x).shape == (4, 16)  # verification still works


def test_an_older_onnx_export_says_how_to_get_class_scores(files, tmp_path):
    old = tmp_path / "old.onnx"
    shutil.copyfile(files["onnx"], old)
    meta = json.loads(Path(f"{files['onnx']}.json").read_text())
    del meta["class_scores"], meta["fingerprint"]  # what facerec before 0.2 wrote
    Path(f"{old}.json").write_text(json.dumps(meta))
    model = load(old)
    assert model.fingerprint is None and model.embed(_images(2)).shape == (2, 16)
    with pytest.raises(CheckpointError, match=r"export it again with `facerec export --checkpoint MODEL.pt --out"):
        model.class_scores(_images(2))


def test_evaluate_predict_and_verify_take_an_onnx_model(files, data, tmp_path, capsys):
    results = {}
    for kind in ("pt", "onnx"):
        assert main(["evaluate", "--checkpoint", str(files[kind]), "--data", str(data), "--json"]) == 0
        results[kind] = json.loads(capsys.readouterr().out)
        out = tmp_path / kind
        assert main(["predict", "--checkpoint", str(files[kind]), "--data", str(data), "--out", str(out)]) == 0
        assert "classification_submission.csv (12 rows)" in capsys.readouterr().out
    pt, onnx = results["pt"], results["onnx"]
    assert onnx["accuracy"] == pt["accuracy"] and onnx["top5"] == pt["top5"]  # top-1 from the class head
    assert onnx["auc"] == pytest.approx(pt["auc"], abs=1e-6)
    sub = "classification_submission.csv"
    assert (tmp_path / "onnx" / sub).read_text() == (tmp_path / "pt" / sub).read_text()
    rows = [list(csv.DictReader((tmp_path / k / "verification_submission.csv").open())) for k in ("pt", "onnx")]
    assert [r["Id"] for r in rows[0]] == [r["Id"] for r in rows[1]]
    np.testing.assert_allclose(
        [float(r["Category"]) for r in rows[1]], [float(r["Category"]) for r in rows[0]], atol=1e-5
    )
    a, b = sorted((data / "verification_data").glob("*.jpg"))[:2]
    scores = []
    for kind in ("pt", "onnx"):
        assert main(["verify", "--checkpoint", str(files[kind]), str(a), str(b), "--no-align", "--json"]) == 0
        scores.append(json.loads(capsys.readouterr().out)["score"])
    assert scores[1] == pytest.approx(scores[0], abs=1e-5)
    assert scores[0] == pytest.approx(load(files["pt"]).score(a, b), abs=1e-6)


def test_enroll_and_identify_take_an_onnx_model(files, data, tmp_path, capsys):
    pytest.importorskip("faiss")
    people = data / "classification_data" / "val_data"
    gallery = tmp_path / "gallery"
    assert (
        main(
            [
                "enroll",
                "--folder",
                str(people),
                "--gallery",
                str(gallery),
                "--checkpoint",
                str(files["pt"]),
                "--no-align",
                "--json",
            ]
        )
        == 0
    )
    probes = [str(p) for p in sorted((data / "classification_data" / "test_data").glob("*.jpg"))[:4]]
    found = []
    for kind in ("pt", "onnx"):  # a gallery built with the .pt model opens with its ONNX export (same fingerprint)
        argv = ["identify", *probes, "--gallery", str(gallery), "--checkpoint", str(files[kind])]
        assert main([*argv, "--no-align", "--json", "--threshold", "-1"]) == 0
        found.append(json.loads(capsys.readouterr().out))
    assert [r["name"] for r in found[1]] == [r["name"] for r in found[0]]
    np.testing.assert_allclose([r["score"] for r in found[1]], [r["score"] for r in found[0]], atol=1e-5)
    other = make_tiny_checkpoint(tmp_path / "other.pt", seed=9)
    assert main(["identify", probes[0], "--gallery", str(gallery), "--checkpoint", str(other), "--no-align"]) == 1
    assert "built with another model" in capsys.readouterr().err


def test_calibrate_writes_the_threshold_where_the_onnx_model_reads_it(files, data, tmp_path, capsys):
    copy = tmp_path / "cal.onnx"
    pairs = data / "verification_pairs_val.txt"
    argv = ["calibrate", "--checkpoint", str(files["onnx"]), "--pairs", str(pairs), "--root", str(data)]
    assert main([*argv, "--far", "0.1", "--out", str(copy), "--no-align", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert load(copy).threshold == pytest.approx(result["threshold"])  # the sidecar
    Path(f"{copy}.json").unlink()
    assert load(copy).threshold == pytest.approx(result["threshold"])  # the metadata inside the ONNX file
    assert load(copy).class_scores(_images(1)).shape == (1, 3)  # the class head came along
    assert load(files["onnx"]).threshold == pytest.approx(0.3)  # the original is untouched
    assert main([*argv, "--out", str(tmp_path / "cal.pt"), "--no-align"]) == 1
    assert "must be an .onnx file too" in capsys.readouterr().err


def test_training_and_ensembles_refuse_an_onnx_file_and_say_why(files, data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--resume-from", str(files["onnx"])]) == 1
    assert "is an ONNX export" in capsys.readouterr().err
    argv = ["train", "--data", str(data), "--out", str(run), f"train.init_from={files['onnx']}", "train.epochs=1"]
    assert main([*argv, "model.backbone=tiny_cnn", "model.embedding_dim=16", "train.device=cpu"]) == 1
    assert "the .pt checkpoint or model file it was exported from" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="cannot be trained, resumed, re-exported or put in an ensemble"):
        build_ensemble([files["pt"], files["onnx"]], tmp_path / "e.pt", log=lambda m: None)
    assert main(["export", "--checkpoint", str(files["onnx"]), "--out", str(tmp_path / "x.onnx")]) == 1
    with pytest.warns(DeprecationWarning), pytest.raises(CheckpointError, match="is an ONNX export"):
        FaceModel.load(files["onnx"])


def test_a_missing_image_is_reported_as_missing(files, tmp_path):
    gone = tmp_path / "gone.jpg"
    for kind in ("pt", "onnx"):
        with pytest.raises(DataError, match=f"image {gone} does not exist"):
            load(files[kind]).embed([gone])
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="bad.jpg: not an image, or corrupt"):
        decode_image(tmp_path / "bad.jpg", 8)
    with pytest.raises(DataError, match="is a folder, not an image file"):
        decode_image(tmp_path, 8)
    with pytest.raises(DataError, match=r"shape \(4, 4, 2\)"):
        decode_image(np.zeros((4, 4, 2), np.uint8), 8)


def test_every_source_decodes_to_the_same_pixels(tmp_path):
    """Path, bytes, PIL image and array of one PNG: the same uint8 crop (the one decoder of data/images.py)."""
    pixels = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    ref = decode_image(tmp_path / "a.png", 16)
    assert ref.shape == (16, 16, 3) and ref.dtype == np.uint8
    for source in ((tmp_path / "a.png").read_bytes(), Image.fromarray(pixels), pixels, str(tmp_path / "a.png")):
        np.testing.assert_array_equal(decode_image(source, 16), ref)
    np.testing.assert_array_equal(decode_image(pixels[:16, :16], 16), pixels[:16, :16])  # right size: untouched


def test_deprecated_loaders_still_work(files):
    from facerec.inference.onnx import load_any

    x = _images(2)
    with pytest.warns(DeprecationWarning, match="facerec.load"):
        old = FaceModel.load(files["ens"])
    assert isinstance(old, EnsembleFaceModel)
    torch.testing.assert_close(old.embed(x), facerec.load(files["ens"]).embed(x))
    with pytest.warns(DeprecationWarning, match="facerec.load"):
        assert isinstance(load_any(files["onnx"]), OnnxFaceModel)


def test_inference_imports_neither_evaluation_nor_the_training_run():
    code = (
        "import sys, facerec.inference.load, facerec.inference.export; "
        "print(sorted(m for m in sys.modules if m.startswith(('facerec.evaluation', 'facerec.engine.run', "
        "'facerec.engine.fit', 'facerec.photos'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "name, cls",
    [
        ("facehw.pt", FaceModel),
        ("facehw_ensemble.pt", EnsembleFaceModel),
        ("facehw_distilled.pt", FaceModel),
        ("facehw_dlib_student.pt", FaceModel),
    ],
)
def test_the_shipped_models_load(name, cls, facehw):
    path = REPO / "models" / name
    if not path.is_file():
        pytest.skip(f"models/{name} is not in this checkout")
    model = load(path)
    assert type(model) is cls and len(model.classes) == 735 and model.threshold is not None
    image = sorted((facehw / "verification_data").glob("*.jpg"))[0]
    assert model.embed([image]).shape == (1, model.info()["embedding_dim"])
    assert model.class_scores([image]).shape == (1, 735)
