"""insightface's verification protocol on .bin packs (metrics/insightface.py), `facerec benchmark bin`
(evaluation/bins.py) and `data.val_bins` during training; the reader itself: tests/test_binpack.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from conftest import make_hw2p2, tiny_overrides
from facerec.errors import DataError
from facerec.metrics.insightface import fold_accuracy, protocol_report
from test_binpack import FIXTURES, Call, synthetic_pack, write_pack
from test_export import make_tiny_checkpoint
from test_lfw import run_cli


# -- the protocol ----------------------------------------------------------------------------------------------
def reference_accuracy(emb: np.ndarray, issame: np.ndarray, nfolds: int = 10) -> tuple[list[float], list[float]]:
    """insightface's calculate_roc, written out: loops over folds and thresholds, folds by np.array_split."""
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    dist = ((e[0::2] - e[1::2]) ** 2).sum(axis=1)
    thresholds = np.arange(0, 4, 0.01)
    accs, thrs = [], []
    for test in np.array_split(np.arange(len(issame)), nfolds):
        train = np.setdiff1d(np.arange(len(issame)), test)
        train_acc = [np.mean((dist[train] < t) == issame[train]) for t in thresholds]
        best = thresholds[int(np.argmax(train_acc))]
        accs.append(float(np.mean((dist[test] < best) == issame[test])))
        thrs.append(float(best))
    return accs, thrs


def test_fold_accuracy_matches_a_loop_reimplementation() -> None:
    rng = np.random.default_rng(0)
    n = 53  # folds of 6 and 5 pairs
    issame = rng.random(n) < 0.5
    base = rng.normal(size=(n, 8))
    other = np.where(issame[:, None], base + rng.normal(scale=0.9, size=(n, 8)), rng.normal(size=(n, 8)))
    emb = np.stack([base, other], axis=1).reshape(2 * n, 8)
    report = protocol_report(torch.from_numpy(emb).float(), issame)
    accs, thrs = reference_accuracy(emb.astype(np.float32).astype(np.float64), issame)
    assert report["fold_accuracy"] == pytest.approx(accs, abs=1e-12) and report["fold_threshold"] == thrs
    assert report["accuracy"] == pytest.approx(np.mean(accs)) and report["accuracy_std"] == pytest.approx(
        np.std(accs)
    )
    assert 0.6 < report["accuracy"] < 0.95  # not trivial
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    assert report["auc"] == pytest.approx(roc_auc_score(issame, (e[0::2] * e[1::2]).sum(1)), abs=1e-9)


def test_fold_accuracy_hand_computed() -> None:
    """20 pairs, 2 per fold: same pairs at squared distance 0.555, different at 3.005; pair 0 is labelled same
    but lies at 3.005. The other folds then pick the first threshold above 0.555 (0.56): fold 0 scores 1/2,
    every other fold 2/2; mean 0.95, std sqrt((0.45^2 + 9 * 0.05^2) / 10) = 0.15."""
    issame = np.array([i % 2 == 0 for i in range(20)])
    d = np.where(issame, 0.555, 3.005)
    d[0] = 3.005
    r = fold_accuracy(d, issame)
    assert r["fold_threshold"][1:] == [0.56] * 9 and r["fold_accuracy"] == [0.5] + [1.0] * 9
    assert r["accuracy"] == pytest.approx(0.95) and r["accuracy_std"] == pytest.approx(0.15)
    with pytest.raises(ValueError, match="at least 10"):
        fold_accuracy(d[:9], issame[:9])


# -- facerec benchmark bin -------------------------------------------------------------------------------------
def test_cli_benchmark_bin_pt_and_onnx(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from facerec.inference.export import export_onnx

    ckpt = make_tiny_checkpoint(tmp_path / "best.pt", image_size=32)
    a, b = synthetic_pack(tmp_path / "a.bin"), synthetic_pack(tmp_path / "b.bin", arrays=True)
    assert (
        run_cli(["benchmark", "bin", str(a), str(b), "--checkpoint", str(ckpt), "--json", "--device", "cpu"]) == 0
    )
    results = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in results] == ["a", "b"] and results[0]["auc"] == results[1]["auc"]
    assert {k: v for k, v in results[0].items() if k not in ("pack", "name")} == {
        k: v for k, v in results[1].items() if k not in ("pack", "name")
    }
    assert results[0]["source_size"] == [16, 16] and results[0]["image_size"] == 32 and results[0]["n_pairs"] == 20
    onnx, _ = export_onnx(ckpt, tmp_path / "m.onnx")
    assert run_cli(["benchmark", "bin", str(a), "--checkpoint", str(onnx), "--batch-size", "7"]) == 0
    table = capsys.readouterr().out
    assert "| a | 20 | " in table and f"{results[0]['auc']:.4f}" in table and "16x16 -> 32" in table
    with pytest.raises(DataError, match="missing.bin does not exist"):
        run_cli(["benchmark", "bin", str(a), str(tmp_path / "missing.bin"), "--checkpoint", str(ckpt)])
    with pytest.raises(ValueError, match="needs one or more packs"):
        run_cli(["benchmark", "bin", "--checkpoint", str(ckpt)])


