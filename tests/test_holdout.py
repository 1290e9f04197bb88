"""Validation carved out of the training folders: held-out identities (pairs, val AUC) and held-out images (val
accuracy), for datasets that come without a val split or a pair file."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_identity_folder
from facerec.cli.main import main
from facerec.data.folder import DataError, load_image
from facerec.data.holdout import (
    draw_pairs,
    hold_out_identities,
    hold_out_images,
    holdout_pairset,
    write_pair_file,
)
from facerec.data.memory import ImageSet
from facerec.data.pairs import read_pairs
from facerec.engine.checkpoint import load_checkpoint
from facerec.engine.progress import read_metrics
from test_cli import TINY


def image_set(counts: list[int]) -> ImageSet:
    """Identity c has counts[c] images; every image's pixels encode (identity, index) so rows can be traced."""
    labels = torch.tensor([c for c, n in enumerate(counts) for _ in range(n)])
    images = torch.zeros(len(labels), 2, 2, 3, dtype=torch.uint8)
    images[:, 0, 0, 0] = labels.to(torch.uint8)
    images[:, 0, 0, 1] = torch.arange(len(labels)).to(torch.uint8)
    paths = [f"/data/id{c}/{i}.jpg" for i, c in enumerate(labels.tolist())]
    return ImageSet(images, labels, [f"id{c}" for c in range(len(counts))], paths)


def identity_of_rows(s: ImageSet) -> list[str]:
    return [s.classes[y] for y in s.labels.tolist()]


def test_held_out_identities_leave_training_and_labels_still_name_the_right_person():
    full = image_set([5, 1, 4, 3, 6, 2, 4, 5, 3, 3])
    train, held = hold_out_identities(full, 0.3, seed=0)
    held_ids, train_ids = set(identity_of_rows(held)), set(identity_of_rows(train))
    assert len(held_ids) == 3 and not held_ids & train_ids and "id1" not in held_ids  # id1 has 1 image
    assert train.classes == [c for c in full.classes if c not in held_ids]  # renumbered, order kept
    assert torch.equal(train.labels.unique(), torch.arange(len(train.classes)))
    # every row still carries its own pixels and path: the identity encoded in the pixels matches its label
    for s in (train, held):
        assert [f"id{v}" for v in s.images[:, 0, 0, 0].tolist()] == identity_of_rows(s)
        assert all(p.split("/")[2] == name for p, name in zip(s.paths, identity_of_rows(s)))
    assert sorted(train.images[:, 0, 0, 1].tolist() + held.images[:, 0, 0, 1].tolist()) == list(range(len(full)))
    again, _ = hold_out_identities(full, 0.3, seed=0)
    assert again.classes == train.classes
    assert {tuple(hold_out_identities(full, 0.3, seed=s)[0].classes) for s in range(6)} != {tuple(train.classes)}


def test_holding_out_too_many_identities_says_what_to_do():
    with pytest.raises(DataError, match="smaller data.holdout"):
        hold_out_identities(image_set([3, 1, 1, 1]), 0.5)
    with pytest.raises(ValueError, match="between 0 and 1"):
        hold_out_identities(image_set([3, 3, 3]), 1.5)


def test_held_out_images_form_a_val_split_over_the_same_identities():
    full = image_set([5, 1, 2, 4])
    train, val = hold_out_images(full, 2, seed=3)
    assert train.classes == val.classes == full.classes
    assert torch.bincount(val.labels, minlength=4).tolist() == [2, 0, 0, 2]  # only identities with > 2 images
    assert torch.bincount(train.labels, minlength=4).tolist() == [3, 1, 2, 2]
    rows_t, rows_v = train.images[:, 0, 0, 1].tolist(), val.images[:, 0, 0, 1].tolist()
    assert sorted(rows_t + rows_v) == list(range(len(full)))
    assert torch.equal(val.images[:, 0, 0, 0].long(), val.labels)
    assert hold_out_images(full, 2, seed=3)[1].paths == val.paths
    with pytest.raises(DataError, match="no identity has more than 5"):
        hold_out_images(full, 5)


