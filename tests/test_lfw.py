"""LFW protocol: pair-file parsing (both headers), k-fold accuracy on synthetic scores, an end-to-end lfw_tiny run.

Also home of `tiny_checkpoint` / `real_checkpoint`, the model helpers the other photo tests import.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, make_identity_folder, tiny_overrides
from facerec.cli import benchmark as cli_benchmark
from facerec.cli import gallery as cli_gallery
from facerec.cli import photos as cli_photos
from facerec.data.folder import DataError
from facerec.evaluation.lfw import kfold_accuracy, lfw_report, read_lfw_pairs
from facerec.inference.load import load


@pytest.fixture(autouse=True)
def one_thread():
    """MTCNN's small convolutions run ~10x slower with 2 threads on a busy 2-core machine; restore afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny_cnn model trained for one epoch on generated data (plumbing only, not accuracy); once per session."""
    run = tmp_path_factory.getbasetemp() / "photos_tiny_run"
    if not (run / "best.pt").is_file():
        from facerec.config import load_config
        from facerec.engine.run import train

        root = make_identity_folder(tmp_path_factory.mktemp("tiny_faces"), [f"p{i}" for i in range(6)], 6)
        os.environ.setdefault("FACEREC_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        cfg = load_config(
            None,
            tiny_overrides(
                f"data.root={root}",
                "data.batch_size=12",
                "train.epochs=1",
                "train.threads=1",
                "data.num_workers=0",
            ),
        )
        train(cfg, run, log=lambda m: None)
    return run / "best.pt"


def real_checkpoint() -> Path | None:
    """models/facehw.pt (or $FACEREC_TEST_MODEL): a model trained on faces, for accuracy checks."""
    path = Path(os.environ.get("FACEREC_TEST_MODEL", REPO / "models" / "facehw.pt"))
    return path if path.is_file() else None


def run_cli(argv: list[str]) -> int:
    """A photo command (cli/photos.py, cli/gallery.py, cli/benchmark.py), its errors raised rather than printed."""
    parser = argparse.ArgumentParser(prog="facerec")
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {}
    for module in (cli_photos, cli_gallery, cli_benchmark):
        module.add_parsers(sub)
        commands.update(module.COMMANDS)
    args = parser.parse_args(argv)
    return commands[args.command](args)


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_parses_view2_header_with_folds(tmp_path):
    lines = ["2\t2"]
    for f in range(2):
        lines += [f"A{f} 1 2", f"B{f} 3 14"] + [f"C{f} 1 D{f} 2", f"E{f} 10 F{f} 1"]
    pairs = read_lfw_pairs(_write(tmp_path / "pairs.txt", lines))
    assert pairs.n_folds == 2 and len(pairs) == 8
    assert pairs.labels == [1, 1, 0, 0, 1, 1, 0, 0] and pairs.folds == [0] * 4 + [1] * 4
    assert pairs.a[1] == "B0/B0_0003.jpg" and pairs.b[1] == "B0/B0_0014.jpg"
    assert pairs.a[3] == "E0/E0_0010.jpg" and pairs.b[3] == "F0/F0_0001.jpg"
    assert pairs.line_numbers[0] == 2


def test_parses_devtest_header_as_one_fold(tmp_path):
    pairs = read_lfw_pairs(_write(tmp_path / "dev.txt", ["\ufeff2", "", "A 1 2", "B 1 2", "C 1 D 1", "E 1 F 2"]))
    assert pairs.n_folds == 1 and set(pairs.folds) == {0} and pairs.labels == [1, 1, 0, 0]


@pytest.mark.parametrize(
    "lines, message",
    [
        (["x y"], "header"),
        (["2", "A 1 2", "B 1 2", "C 1 D 1"], "promises"),
        (["1", "A 1 B 2", "C 1 D 1"], ":2: expected a matched"),
        (["1", "A 1 2", "C 1 2"], ":3: expected a mismatched"),
        (["1", "A one 2", "C 1 D 2"], "not an integer"),
    ],
)
def test_bad_pair_files_name_the_line(tmp_path, lines, message):
    with pytest.raises(DataError, match=message):
        read_lfw_pairs(_write(tmp_path / "bad.txt", lines))


