"""Export: the slim .pt file, ONNX + sidecar, and ONNX Runtime giving PyTorch's embeddings and scores."""

from __future__ import annotations

import argparse
import base64
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import facerec
from facerec.config import config_from_dict, config_to_dict
from facerec.engine.build import build_loss_fn, build_model
from facerec.engine.checkpoint import load_checkpoint, save_checkpoint

CLASSES = ["1", "4", "7"]


def make_tiny_checkpoint(
    path: Path,
    image_size: int = 32,
    threshold: float | None = 0.3,
    seed: int = 0,
    classes: list[str] = CLASSES,
    scoring: str = "cosine",
) -> Path:
    """A tiny_cnn checkpoint with random weights AND random BatchNorm statistics (so eval-mode BN matters)."""
    torch.manual_seed(seed)
    cfg = config_from_dict(
        {"model": {"backbone": "tiny_cnn", "embedding_dim": 16}, "data": {"image_size": image_size}}
    )
    model, loss_fn = build_model(cfg), build_loss_fn(cfg, len(classes))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    state = {
        "config": config_to_dict(cfg),
        "classes": classes,
        "epoch": 1,
        "model": model.state_dict(),
        "loss": loss_fn.state_dict(),
        "scoring": scoring,
        "threshold": threshold,
        "optimizer": {"dummy": torch.zeros(3)},
    }
    return save_checkpoint(state, path)


def photos(folder: Path, n: int, size: int = 48, seed: int = 1) -> list[Path]:
    """n random RGB JPEGs of size x size (not the model's size: the resize path is exercised)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = folder / f"{i}.jpg"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(p, quality=90)
        out.append(p)
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    pytest.importorskip("onnxruntime")
    from facerec.inference.export import export_onnx

    tmp = tmp_path_factory.mktemp("export")
    ckpt = make_tiny_checkpoint(tmp / "best.pt", image_size=32)
    onnx_path, _ = export_onnx(ckpt, tmp / "model.onnx")
    return ckpt, onnx_path


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got - ref).abs().max() / ref.abs().max())


def test_onnx_sidecar_has_what_a_user_needs(exported):
    ckpt, onnx_path = exported
    meta = json.loads(Path(f"{onnx_path}.json").read_text())
    assert meta["format"] == "facerec-onnx" and meta["classes"] == CLASSES
    assert meta["image_size"] == 32 and meta["scoring"] == "cosine" and meta["threshold"] == 0.3
    assert meta["input"]["range"] == [-1.0, 1.0] and meta["input"]["layout"] == "NCHW"
    assert meta["model"]["backbone"] == "tiny_cnn" and "flip" in meta["flip_tta"]
    onnx = pytest.importorskip("onnx")
    proto = onnx.load(str(onnx_path))
    onnx.checker.check_model(proto)
    stored = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(stored["facerec"]) == meta  # the ONNX file alone carries the same facts
    assert meta["fingerprint"] == facerec.load(ckpt).fingerprint
    head = meta["class_scores"]  # the closed-set class head: a second graph, stored in the ONNX file
    assert head["features"] == "embedding" and head["output"] == {"name": "class_scores", "shape": ["N", 3]}
    head_proto = onnx.load_from_string(base64.b64decode(stored[head["metadata_key"]]))
    assert [i.name for i in head_proto.graph.input] == ["features"]


@pytest.mark.parametrize("batch", [1, 7])  # the export used batch 2: the batch axis must be dynamic
def test_onnx_runtime_matches_pytorch_on_random_inputs(exported, batch):
    import onnxruntime as ort

    ckpt, onnx_path = exported
    fm = facerec.load(ckpt)
    x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch)) * 2 - 1
    with torch.no_grad():
        ref = fm.model(x)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(["embedding"], {"input": x.numpy()})[0])
    assert got.shape == (batch, 16)
    assert rel_err(got, ref) < 1e-4


def test_onnx_face_model_matches_face_model(exported, tmp_path):
    from facerec.inference.onnx import OnnxFaceModel

    ckpt, onnx_path = exported
    fm, om = facerec.load(ckpt), facerec.load(onnx_path)
    assert isinstance(om, OnnxFaceModel)
    files = photos(tmp_path, 4)
    for flip in (True, False):
        assert rel_err(om.embed(files, flip=flip), fm.embed(files, flip=flip)) < 1e-4
    assert abs(om.score(files[0], files[1]) - fm.score(files[0], files[1])) < 1e-5
    v_onnx, v_torch = om.verify(files[0], files[2]), fm.verify(files[0], files[2])
    assert v_onnx.threshold == v_torch.threshold and v_onnx.same == v_torch.same
    assert om.info()["embedding_dim"] == 16 and om.image_size == 32


def test_onnx_metadata_is_enough_without_sidecar(exported, tmp_path):
    pytest.importorskip("onnx")
    from facerec.inference.onnx import OnnxFaceModel

    ckpt, onnx_path = exported
    alone = tmp_path / "alone.onnx"
    alone.write_bytes(onnx_path.read_bytes())  # no alone.onnx.json next to it
    om = OnnxFaceModel(alone)
    assert om.classes == CLASSES and om.threshold == 0.3


def test_onnx_matches_pytorch_on_real_faces(facehw, tmp_path):
    pytest.importorskip("onnxruntime")
    from facerec.inference.export import export_onnx
    from facerec.inference.onnx import OnnxFaceModel

    files = sorted((facehw / "verification_data").glob("*.jpg"))[:16]
    ckpt = make_tiny_checkpoint(tmp_path / "best.pt", image_size=64)
    onnx_path, _ = export_onnx(ckpt, tmp_path / "m.onnx")
    ref, got = facerec.load(ckpt).embed(files), OnnxFaceModel(onnx_path).embed(files)
    assert rel_err(got, ref) < 1e-4


def run_cli(argv: list[str]) -> int:
    from facerec.cli.serve import COMMANDS, add_parsers

    parser = argparse.ArgumentParser(prog="facerec")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return COMMANDS[args.command](args)


def test_cli_export_pt_half_is_slim_and_loads(tmp_path, capsys):
    ckpt = make_tiny_checkpoint(tmp_path / "best.pt")
    assert run_cli(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "m.pt"), "--half"]) == 0
    state = load_checkpoint(tmp_path / "m.pt")
    assert "optimizer" not in state and state["model"]["fc.weight"].dtype == torch.float16
    files = photos(tmp_path / "img", 2)
    full, half = facerec.load(ckpt).embed(files), facerec.load(tmp_path / "m.pt").embed(files)
    assert rel_err(half, full) < 1e-2  # fp16 weights, fp32 compute


def test_cli_export_onnx_reports_agreement(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    ckpt = make_tiny_checkpoint(tmp_path / "best.pt")
    assert run_cli(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "m.onnx")]) == 0
    out = capsys.readouterr().out
    assert "m.onnx.json" in out and "relative error" in out


def test_export_refuses_unknown_suffix_and_half_onnx(tmp_path):
    from facerec.inference.export import export_model

    ckpt = make_tiny_checkpoint(tmp_path / "best.pt")
    with pytest.raises(ValueError, match=r"\.onnx"):
        export_model(ckpt, tmp_path / "model.bin")
    with pytest.raises(ValueError, match="--half"):
        export_model(ckpt, tmp_path / "model.onnx", half=True)
