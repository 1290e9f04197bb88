"""Closed-set matching (inference/matching.py): class centres, class means and kNN against loop references, the
model file round trip, selection by name, and the old method's results unchanged."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import facerec
from conftest import REPO, make_hw2p2
from facerec.cli.main import main
from facerec.engine.checkpoint import export_inference, load_checkpoint
from facerec.errors import CheckpointError
from facerec.evaluation.ensemble import build_ensemble
from facerec.inference.matching import Match, Matcher, knn_scores, train_set_state
from facerec.inference.model import FaceModel
from facerec.inference.network import log_prob_mean
from facerec.losses import LOSSES
from test_export import make_tiny_checkpoint


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _example(
    seed: int = 0, m: int = 14, d: int = 5, c: int = 4
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training embeddings (m, d) of classes 0..c-2 (class c-1 has no image; class 0 a single one), 6 queries."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.tensor([0]), torch.randint(1, c - 1, (m - 1,), generator=g)])
    return torch.randn(m, d, generator=g) * 3, labels, torch.randn(6, d, generator=g)


def test_mean_is_the_cosine_to_each_class_mean_of_normalised_embeddings():
    train, labels, queries = _example()
    got = Matcher(None, None, (train, labels), 4).scores(queries, "mean")
    t, y = train.double().numpy(), labels.numpy()
    for i, q in enumerate(queries.double().numpy()):
        for c in range(3):  # class 3 has no image: a zero mean, cosine 0
            mean = np.mean([_unit(t[j]) for j in range(len(t)) if y[j] == c], axis=0)
            assert got[i, c].item() == pytest.approx(float(_unit(q) @ _unit(mean)), abs=1e-6)
        assert got[i, 3].item() == 0.0
    stored = train_set_state(train, labels, 4)["prototypes"]  # what a model file keeps: the same means
    torch.testing.assert_close(Matcher(None, stored, None, 4).scores(queries), got)


def _knn_reference(train: torch.Tensor, labels: torch.Tensor, q: torch.Tensor, c: int, k: int) -> list[float]:
    t, y, k = [_unit(v) for v in train.double().numpy()], labels.tolist(), min(k, len(train))
    sims = [float(_unit(q.double().numpy()) @ v) for v in t]
    order = sorted(range(len(t)), key=lambda j: (-sims[j], j))[:k]  # ties: training order
    scores = []
    for cls in range(c):
        voters = [sims[j] for j in order if y[j] == cls]
        own = [sims[j] for j in range(len(t)) if y[j] == cls]
        scores.append(sum(voters) if voters else max(own, default=-2.0) - (k + 1))
    return scores


@pytest.mark.parametrize("k", [1, 3, 5, 100])
def test_knn_is_the_similarity_weighted_vote_of_the_k_nearest(k):
    train, labels, queries = _example(seed=k)
    got = knn_scores(queries, train, labels, 4, k, chunk=4)  # two chunks
    for i, q in enumerate(queries):
        assert got[i].tolist() == pytest.approx(_knn_reference(train, labels, q, 4, k), abs=1e-5)
    torch.testing.assert_close(Matcher(None, None, (train, labels), 4).scores(queries, f"knn:{k}"), got)


def test_knn_breaks_ties_in_training_order():
    train = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])  # the first two tie for any query
    q = torch.tensor([[1.0, 0.2]])
    assert knn_scores(q, train, torch.tensor([2, 1, 0]), 3, k=1).argmax(1).item() == 2
    assert knn_scores(q, train, torch.tensor([1, 2, 0]), 3, k=1).argmax(1).item() == 1
    one = knn_scores(q, train, torch.tensor([2, 1, 0]), 3, k=1)  # class 1's image ties class 2's but did not vote
    assert one[0].tolist() == pytest.approx(
        [0.2 / math.hypot(1, 0.2) - 2, 1 / math.hypot(1, 0.2) - 2, 1 / math.hypot(1, 0.2)]
    )
    dup, lab, q1 = torch.ones(6, 2), torch.tensor([3, 1, 2, 0, 1, 2]), torch.tensor([1.0, 1.0])  # six-way tie
    assert knn_scores(q1[None], dup, lab, 4, k=3)[0].tolist() == pytest.approx(_knn_reference(dup, lab, q1, 4, 3))
    two = knn_scores(q, train, torch.tensor([2, 1, 0]), 3, k=2)  # equal votes: argmax takes the first class
    assert two[0, 1] == two[0, 2] and two.argmax(1).item() == 1


def test_centres_are_the_loss_logits():
    loss = LOSSES.build("cosface", embedding_dim=3, num_classes=2, scale=10.0, margin=0.3)
    with torch.no_grad():
        loss.weight.copy_(torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
    q = torch.tensor([[1.0, 1.0, 0.0], [0.0, 3.0, 4.0]])
    expected = torch.tensor([[10 / math.sqrt(2), 0.0], [0.0, 8.0]])
    matcher = Matcher(loss, None, None, 2)
    assert matcher.default == Match("centres") and matcher.methods == ["centres"]
    torch.testing.assert_close(matcher.scores(q), expected)


def test_methods_are_chosen_by_name_with_clear_errors():
    assert (
        Match.of("knn:5") == Match("knn", 5) and str(Match.of(" KNN ")) == "knn:1" and str(Match("mean")) == "mean"
    )
    for bad in ("nearest", "centers", "mean:3", "knn:0", "knn:x", ""):
        with pytest.raises(ValueError, match="centres, mean, knn or knn:K|whole number >= 1"):
            Match.of(bad)
    loss = LOSSES.build("cosface", embedding_dim=5, num_classes=4)
    with pytest.raises(ValueError, match="class means .* --train-data DATA --out MODEL`"):
        Matcher(loss, None, None, 4).scores(torch.zeros(1, 5), "mean")
    with pytest.raises(ValueError, match="--train-embeddings"):
        Matcher(loss, torch.ones(4, 5), None, 4).scores(torch.zeros(1, 5), "knn:3")
    with pytest.raises(ValueError, match="needs a classifier"):
        Matcher(LOSSES.build("triplet"), torch.ones(4, 5), None, 4).scores(torch.zeros(1, 5), "centres")


def _images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8))


def test_a_model_file_keeps_the_means_and_fp16_embeddings(tmp_path):
    src = make_tiny_checkpoint(tmp_path / "best.pt")
    train, labels, _ = _example(d=16, c=3, m=10)
    out = export_inference(src, tmp_path / "m.pt", extra=train_set_state(train, labels, 3, keep_embeddings=True))
    raw = torch.load(out, weights_only=True)  # tensors and plain values only
    assert raw["train_embeddings"].dtype == torch.float16 and raw["train_labels"].dtype == torch.int64
    assert raw["prototypes"].dtype == torch.float32 and raw["prototypes"].shape == (3, 16)
    before = load_checkpoint(src)
    assert all(torch.equal(raw["model"][k], v) for k, v in before["model"].items())  # the network as it was
    old, new = facerec.load(src), facerec.load(out)
    assert str(old.match) == "centres" and str(new.match) == "mean"
    assert new.matcher.methods == ["centres", "mean", "knn"] and new.fingerprint == old.fingerprint
    x = _images(5)
    assert torch.equal(new.embed(x), old.embed(x))  # verification unchanged
    assert torch.equal(new.class_scores(x, match="centres"), old.class_scores(x))
    torch.testing.assert_close(new.class_scores(x), new.class_scores(x, match="mean"))
    unit = raw["train_embeddings"].float()
    torch.testing.assert_close(new.class_scores(x, match="knn:3"), knn_scores(new.embed(x), unit, labels, 3, 3))
    half = facerec.load(export_inference(out, tmp_path / "h.pt", half=True))  # --half keeps them
    assert half.matcher.methods == ["centres", "mean", "knn"] and str(half.match) == "mean"


def test_a_damaged_train_set_is_a_checkpoint_error(tmp_path):
    src = make_tiny_checkpoint(tmp_path / "best.pt")
    bad = {"train_embeddings": torch.zeros(4, 16).half(), "train_labels": torch.tensor([0, 1, 2, 3])}
    with pytest.raises(CheckpointError, match="damaged.*train_labels"):
        facerec.load(export_inference(src, tmp_path / "bad.pt", extra=bad))  # class 3 of 3
    with pytest.raises(CheckpointError, match="damaged.*class means"):
        facerec.load(export_inference(src, tmp_path / "bad.pt", extra={"prototypes": torch.zeros(3, 15)}))


@pytest.fixture(scope="module")
def hw(tmp_path_factory) -> Path:
    return make_hw2p2(tmp_path_factory.mktemp("hw") / "hw", n_ids=3, per_id=5)  # identities "1", "4", "7"


def _cli(capsys, *argv: str) -> str:
    capsys.readouterr()
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def test_export_train_data_then_evaluate_and_predict_by_each_method(hw, tmp_path, capsys):
    src = make_tiny_checkpoint(tmp_path / "best.pt")
    out = tmp_path / "m.pt"
    _cli(
        capsys,
        "export",
        "--checkpoint",
        str(src),
        "--train-data",
        str(hw),
        "--train-embeddings",
        "--out",
        str(out),
    )
    fm = facerec.load(out)
    folders = sorted((hw / "classification_data" / "train_data").iterdir(), key=lambda p: fm.classes.index(p.name))
    means = [torch.nn.functional.normalize(fm.embed(sorted(f.glob("*.jpg"))), dim=1).mean(0) for f in folders]
    torch.testing.assert_close(fm.prototypes, torch.stack(means), rtol=1e-5, atol=1e-6)
    assert fm.matcher.train[0].shape == (15, 16)
    result = {}
    for how in ("centres", "mean", "knn:3"):
        text = _cli(capsys, "evaluate", "--checkpoint", str(out), "--data", str(hw), "--match", how, "--json")
        result[how] = json.loads(text)
        assert result[how]["match"] == how and result[how]["n_images"] == 6
    old = json.loads(_cli(capsys, "evaluate", "--checkpoint", str(src), "--data", str(hw), "--json"))
    assert old["match"] == "centres" and old["accuracy"] == result["centres"]["accuracy"]
    assert old["auc"] == result["mean"]["auc"]  # verification does not depend on the method
    _cli(capsys, "predict", "--checkpoint", str(src), "--data", str(hw), "--out", str(tmp_path / "a"))
    _cli(
        capsys,
        "predict",
        "--checkpoint",
        str(out),
        "--data",
        str(hw),
        "--out",
        str(tmp_path / "b"),
        "--match",
        "centres",
    )
    for name in ("classification_submission.csv", "verification_submission.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert main(["evaluate", "--checkpoint", str(src), "--data", str(hw), "--match", "knn"]) == 1
    assert "--train-embeddings" in capsys.readouterr().err


def test_the_onnx_class_head_follows_the_default(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from facerec.inference.export import export_onnx

    train, labels, _ = _example(d=16, c=3, m=10)
    pt = export_inference(
        make_tiny_checkpoint(tmp_path / "best.pt"), tmp_path / "m.pt", extra=train_set_state(train, labels, 3)
    )
    fm, om = facerec.load(pt), facerec.load(export_onnx(pt, tmp_path / "m.onnx")[0])
    x = _images(4, seed=3)
    assert om.match == "mean"
    torch.testing.assert_close(om.class_scores(x), fm.class_scores(x, match="mean"), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(om.class_scores(x, match="mean"), om.class_scores(x))
    with pytest.raises(ValueError, match="centres or mean.*use the .pt model file"):
        om.class_scores(x, match="centres")


def test_an_ensemble_combines_its_members_by_their_methods(tmp_path):
    train, labels, _ = _example(d=16, c=3, m=10)
    members = []
    for i in range(2):
        src = make_tiny_checkpoint(tmp_path / f"s{i}.pt", seed=i + 1)
        members.append(export_inference(src, tmp_path / f"m{i}.pt", extra=train_set_state(train, labels, 3)))
    ens = facerec.load(build_ensemble(members, tmp_path / "ens.pt", log=lambda m: None) and tmp_path / "ens.pt")
    x, models = _images(3, seed=4), [facerec.load(p) for p in members]
    assert str(ens.match) == "mean"
    for how in (None, "centres"):
        expected = log_prob_mean([m.class_scores(x, match=how) for m in models])
        torch.testing.assert_close(ens.class_scores(x, match=how), expected)
    with pytest.raises(CheckpointError, match="each member model"):
        export_inference(tmp_path / "ens.pt", tmp_path / "x.pt", extra=train_set_state(train, labels, 3))


def test_facehw_centres_are_the_model_files_old_scores(facehw):
    path = REPO / "models" / "facehw.pt"
    if not path.is_file():
        pytest.skip("models/facehw.pt is not in this checkout")
    state = load_checkpoint(path)
    old = {k: v for k, v in state.items() if k not in ("prototypes", "train_embeddings", "train_labels")}
    images = sorted((facehw / "classification_data" / "test_data").glob("*.jpg"))[:48]
    new_model, old_model = FaceModel.from_state(state), FaceModel.from_state(old)
    assert str(old_model.match) == "centres"
    # the classification submission is the argmax of these scores: equal scores, identical CSV rows
    assert torch.equal(new_model.class_scores(images, match="centres"), old_model.class_scores(images))


def test_a_trained_model_holds_its_class_means_and_matches_by_them(hw, tmp_path, capsys):
    """A loss with a classifier (CosFace): best.pt still gets the class means of every training image, so the
    model file matches by "mean" without `facerec export --train-data`, and both ways give the same means."""
    from conftest import tiny_overrides

    run = tmp_path / "run"
    args = ["train", "--data", str(hw), "--out", str(run), *tiny_overrides("loss.name=cosface", "train.epochs=1")]
    assert main(args) == 0
    fm = facerec.load(run / "best.pt")
    assert fm.matcher.default == Match("mean")
    folders = sorted((hw / "classification_data" / "train_data").iterdir(), key=lambda p: fm.classes.index(p.name))
    means = [torch.nn.functional.normalize(fm.embed(sorted(f.glob("*.jpg"))), dim=1).mean(0) for f in folders]
    torch.testing.assert_close(fm.prototypes, torch.stack(means), rtol=1e-4, atol=1e-5)
    text = _cli(capsys, "evaluate", "--checkpoint", str(run / "best.pt"), "--data", str(hw), "--json")
    assert json.loads(text)["match"] == "mean"