@pytest.mark.slow
def test_shipped_model_on_the_fixture_packs_agrees_with_its_own_evaluation(shared_data: Path, capsys) -> None:
    """models/facehw.pt on the three packs: identical results; AUC close to facerec's own evaluation of the same
    pairs from the facehw files (same photos after a 64 -> 112 JPEG -> 64 round trip)."""
    import facerec
    from facerec.data.pairs import read_pairs
    from facerec.evaluation.lfw import score_photo_pairs
    from facerec.metrics.verification import verification_report

    folder = shared_data / "formats" / "insightface"
    model = Path(__file__).resolve().parents[1] / "models" / "facehw.pt"
    packs = [str(folder / name) for name in FIXTURES]
    assert run_cli(["benchmark", "bin", *packs, "--checkpoint", str(model), "--json", "--device", "cpu"]) == 0
    results = json.loads(capsys.readouterr().out)
    strip = [{k: v for k, v in r.items() if k not in ("pack", "name")} for r in results]
    assert strip[0] == strip[1] == strip[2]
    pairs = read_pairs(folder / "pairs_tiny_sources.txt")
    scores, _, _ = score_photo_pairs(facerec.load(model), pairs, shared_data / "facehw", None, True, print)
    own = verification_report(scores, pairs.labels)
    print(f"pack AUC {results[0]['auc']:.6f}, own evaluation AUC {own['auc']:.6f}, acc {results[0]['accuracy']}")
    assert abs(results[0]["auc"] - own["auc"]) < 0.01 and results[0]["auc"] > 0.9
    assert abs(results[0]["tar@far=1e-3"] - own["tar@far=1e-3"]) < 0.05
    assert abs(results[0]["accuracy"] - own["best_acc"]) < 0.05


# -- data.val_bins during training -----------------------------------------------------------------------------
def pack_of_pair_file(root: Path, out: Path) -> Path:
    """A pack of the labelled pairs of an HW2P2 val pair file: the JPEG files' bytes, pickled by Python 3 at
    protocol 2 (bytes then pickle as _codecs.encode(text, "latin1"))."""
    lines = (root / "verification_pairs_val.txt").read_text().split()
    lines = [" ".join(lines[i : i + 3]) for i in range(0, len(lines), 3)]
    bins, issame = [], []
    for line in lines:
        a, b, label = line.split()
        bins += [(root / a).read_bytes(), (root / b).read_bytes()]
        issame.append(label == "1")
    return write_pack(out, (bins, issame), protocol=2)


def test_val_bins_are_scored_every_epoch(tmp_path: Path, monkeypatch, capsys) -> None:
    from facerec.cli.main import main
    from facerec.engine.progress import read_metrics

    monkeypatch.setenv("FACEREC_CACHE", str(tmp_path / "cache"))
    hw2p2_dir = make_hw2p2(tmp_path / "hw", n_ids=6, per_id=4)
    a = pack_of_pair_file(hw2p2_dir, tmp_path / "val-a.bin")
    b = synthetic_pack(tmp_path / "b.bin", arrays=True)
    run = tmp_path / "run"
    args = ["train", "--data", str(hw2p2_dir), "--out", str(run), "train.epochs=2", f"data.val_bins=[{a},{b}]"]
    assert main([*args, *tiny_overrides("train.max_steps_per_epoch=3", "train.best_metric=bins_auc")]) == 0
    out = capsys.readouterr().out
    assert "val pack val_a: 46 pairs" in out and "bin_val_a_auc" in out.split("== epoch 2/2")[1]
    epochs = [r for r in read_metrics(run) if r["event"] == "epoch"]
    keys = {"val_auc", "bin_val_a_acc", "bin_val_a_auc", "bin_b_acc", "bin_b_auc"}
    assert len(epochs) == 2 and all(keys <= set(e) for e in epochs)
    # the logged numbers are what `facerec benchmark bin` gives for the epoch's weights (last.pt)
    assert run_cli(["benchmark", "bin", str(a), "--checkpoint", str(run / "last.pt"), "--json"]) == 0
    bench = json.loads(capsys.readouterr().out)[0]
    assert bench["auc"] == pytest.approx(epochs[-1]["bin_val_a_auc"], abs=1e-6)
    assert bench["accuracy"] == pytest.approx(epochs[-1]["bin_val_a_acc"], abs=1e-6)
    # train.best_metric=bins_auc: best.pt follows the packs' mean AUC
    means = [(e["bin_val_a_auc"] + e["bin_b_auc"]) / 2 for e in epochs]
    assert [e["bins_auc"] for e in epochs] == pytest.approx(means)
    best = max(range(2), key=lambda i: (means[i], i))  # ties go to the later epoch
    assert f"done: best bins_auc {means[best]}" in out or f"best bins_auc {epochs[best]['bins_auc']}" in out


def test_a_missing_or_unsafe_val_bin_stops_the_run_before_training(hw2p2_dir: Path, tmp_path: Path, capsys):
    from facerec.cli.main import main

    marker = tmp_path / "pwned"
    evil = write_pack(tmp_path / "evil.bin", ([Call(os.system, f"touch {marker}"), b"x"], [True]))
    few = synthetic_pack(tmp_path / "few.bin", n_pairs=6)
    for pack, phrase in [(tmp_path / "no.bin", "no.bin does not exist"), (evil, "posix.system"), (few, "6 pairs")]:
        run = tmp_path / "runs" / pack.stem
        args = ["train", "--data", str(hw2p2_dir), "--out", str(run), f"data.val_bins=[{pack}]", *tiny_overrides()]
        assert main(args) == 1
        err = capsys.readouterr().err
        assert "data.val_bins" in err and str(pack) in err and phrase in err, err
        assert not run.exists() and not marker.exists()
