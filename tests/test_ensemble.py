"""`facerec ensemble` / inference.ensemble: several models as one model file, usable wherever a checkpoint is."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

import facerec
from conftest import make_hw2p2
from facerec.cli.main import main
from facerec.data.pairs import read_pairs
from facerec.engine.checkpoint import load_checkpoint
from facerec.evaluation.ensemble import EnsembleError, EnsembleFaceModel, build_ensemble
from test_export import make_tiny_checkpoint


@pytest.fixture
def three(tmp_path: Path) -> list[Path]:
    return [make_tiny_checkpoint(tmp_path / f"m{i}.pt", threshold=0.2 + 0.1 * i, seed=i) for i in range(3)]


def _images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8))


def test_ensemble_cosine_is_the_mean_of_the_members_cosines(three, tmp_path):
    out = tmp_path / "ens.pt"
    result = build_ensemble(three, out, log=lambda m: None)
    assert result["threshold"] == pytest.approx((0.2 + 0.3 + 0.4) / 3)  # the cosine rule without data
    assert "not tuned" in result["threshold_source"]
    ens = facerec.load(out)
    assert isinstance(ens, EnsembleFaceModel) and ens.threshold == pytest.approx(0.3)
    members = [facerec.load(p) for p in three]
    x = _images(6)
    e = ens.embed(x, flip=False)
    assert e.shape == (6, 48) and ens.config.model.embedding_dim == 48
    torch.testing.assert_close(e.norm(dim=1), torch.ones(6))
    cos = lambda a, b: torch.nn.functional.cosine_similarity(a, b, dim=1)  # noqa: E731
    singles = [m.embed(x, flip=False) for m in members]
    expected = torch.stack([cos(s[:3], s[3:]) for s in singles]).mean(0)
    torch.testing.assert_close(cos(e[:3], e[3:]), expected, rtol=1e-5, atol=1e-6)
    # flip TTA as for one network: the sum of the ensemble embeddings of the image and of its mirror
    torch.testing.assert_close(ens.embed(x), e + ens.embed(x.flip(2), flip=False), rtol=1e-5, atol=1e-6)
    s = ens.score(x[1].numpy(), x[4].numpy())  # pair 1 is (1, 4)
    assert s == pytest.approx(float(cos(ens.embed(x)[1:2], ens.embed(x)[4:5])), abs=1e-5)
    v = ens.verify(x[1].numpy(), x[4].numpy())
    assert v.same == (v.score >= 0.3)
    info = ens.info()  # what the service's page shows
    assert info["backbone"] == "ensemble: tiny_cnn + tiny_cnn + tiny_cnn" and info["embedding_dim"] == 48
    assert len(info["members"]) == 3 and info["threshold"] == pytest.approx(0.3) and info["classes"] == 3


def test_euclidean_ensemble_distance_is_the_rms_of_the_members(tmp_path):
    paths = [
        make_tiny_checkpoint(tmp_path / f"e{i}.pt", threshold=-(1.0 + i), seed=i, scoring="euclidean")
        for i in range(2)
    ]
    build_ensemble(paths, tmp_path / "ens.pt", log=lambda m: None)
    ens = facerec.load(tmp_path / "ens.pt")
    assert ens.scoring == "euclidean" and ens.threshold == pytest.approx(-math.sqrt((1 + 4) / 2))
    x = _images(4, seed=1)
    e = ens.embed(x, flip=False)
    d = [(m.embed(x, flip=False)[:2] - m.embed(x, flip=False)[2:]).norm(dim=1) for m in map(facerec.load, paths)]
    torch.testing.assert_close(
        (e[:2] - e[2:]).norm(dim=1), ((d[0] ** 2 + d[1] ** 2) / 2).sqrt(), rtol=1e-5, atol=1e-6
    )


def test_class_scores_are_the_normalised_geometric_mean(three, tmp_path):
    build_ensemble(three, tmp_path / "ens.pt", log=lambda m: None)
    ens = facerec.load(tmp_path / "ens.pt")
    x = _images(5, seed=2)
    probs = [m.class_scores(x).softmax(1).double() for m in map(facerec.load, three)]
    geo = (probs[0] * probs[1] * probs[2]) ** (1 / 3)
    expected = (geo / geo.sum(1, keepdim=True)).float()
    torch.testing.assert_close(ens.class_scores(x), expected, rtol=1e-4, atol=1e-6)
    top = ens.classify(x, k=2)
    assert [t[0][0] for t in top] == [ens.classes[i] for i in expected.argmax(1).tolist()]
    assert all(a[1] >= b[1] for a, b in top)


def test_refuses_models_that_do_not_fit_together(three, tmp_path):
    with pytest.raises(EnsembleError, match="at least 2 models"):
        build_ensemble(three[:1], tmp_path / "e.pt", log=lambda m: None)
    other = make_tiny_checkpoint(tmp_path / "o.pt", classes=["1", "4", "8"])
    with pytest.raises(EnsembleError, match="different identities"):
        build_ensemble([three[0], other], tmp_path / "e.pt", log=lambda m: None)
    size = make_tiny_checkpoint(tmp_path / "s.pt", image_size=24)
    with pytest.raises(EnsembleError, match="differ in image size"):
        build_ensemble([three[0], size], tmp_path / "e.pt", log=lambda m: None)
    euclid = make_tiny_checkpoint(tmp_path / "u.pt", scoring="euclidean")
    with pytest.raises(EnsembleError, match="differ in scoring"):
        build_ensemble([three[0], euclid], tmp_path / "e.pt", log=lambda m: None)
    build_ensemble(three[:2], tmp_path / "e.pt", log=lambda m: None)
    with pytest.raises(EnsembleError, match="is an ensemble already"):
        build_ensemble([tmp_path / "e.pt", three[2]], tmp_path / "e2.pt", log=lambda m: None)


def test_cli_with_data_tunes_the_threshold_and_predicts(tmp_path, capsys):
    data = make_hw2p2(tmp_path / "hw", n_ids=3)  # identities "1", "4", "7": the tiny checkpoints' classes
    paths = [make_tiny_checkpoint(tmp_path / f"m{i}.pt", seed=i) for i in range(2)]
    out = tmp_path / "ens.pt"
    assert main(["ensemble", *map(str, paths), "--out", str(out), "--data", str(data), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert len(r["members"]) == 2 and r["threshold_source"] == "best-accuracy threshold on the val pairs"
    # the ensemble's AUC on the val pairs, computed here from the members' own pair scores
    pairs = read_pairs(data / "verification_pairs_val.txt")
    members = [facerec.load(p) for p in paths]
    mean = [np.mean([m.score(data / a, data / b) for m in members]) for a, b in zip(pairs.a, pairs.b)]
    assert r["ensemble"]["auc"] == pytest.approx(roc_auc_score(pairs.labels, mean), abs=1e-6)
    assert r["threshold"] == pytest.approx(r["ensemble"]["best_threshold"])
    assert facerec.load(out).threshold == pytest.approx(r["threshold"])
    assert load_checkpoint(out)["metrics"]["auc"] == pytest.approx(r["ensemble"]["auc"])
    assert main(["evaluate", "--checkpoint", str(out), "--data", str(data), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["auc"] == pytest.approx(r["ensemble"]["auc"]) and again["accuracy"] == r["ensemble"]["accuracy"]
    assert main(["predict", "--checkpoint", str(out), "--data", str(data), "--out", str(tmp_path / "sub")]) == 0
    rows = list(csv.DictReader((tmp_path / "sub" / "verification_submission.csv").open()))
    a, b = rows[0]["Id"].split()
    assert float(rows[0]["Category"]) == pytest.approx(facerec.load(out).score(data / a, data / b), abs=1e-5)
    labels = {row["label"] for row in csv.DictReader((tmp_path / "sub" / "classification_submission.csv").open())}
    assert labels <= {"1", "4", "7"}


def test_export_and_errors(three, tmp_path, capsys):
    build_ensemble(three, tmp_path / "ens.pt", log=lambda m: None)
    assert (
        main(["export", "--checkpoint", str(tmp_path / "ens.pt"), "--out", str(tmp_path / "half.pt"), "--half"])
        == 0
    )
    state = load_checkpoint(tmp_path / "half.pt")
    assert len(state["ensemble"]) == 3
    assert all(
        v.dtype == torch.float16 for m in state["ensemble"] for v in m["model"].values() if v.is_floating_point()
    )
    x = _images(2, seed=3)
    half, full = facerec.load(tmp_path / "half.pt"), facerec.load(tmp_path / "ens.pt")
    torch.testing.assert_close(half.embed(x), full.embed(x), rtol=1e-2, atol=1e-2)
    assert main(["ensemble", *map(str, three), "--out", str(tmp_path / "e.onnx")]) == 1
    assert "end --out with .pt" in capsys.readouterr().err


def test_onnx_export_of_an_ensemble(three, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from facerec.inference.export import export_onnx

    build_ensemble(three, tmp_path / "ens.pt", log=lambda m: None)
    onnx_path, side = export_onnx(tmp_path / "ens.pt", tmp_path / "ens.onnx")
    meta = json.loads(side.read_text())
    assert meta["model"]["embedding_dim"] == 48 and meta["model"]["members"] == 3
    assert meta["model"]["backbone"] == "ensemble: tiny_cnn + tiny_cnn + tiny_cnn"
    om, pt = facerec.load(onnx_path), facerec.load(tmp_path / "ens.pt")
    x = _images(5, seed=4)
    torch.testing.assert_close(om.embed(x), pt.embed(x), rtol=1e-4, atol=1e-4)
    assert om.threshold == pytest.approx(pt.threshold) and om.scoring == "cosine"


def test_the_shipped_ensemble(facehw):
    """models/facehw_ensemble.pt: three facehw models whose network is their normalised embeddings side by side;
    on 200 val pairs its cosine (one pass, no flip) is the mean of the members' cosines."""
    path = Path(__file__).resolve().parents[1] / "models" / "facehw_ensemble.pt"
    if not path.is_file():
        pytest.skip("models/facehw_ensemble.pt is not in this checkout")
    state = load_checkpoint(path)
    assert len(state["ensemble"]) == 3 and state["threshold_source"] == "best-accuracy threshold on the val pairs"
    ens = facerec.load(path)
    assert isinstance(ens, EnsembleFaceModel) and ens.config.model.embedding_dim == 768
    pairs = read_pairs(facehw / "verification_pairs_val.txt")
    a = [facehw / p for p in pairs.a[:200]]
    b = [facehw / p for p in pairs.b[:200]]
    cos = torch.nn.functional.cosine_similarity
    got = cos(ens.embed(a, flip=False), ens.embed(b, flip=False), dim=1)
    mean = torch.stack([cos(m.embed(a, flip=False), m.embed(b, flip=False), dim=1) for m in ens.members]).mean(0)
    torch.testing.assert_close(got, mean, rtol=1e-5, atol=1e-5)
