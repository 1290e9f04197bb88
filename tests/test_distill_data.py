"""The data rule of distillation (distillation/data.py): training images only; verification, test, val and LFW
folders, and the folder of the val pairs' images, are refused with a message that says why."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import make_hw2p2
from facerec.cli.main import main
from facerec.config import load_config
from facerec.data.folder import DataError
from facerec.distillation.data import load_distill_data, refusal


@pytest.mark.parametrize(
    "folder, why",
    [
        ("verification_data", "verification images"),
        ("classification_data/test_data", "test split"),
        ("classification_data/val_data", "validation split"),
    ],
)
def test_evaluation_folders_are_refused(
    folder: str, why: str, facehw: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    args = ["distill", "--teacher", "dlib", "--data", str(facehw / folder), "--out", str(out)]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "refused as training data" in err and why in err and "training images only" in err
    assert not out.exists()  # nothing written, not even the run folder
    assert main([*args[:4], str(facehw), "--extra", str(facehw / folder), "--out", str(out)]) == 1
    assert why in capsys.readouterr().err


def test_lfw_copies_are_refused(shared_data: Path, facehw: Path, tmp_path: Path) -> None:
    assert "LFW" in refusal(shared_data / "lfw_tiny" / "classify")
    lfw = tmp_path / "a" / "people"  # LFW's naming under an innocent name
    for who in ("Ann_Lee", "Bo_Chan"):
        (lfw / who).mkdir(parents=True)
        shutil.copy(_any_jpg(facehw), lfw / who / f"{who}_0001.jpg")
    assert "LFW's file naming" in refusal(lfw)
    mine = tmp_path / "mine" / "faces"
    (mine / "x").mkdir(parents=True)
    shutil.copy(_any_jpg(facehw), mine / "x" / "1.jpg")
    assert refusal(mine) is None
    (mine.parent / "pairs.txt").write_text("10 300\n")  # a pair file beside the images: a verification set
    assert "pair file" in refusal(mine)
    assert refusal(facehw / "classification_data" / "train_data", pair_files_allowed=True) is None


def _any_jpg(facehw: Path) -> Path:
    return next((facehw / "classification_data" / "train_data" / "0").glob("*.jpg"))


def test_the_val_pairs_images_are_refused_as_training_images(tmp_path: Path) -> None:
    root = make_hw2p2(tmp_path / "hw", n_ids=3, per_id=4)
    train = root / "classification_data" / "train_data"
    pairs = tmp_path / "mine.txt"  # val pairs drawn from the training folders themselves
    pairs.write_text("classification_data/train_data/1/0000.jpg classification_data/train_data/4/0000.jpg 0\n")
    cfg = load_config(None, [f"data.root={root}", f"data.pairs={pairs}", "data.image_size=16", "data.cache=false"])
    with pytest.raises(DataError, match="val pairs' images"):
        load_distill_data(cfg, lambda _: None)
    cfg = load_config(None, [f"data.root={root}", "data.image_size=16", "data.cache=false"])
    data = load_distill_data(cfg, lambda _: None)  # the layout's own pairs: verification_data, apart
    assert len(data.train) == 12 and data.labelled == 12 and data.pairs is not None
    assert all(Path(p).is_relative_to(train) for p in data.train.paths)


def test_the_command_line_fills_the_distill_section(capsys: pytest.CaptureFixture) -> None:
    args = [
        "distill",
        "--teacher",
        "models/x.onnx",
        "--data",
        "d",
        "--extra",
        "a",
        "--extra",
        "b",
        "--print-config",
    ]
    assert main([*args, "distill.weight_relational=2", "distill.onnx_channels=bgr"]) == 0
    printed = capsys.readouterr().out
    assert "teacher: models/x.onnx" in printed and "weight_relational: 2.0" in printed
    assert "extra:\n  - a\n  - b" in printed and "onnx_channels: bgr" in printed
    assert main(["distill", "--teacher", "dlib", "--data", "d"]) == 2  # no --out


def test_an_extra_folder_holding_the_val_pairs_images_is_refused(tmp_path: Path) -> None:
    root = make_hw2p2(tmp_path / "hw", n_ids=3, per_id=4)
    mine = tmp_path / "mine" / "faces"
    mine.mkdir(parents=True)
    for name in ("10000000.jpg", "10000001.jpg"):  # two verification images copied under another name
        shutil.copy(root / "verification_data" / name, mine / name)
    pairs = tmp_path / "p.txt"
    pairs.write_text(f"{mine / '10000000.jpg'} {mine / '10000001.jpg'} 0\n")
    over = [f"data.root={root}", f"data.pairs={pairs}", "data.image_size=16", "data.cache=false"]
    cfg = load_config(None, [*over, f"distill.extra=[{mine}]"])
    with pytest.raises(DataError, match="val pairs' images"):
        load_distill_data(cfg, lambda _: None)
