"""Submission CSVs: headers, sample order, folder names (not indices) as labels, atomic writes."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facerec.data.folder import DataError
from facerec.data.hw2p2 import detect_layout
from facerec.data.pairs import PairList, read_pairs
from facerec.outputs.submission import (
    classification_test_ids,
    read_sample_submission,
    write_classification_csv,
    write_verification_csv,
)


def _read_rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as f:
        return list(csv.reader(f))


def _sample(path: Path, header: str, ids: list[str]) -> Path:
    path.write_text("\n".join([header] + [f"{i},0" for i in ids]) + "\n")
    return path


def test_classification_round_trip_follows_sample_order(tmp_path: Path) -> None:
    ids = ["0.jpg", "1.jpg", "2.jpg", "10.jpg"]
    sample = _sample(tmp_path / "sample.csv", "id,label", ids)
    out = write_classification_csv(tmp_path / "sub" / "cls.csv", ids, ["7", "3", "7", "12"], sample)
    rows = _read_rows(out)
    assert rows[0] == ["id", "label"]
    assert [r[0] for r in rows[1:]] == read_sample_submission(sample, "classification") == ids
    assert [r[1] for r in rows[1:]] == ["7", "3", "7", "12"]
    assert out.read_text().endswith("10.jpg,12\n") and "\r" not in out.read_text()


def test_classification_labels_are_folder_names_not_indices(tmp_path: Path) -> None:
    classes = ["0", "1", "10", "2"]  # lexicographic order, where index != name for "10" and "2"
    predicted = np.array([2, 3, 0])  # argmax over these classes
    write_classification_csv(tmp_path / "c.csv", ["0.jpg", "1.jpg", "2.jpg"], [classes[i] for i in predicted])
    assert [r[1] for r in _read_rows(tmp_path / "c.csv")[1:]] == ["10", "2", "0"]
    with pytest.raises(TypeError, match=r"labels\[0\] is 2 .*not a folder name"):
        write_classification_csv(tmp_path / "c.csv", ["0.jpg"], list(predicted[:1]))
    with pytest.raises(TypeError, match="not a folder name"):
        write_classification_csv(tmp_path / "c.csv", ["0.jpg"], [2])  # type: ignore[list-item]


def test_mismatch_with_sample_raises_and_keeps_the_old_file(tmp_path: Path) -> None:
    sample = _sample(tmp_path / "sample.csv", "id,label", ["0.jpg", "1.jpg", "2.jpg"])
    out = write_classification_csv(tmp_path / "c.csv", ["0.jpg", "1.jpg", "2.jpg"], ["a", "b", "c"], sample)
    before = out.read_bytes()
    with pytest.raises(DataError, match=r"row 2: id '2.jpg' but the sample submission .* has '1.jpg'"):
        write_classification_csv(out, ["0.jpg", "2.jpg", "1.jpg"], ["a", "b", "c"], sample)
    with pytest.raises(DataError, match="2 rows to write but the sample submission .* has 3"):
        write_classification_csv(out, ["0.jpg", "1.jpg"], ["a", "b"], sample)
    with pytest.raises(ValueError, match="2 ids but 1 labels"):
        write_classification_csv(out, ["0.jpg", "1.jpg"], ["a"])
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.csv", "sample.csv"]  # no temp files left behind


def test_verification_round_trip(tmp_path: Path) -> None:
    pairs = PairList(
        ["verification_data/1.jpg", "v/3.jpg"], ["verification_data/2.jpg", "v/4.jpg"], None, tmp_path
    )
    sample = _sample(
        tmp_path / "vs.csv", "Id,Category", ["verification_data/1.jpg verification_data/2.jpg", "v/3.jpg v/4.jpg"]
    )
    out = write_verification_csv(tmp_path / "v.csv", pairs, np.array([0.25, -0.1234567]), sample)
    rows = _read_rows(out)
    assert rows == [
        ["Id", "Category"],
        ["verification_data/1.jpg verification_data/2.jpg", "0.250000"],
        ["v/3.jpg v/4.jpg", "-0.123457"],
    ]
    swapped = PairList(pairs.a[::-1], pairs.b[::-1], None, tmp_path)
    with pytest.raises(DataError, match="row 1"):
        write_verification_csv(tmp_path / "v.csv", swapped, [0.1, 0.2], sample)
    with pytest.raises(ValueError, match="not finite"):
        write_verification_csv(tmp_path / "v.csv", pairs, [0.1, float("nan")])
    with pytest.raises(ValueError, match="1 scores for 2 pairs"):
        write_verification_csv(tmp_path / "v.csv", pairs, [0.1])


@pytest.mark.parametrize(
    ("text", "kind", "match"),
    [
        ("Id,Category\n0.jpg,0\n", "classification", "header is 'Id,Category', expected 'id,label'"),
        ("id,label\n", "verification", "expected 'Id,Category'"),
        ("", "classification", "an empty file"),
        ("id,label\n0.jpg,0,9\n", "classification", r"s.csv:2: 3 columns"),
        ("id,label\n0.jpg,0\n0.jpg,1\n", "classification", "appears more than once"),
    ],
)
def test_bad_sample_submissions(tmp_path: Path, text: str, kind: str, match: str) -> None:
    (tmp_path / "s.csv").write_text(text)
    with pytest.raises(DataError, match=match):
        read_sample_submission(tmp_path / "s.csv", kind)  # type: ignore[arg-type]


def test_classification_test_ids_from_sample_or_numeric(tmp_path: Path) -> None:
    root = tmp_path / "kaggle"
    (root / "test_data").mkdir(parents=True)
    for i in (0, 1, 2, 10):
        Image.new("RGB", (4, 4)).save(root / "test_data" / f"{i}.jpg")
    (root / "val_data" / "0").mkdir(parents=True)
    ids, paths = classification_test_ids(detect_layout(root))
    assert ids == ["0.jpg", "1.jpg", "2.jpg", "10.jpg"] and paths[3] == root / "test_data" / "10.jpg"
    _sample(root / "classification_sample_submission.csv", "id,label", ["10.jpg", "0.jpg", "2.jpg", "1.jpg"])
    ids, paths = classification_test_ids(detect_layout(root))
    assert ids == ["10.jpg", "0.jpg", "2.jpg", "1.jpg"] and [p.name for p in paths] == ids
    _sample(root / "classification_sample_submission.csv", "id,label", ["0.jpg", "99.jpg"])
    with pytest.raises(DataError, match="1 ids .* have no image .* '99.jpg'"):
        classification_test_ids(detect_layout(root))


def test_real_facehw_samples_match_pairs_and_test_folder(facehw: Path, tmp_path: Path) -> None:
    layout = detect_layout(facehw)
    ids, paths = classification_test_ids(layout)
    assert len(ids) == len(paths) > 0 and all(p.is_file() for p in paths[:50])
    pairs = read_pairs(layout.pairs_test)
    out = write_verification_csv(tmp_path / "v.csv", pairs, np.zeros(len(pairs)), layout.verif_sample)
    assert [r[0] for r in _read_rows(out)[1:]] == read_sample_submission(layout.verif_sample, "verification")