def test_drawn_pairs_are_distinct_correctly_labelled_and_balanced():
    labels = torch.tensor([0] * 6 + [1] * 4 + [2] * 5 + [3] * 1)
    a, b, same = draw_pairs(labels, 20, seed=0)
    assert len(a) == 20 and int(same.sum()) == 10
    assert torch.equal(same, (labels[a] == labels[b]).long())
    assert bool((a != b).all())
    unordered = {(min(x, y), max(x, y)) for x, y in zip(a.tolist(), b.tolist())}
    assert len(unordered) == 20
    assert all(torch.equal(u, v) for u, v in zip(draw_pairs(labels, 20, seed=0), (a, b, same)))
    with pytest.raises(ValueError, match="holdout_pairs must be at least 2"):
        draw_pairs(labels, 1)


def test_when_same_pairs_run_short_all_are_taken_and_the_set_stays_balanced():
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 3])
    a, b, same = draw_pairs(labels, 40, seed=1)
    every_same = {(i, j) for i, j in itertools.combinations(range(7), 2) if labels[i] == labels[j]}
    got_same = {(min(x, y), max(x, y)) for x, y, s in zip(a.tolist(), b.tolist(), same.tolist()) if s}
    assert got_same == every_same and len(a) == 2 * len(every_same)


def test_holdout_pairs_round_trip_through_a_pair_file(tmp_path: Path):
    held = image_set([4, 3, 5])
    held.paths = [str(tmp_path / p.lstrip("/")) for p in held.paths]
    ps = holdout_pairset(held, 10, seed=0, root=tmp_path / "data")
    write_pair_file(ps.pairs, tmp_path / "pairs.txt")
    back = read_pairs(tmp_path / "pairs.txt")
    assert back.a == ps.pairs.a and back.b == ps.pairs.b and back.labels == ps.labels.tolist()
    # a pair's names point at the images the PairSet holds for it
    row_of = {p: i for i, p in enumerate(held.paths)}
    for name, idx in zip(back.a, ps.idx_a.tolist()):
        assert torch.equal(held.images[row_of[str(tmp_path / "data" / name)]], ps.images[idx])


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEREC_CACHE", str(tmp_path / "cache"))


def test_training_a_plain_folder_with_holdout_reports_val_auc_and_accuracy(tmp_path: Path, cache, capsys):
    people = make_identity_folder(tmp_path / "people", [f"person_{i:02d}" for i in range(12)], 8)
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(people),
                "--out",
                str(run),
                "train.epochs=2",
                "data.holdout=0.25",
                "data.holdout_pairs=60",
                "data.val_per_class=2",
                *TINY,
            ]
        )
        == 0
    )
    log = capsys.readouterr().out
    assert "held out 3 identities (24 images)" in log
    epochs = [r for r in read_metrics(run) if r.get("event") == "epoch"]
    assert len(epochs) == 2 and all("val_auc" in r and "val_acc" in r for r in epochs)
    start = next(r for r in read_metrics(run) if r.get("event") == "start")
    assert start["num_classes"] == 9 and start["num_train_images"] == 9 * 6
    best = load_checkpoint(run / "best.pt")
    pairs = read_pairs(run / "holdout_pairs.txt")
    held = {name.split("/")[0] for name in pairs.a + pairs.b}
    assert len(held) == 3 and not held & set(best["classes"]) and len(pairs) == 60 and sum(pairs.labels) == 30
    for name in pairs.a[:3]:  # names are relative to the training root and decode
        assert load_image(people / name, 16) is not None
    # the pair file scores the best checkpoint to the AUC recorded for its epoch
    capsys.readouterr()
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(run / "best.pt"),
                "--pairs",
                str(run / "holdout_pairs.txt"),
                "--root",
                str(people),
                "--json",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert np.isclose(result["auc"], best["metrics"]["val_auc"], atol=1e-6)
    capsys.readouterr()  # evaluating on the training folder rebuilds the split: the recorded val metrics again
    argv = ["evaluate", "--checkpoint", str(run / "best.pt"), "--data", str(people), "--json"]
    assert main([*argv, "--match", "centres"]) == 0  # as validation matched during training
    captured = capsys.readouterr()
    assert (
        "scoring what its run held out (seed 0): 18 val images (2 per identity) and 60 pairs of 3 held-out"
        in captured.err
    )
    result = json.loads(captured.out)
    assert result["n_images"] == 18
    assert np.isclose(result["accuracy"], best["metrics"]["val_acc"], atol=1e-6)
    assert np.isclose(result["auc"], best["metrics"]["val_auc"], atol=1e-6)
    assert main(["report", str(run)]) == 0  # the write-up says where its validation came from
    report = (run / "report" / "report.md").read_text()
    assert "0.25 of the identities held out" in report
    assert "60 validation pairs (30 same, of identities held out of training)" in report
    make_identity_folder(people, ["person_99"], 8)  # the folder changed since: the split cannot be rebuilt
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(run / "best.pt"), "--data", str(people)]) == 1
    assert "no longer holds the identities this model trained on" in capsys.readouterr().err