def test_kfold_threshold_comes_from_the_other_folds():
    """Nine folds separate at 0.5, the tenth is inverted: it scores 0, the others 1 -> mean 0.9, std 0.3."""
    labels = np.tile([1] * 5 + [0] * 5, 10)
    scores = np.where(labels == 1, 0.9, 0.1)
    folds = np.repeat(np.arange(10), 10)
    scores[folds == 9] = 1.0 - scores[folds == 9]
    r = kfold_accuracy(scores, labels, folds)
    assert r["folds"] == 10 and r["fold_accuracy"] == [1.0] * 9 + [0.0]
    assert r["accuracy"] == pytest.approx(0.9) and r["accuracy_std"] == pytest.approx(0.3)
    assert all(0.1 < t <= 0.9 for t in r["fold_threshold"])


def test_single_fold_uses_its_own_best_threshold_and_says_so():
    scores, labels = np.array([0.9, 0.8, 0.3, 0.7, 0.2, 0.1]), np.array([1, 1, 1, 0, 0, 0])
    r = lfw_report(scores, labels, np.zeros(6))
    assert r["folds"] == 1 and "optimistic" in r["protocol"]
    assert r["accuracy"] == pytest.approx(5 / 6) and r["accuracy_std"] == 0.0  # best: accept >= 0.8 (or >= 0.3)
    assert r["auc"] == pytest.approx(8 / 9) and r["n_pairs"] == 6


def _subset(pairs_file: Path, out: Path, n: int) -> Path:
    """The first n matched and first n mismatched lines of a pairsDevTest-style file."""
    lines = pairs_file.read_text().splitlines()
    total = int(lines[0])
    return _write(out, [str(n)] + lines[1 : 1 + n] + lines[1 + total : 1 + total + n])


