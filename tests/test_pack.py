"""Packed datasets: `facerec pack` decodes once; training from the pack equals training from the folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_identity_folder, tiny_overrides
from facerec.cli.main import main
from facerec.data.folder import DataError
from facerec.data.memory import ImageSet
from facerec.data.pack import is_pack, open_pack, pack_dataset, subset
from facerec.engine.progress import read_metrics

TINY = tiny_overrides("train.epochs=1", "data.augment=none")


def test_pack_keeps_order_labels_and_reports_bad_images(tmp_path: Path):
    root = make_identity_folder(tmp_path / "faces", ["b", "a", "10", "9"], 3)
    (root / "a" / "0001.jpg").write_bytes(b"not a jpeg")
    messages: list[str] = []
    result = pack_dataset(root, tmp_path / "pack", image_size=16, log=messages.append)
    assert result.num_images == 11 and result.num_classes == 4 and result.skipped == ["a/0001.jpg"]
    assert any("skipped 1 unreadable images, e.g. a/0001.jpg" in m for m in messages)
    meta = json.loads((tmp_path / "pack" / "meta.json").read_text())
    assert meta["num_skipped"] == 1 and meta["skipped"] == ["a/0001.jpg"] and meta["image_size"] == 16
    assert is_pack(tmp_path / "pack")
    packed = open_pack(tmp_path / "pack", 16, log=lambda m: None)
    assert packed.classes == ["10", "9", "a", "b"]  # sorted names, as the folder loader orders them
    assert packed.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
    assert packed.paths[6:8] == [str(root / "a" / "0000.jpg"), str(root / "a" / "0002.jpg")]  # source files
    assert packed.images.dtype == torch.uint8 and tuple(packed.images.shape) == (11, 16, 16, 3)
    assert isinstance(np.load(tmp_path / "pack" / "images.npy", mmap_mode="r"), np.memmap)


def test_pack_refuses_existing_folder_and_wrong_image_size(tmp_path: Path):
    root = make_identity_folder(tmp_path / "faces", ["x", "y"], 2)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("keep me")
    with pytest.raises(DataError, match="not empty"):
        pack_dataset(root, tmp_path / "taken", image_size=16, log=lambda m: None)
    pack_dataset(root, tmp_path / "pack", image_size=16, log=lambda m: None)
    with pytest.raises(DataError, match="data.image_size=16"):
        open_pack(tmp_path / "pack", 32, log=lambda m: None)


def test_subset_takes_first_classes_and_images():
    images = ImageSet(
        torch.arange(9).view(9, 1, 1, 1).to(torch.uint8),
        torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2]),
        ["a", "b", "c"],
        [str(i) for i in range(9)],
    )
    small = subset(images, max_per_class=2, max_classes=2)
    assert small.labels.tolist() == [0, 0, 1, 1] and small.classes == ["a", "b"]
    assert small.images.flatten().tolist() == [0, 1, 3, 4] and small.paths == ["0", "1", "3", "4"]


def test_training_from_a_pack_equals_training_from_the_folders(
    hw2p2_dir: Path, tmp_path: Path, monkeypatch, capsys
):
    monkeypatch.setenv("FACEREC_CACHE", str(tmp_path / "cache"))
    assert main(["pack", str(hw2p2_dir), str(tmp_path / "pack"), "--image-size", "16"]) == 0
    assert "packed 96 images of 12 identities" in capsys.readouterr().out
    assert main(["train", "--data", str(tmp_path / "pack"), "--out", str(tmp_path / "a"), *TINY]) == 0
    out = capsys.readouterr().out
    assert "using pack" in out and not [m for m in out.splitlines() if "decoded" in m and "train_data" in m]
    assert main(["train", "--data", str(hw2p2_dir), "--out", str(tmp_path / "b"), *TINY]) == 0
    a, b = (next(r for r in read_metrics(tmp_path / run) if r["event"] == "epoch") for run in ("a", "b"))
    assert a["train_loss"] == b["train_loss"] and a["val_auc"] == b["val_auc"]  # val and pairs from the source


def test_pack_without_source_uses_data_val_and_pairs(hw2p2_dir: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("FACEREC_CACHE", str(tmp_path / "cache"))
    pack_dataset(hw2p2_dir, tmp_path / "pack", image_size=16, log=lambda m: None)
    meta = json.loads((tmp_path / "pack" / "meta.json").read_text())
    (tmp_path / "pack" / "meta.json").write_text(json.dumps({**meta, "source": str(tmp_path / "moved")}))
    val = hw2p2_dir / "classification_data" / "val_data"
    pairs = hw2p2_dir / "verification_pairs_val.txt"
    assert (
        main(
            [
                "train",
                "--data",
                str(tmp_path / "pack"),
                "--out",
                str(tmp_path / "run"),
                *TINY,
                f"data.val={val}",
                f"data.pairs={pairs}",
            ]
        )
        == 0
    )
    epoch = next(r for r in read_metrics(tmp_path / "run") if r["event"] == "epoch")
    assert "val_acc" in epoch and "val_auc" in epoch