def test_a_folder_without_validation_data_gets_a_hint(tmp_path: Path, cache, capsys):
    people = make_identity_folder(tmp_path / "people", ["a", "b", "c"], 4)
    assert main(["train", "--data", str(people), "--out", str(tmp_path / "run"), "train.epochs=1", *TINY]) == 0
    assert "no validation data" in capsys.readouterr().out
    # evaluating it on its own training folder warns that the accuracy is on training images
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--data", str(people)]) == 0
    assert "warning: " + f"{people} is the folder this model trained on" in capsys.readouterr().out


def test_resume_keeps_the_same_held_out_split(tmp_path: Path, cache):
    people = make_identity_folder(tmp_path / "people", [f"p{i}" for i in range(10)], 6)
    run = tmp_path / "run"
    args = [
        "--data",
        str(people),
        "--out",
        str(run),
        "data.holdout=0.3",
        "data.val_per_class=1",
        "train.seed=4",
        *TINY,
    ]
    assert main(["train", *args, "train.epochs=1"]) == 0
    first_pairs = (run / "holdout_pairs.txt").read_text()
    first_classes = load_checkpoint(run / "last.pt")["classes"]
    (run / "holdout_pairs.txt").unlink()  # the resumed run draws its split again: it must come out the same
    assert main(["train", "--out", str(run), "--resume", "train.epochs=2"]) == 0
    assert (run / "holdout_pairs.txt").read_text() == first_pairs
    assert load_checkpoint(run / "last.pt")["classes"] == first_classes
    epochs = [r for r in read_metrics(run) if r.get("event") == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2] and all("val_auc" in r for r in epochs)


def test_a_run_from_a_pack_holds_out_and_evaluates_like_one_from_folders(tmp_path: Path, cache, capsys):
    """Held-out pair files name the pack's source images (relative to that folder, whatever the working folder),
    and `evaluate --data` on the pack or on its source folder rebuilds the held-out split."""
    people = make_identity_folder(tmp_path / "people", [f"p{i}" for i in range(8)], 6)
    pack = tmp_path / "pack"
    assert main(["pack", str(people), str(pack), "--image-size", "16"]) == 0
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(pack),
                "--out",
                str(run),
                "train.epochs=1",
                "data.holdout=0.25",
                "data.holdout_pairs=20",
                "data.val_per_class=1",
                *TINY,
            ]
        )
        == 0
    )
    pairs = read_pairs(run / "holdout_pairs.txt")
    assert all((people / name).is_file() for name in pairs.a + pairs.b)
    recorded = load_checkpoint(run / "best.pt")["metrics"]
    for data in (pack, people):
        capsys.readouterr()
        argv = ["evaluate", "--checkpoint", str(run / "best.pt"), "--data", str(data), "--json"]
        assert main([*argv, "--match", "centres"]) == 0  # as validation matched during training
        result = json.loads(capsys.readouterr().out)
        assert result["n_images"] == 6 and result["n_pairs"] == 20
        assert np.isclose(result["auc"], recorded["val_auc"], atol=1e-6)
        assert np.isclose(result["accuracy"], recorded["val_acc"], atol=1e-6)
    plain = tmp_path / "plain"  # a model that held nothing out: a pack has nothing to evaluate on
    assert main(["train", "--data", str(pack), "--out", str(plain), "train.epochs=1", *TINY]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(plain / "best.pt"), "--data", str(pack)]) == 1
    assert "is a pack: training images only" in capsys.readouterr().err