def test_benchmark_lfw_tiny_end_to_end(shared_data, tmp_path_factory, capsys):
    lfw = shared_data / "lfw_tiny"
    if not (lfw / "verify_pairs.txt").is_file():
        pytest.skip(f"lfw_tiny not found under {shared_data}")
    real = real_checkpoint()
    args = ["benchmark", "lfw", "--root", str(lfw / "verify"), "--json", "--device", "cpu"]
    if real is None:  # plumbing with a tiny model: the whole file, not aligned
        tiny = tiny_checkpoint(tmp_path_factory)
        capsys.readouterr()
        assert (
            run_cli([*args, "--pairs", str(lfw / "verify_pairs.txt"), "--checkpoint", str(tiny), "--no-align"])
            == 0
        )
        r = json.loads(capsys.readouterr().out)
        assert r["n_pairs"] == 100 and r["n_images"] == 169 and r["folds"] == 1 and 0 <= r["auc"] <= 1
        pytest.skip("no trained face model (models/facehw.pt or $FACEREC_TEST_MODEL): accuracy not checked")
    pytest.importorskip("facenet_pytorch")
    pairs = _subset(lfw / "verify_pairs.txt", tmp_path_factory.mktemp("lfw") / "pairs.txt", 8)
    assert run_cli([*args, "--pairs", str(pairs), "--checkpoint", str(real), "--align"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["n_pairs"] == 16 and r["aligned"] and not r["no_face"]
    assert r["auc"] > 0.8 and r["accuracy"] > 0.7


def _lfw_by_hand(pairs_file: Path) -> tuple[list[str], list[str], list[int]]:
    """pairsDevTest-style file parsed without facerec: header N, N matched then N mismatched lines."""
    lines = [ln.split() for ln in pairs_file.read_text().splitlines() if ln.strip()]
    a, b, same = [], [], []
    for f in lines[1:]:
        a.append(f"{f[0]}/{f[0]}_{int(f[1]):04d}.jpg")
        b.append(f"{f[0]}/{f[0]}_{int(f[2]):04d}.jpg" if len(f) == 3 else f"{f[2]}/{f[2]}_{int(f[3]):04d}.jpg")
        same.append(int(len(f) == 3))
    return a, b, same


def test_evaluate_pairs_reads_an_lfw_pair_file(shared_data, tmp_path_factory, capsys):
    """`facerec evaluate --pairs` takes LFW's format: the AUC equals one computed from a hand-parsed file."""
    from sklearn.metrics import roc_auc_score

    from facerec.cli.main import main
    from facerec.data.memory import load_flat_images

    lfw = shared_data / "lfw_tiny"
    if not (lfw / "verify_pairs.txt").is_file():
        pytest.skip(f"lfw_tiny not found under {shared_data}")
    ckpt = tiny_checkpoint(tmp_path_factory)
    capsys.readouterr()
    argv = ["evaluate", "--checkpoint", str(ckpt), "--pairs", str(lfw / "verify_pairs.txt")]
    assert main([*argv, "--root", str(lfw / "verify"), "--json", "--device", "cpu"]) == 0
    r = json.loads(capsys.readouterr().out)
    a, b, same = _lfw_by_hand(lfw / "verify_pairs.txt")
    fm = load(ckpt)
    ea = fm.embed(load_flat_images([lfw / "verify" / p for p in a], fm.image_size)).numpy().astype(np.float64)
    eb = fm.embed(load_flat_images([lfw / "verify" / p for p in b], fm.image_size)).numpy().astype(np.float64)
    if fm.scoring == "cosine":
        scores = (ea * eb).sum(1) / (np.linalg.norm(ea, axis=1) * np.linalg.norm(eb, axis=1))
    else:
        scores = -np.linalg.norm(ea - eb, axis=1)
    assert (r["n_pairs"], r["n_pos"], r["scoring"]) == (100, 50, fm.scoring)
    assert r["auc"] == pytest.approx(roc_auc_score(same, scores), abs=1e-6)


def test_one_reader_for_both_formats(shared_data, tmp_path):
    """HW2P2 `a b label` lines and LFW files come back as the same PairList; errors keep their line numbers."""
    from facerec.data.pairs import pair_file_format, read_pairs

    hw = shared_data / "formats" / "hw2p2_f21_verification_pairs_val.txt"
    lfw = shared_data / "lfw_tiny" / "verify_pairs.txt"
    if not hw.is_file() or not lfw.is_file():
        pytest.skip("shared pair files not found")
    pairs = read_pairs(hw)
    first = hw.read_text().splitlines()[0].split()
    assert pair_file_format(hw) == "hw2p2" and pairs.format == "hw2p2" and pairs.folds is None
    assert (pairs.a[0], pairs.b[0], pairs.labels[0]) == (first[0], first[1], int(first[2])) and len(pairs) == 8805
    got = read_pairs(lfw)
    a, b, same = _lfw_by_hand(lfw)
    assert pair_file_format(lfw) == "lfw" and (got.a, got.b, got.labels) == (a, b, same)
    assert got.n_folds == 1 and got.line_numbers[0] == 2
    # two integers then 2-field lines: HW2P2 pairs of images named by numbers, not an LFW header
    assert read_pairs(_write(tmp_path / "n.txt", ["10 300", "11 12"])).a == ["10", "11"]
    with pytest.raises(DataError, match=r"bad.txt:4: expected a mismatched"):
        read_pairs(_write(tmp_path / "bad.txt", ["1 1", "", "A 1 2", "x"]))
    with pytest.raises(DataError, match="LFW pair file, which is labelled"):
        read_pairs(lfw, labelled=False)


def test_evaluate_pairs_on_the_hw2p2_format_names_the_missing_image(shared_data, tmp_path_factory):
    """The Fall 2021 val pair file parses (its images are not shipped): the error is the first missing image."""
    from facerec.evaluation.datasets import evaluate_pair_file

    hw = shared_data / "formats" / "hw2p2_f21_verification_pairs_val.txt"
    if not hw.is_file():
        pytest.skip(f"{hw} not found")
    fm = load(tiny_checkpoint(tmp_path_factory))
    with pytest.raises(DataError, match=r"hw2p2_f21_verification_pairs_val.txt:1: image 'verification_data/"):
        evaluate_pair_file(fm, hw, shared_data / "formats")
