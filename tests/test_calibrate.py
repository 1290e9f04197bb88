"""Threshold calibration: the empirical FAR at the stored threshold is <= the target on the calibration pairs."""

from __future__ import annotations

import itertools
import json
import shutil

import numpy as np
import pytest

from facerec.data.folder import DataError
from facerec.engine.checkpoint import load_checkpoint
from facerec.evaluation.calibrate import calibrate, calibrate_scores, is_lfw_pair_file
from facerec.inference.load import load
from test_lfw import one_thread, run_cli, tiny_checkpoint  # noqa: F401  (one_thread: autouse fixture)


@pytest.mark.parametrize("far", [0.5, 0.1, 0.01, 1e-3])
def test_far_at_threshold_is_at_most_target(far):
    rng = np.random.default_rng(int(far * 1000))
    labels = rng.integers(0, 2, 3000)
    scores = rng.normal(labels * 1.5, 1.0)
    r = calibrate_scores(scores, labels, far)
    neg = scores[labels == 0]
    assert r["far"] == pytest.approx((neg >= r["threshold"]).mean()) and r["far"] <= far
    assert (neg >= np.max(neg[neg < r["threshold"]])).mean() > far  # one step lower would break the target
    assert 0 < r["tar"] <= 1 and r["note"] == ""
    assert "smallest non-zero FAR" in calibrate_scores(scores[:50], labels[:50], 1e-3)["note"]


def _pair_file(face_dir, path):
    """`a b label` lines over every pair of images in face_dir (3 people x 4 images)."""
    images = sorted(p.relative_to(face_dir).as_posix() for p in face_dir.glob("*/*.jpg"))
    lines = [f"{a} {b} {int(a.split('/')[0] == b.split('/')[0])}" for a, b in itertools.combinations(images, 2)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_calibrate_writes_threshold_into_a_copy(tmp_path_factory, face_dir, tmp_path):

    src = tiny_checkpoint(tmp_path_factory)
    pairs = _pair_file(face_dir, tmp_path / "pairs.txt")
    assert not is_lfw_pair_file(pairs)
    out = tmp_path / "calibrated.pt"
    r = calibrate(src, pairs, face_dir, far=0.1, out=out, log=lambda m: None)
    state = load_checkpoint(out)
    assert state["threshold"] == r["threshold"] and state["threshold_far"] == 0.1
    assert "pairs.txt" in state["threshold_source"] and "FAR <= 0.1" in state["threshold_source"]
    assert "threshold_far" not in load_checkpoint(src)  # --out leaves the original alone

    fm = load(out)
    assert fm.threshold == pytest.approx(r["threshold"])
    rows = [line.split() for line in pairs.read_text().splitlines()]
    scores = np.array([fm.score(face_dir / a, face_dir / b) for a, b, _ in rows])
    labels = np.array([int(y) for *_, y in rows])
    far = (scores[labels == 0] >= fm.threshold).mean()
    assert far <= 0.1 and far == pytest.approx(r["far"], abs=1e-9)


def test_calibrate_cli_on_lfw_pairs_in_place(shared_data, tmp_path_factory, tmp_path, capsys):
    lfw = shared_data / "lfw_tiny"
    if not (lfw / "verify_pairs.txt").is_file():
        pytest.skip("lfw_tiny not found")
    ckpt = tmp_path / "model.pt"
    shutil.copy(tiny_checkpoint(tmp_path_factory), ckpt)
    capsys.readouterr()
    assert (
        run_cli(
            [
                "calibrate",
                "--checkpoint",
                str(ckpt),
                "--pairs",
                str(lfw / "verify_pairs.txt"),
                "--root",
                str(lfw / "verify"),
                "--far",
                "0.05",
                "--json",
                "--device",
                "cpu",
                "--no-align",  # 169 photos through MTCNN would take minutes; the tiny model is plumbing only
            ]
        )
        == 0
    )
    r = json.loads(capsys.readouterr().out)
    assert r["n_pairs"] == 100 and r["n_different"] == 50 and r["far"] <= 0.05
    assert load_checkpoint(ckpt)["threshold"] == pytest.approx(r["threshold"])
    with pytest.raises(ValueError, match="between 0 and 1"):
        calibrate(ckpt, lfw / "verify_pairs.txt", lfw / "verify", far=5)
    with pytest.raises(DataError, match="does not exist"):
        calibrate(ckpt, tmp_path / "missing.txt", lfw / "verify", far=0.1)
