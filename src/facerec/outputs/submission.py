"""HW2P2 submission CSVs: fixed headers, rows in the sample submission's order, written atomically.

Classification rows are `id,label` with id = test image file name ("0.jpg") and label = the identity FOLDER
NAME (never a class index: index 2 is folder "10" when the folders sort as 0, 1, 10, 2). Verification rows are
`Id,Category` with Id = "a b" exactly as in the pair file and Category = the similarity score.
"""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from facerec.data.folder import DataError, list_flat_images
from facerec.data.hw2p2 import Hw2p2Layout
from facerec.data.pairs import PairList

HEADERS: dict[str, list[str]] = {"classification": ["id", "label"], "verification": ["Id", "Category"]}


def read_sample_submission(path: str | Path, kind: Literal["classification", "verification"]) -> list[str]:
    """The ids (first column) of a sample submission, in order; the header must be exactly HEADERS[kind]."""
    if kind not in HEADERS:
        raise ValueError(f"unknown submission kind {kind!r}; choose one of {sorted(HEADERS)}")
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"sample submission {path} does not exist; check the path (see `detect_layout`).")
    rows = _read_csv_rows(path)
    if not rows or rows[0] != HEADERS[kind]:
        found = ",".join(rows[0]) if rows else "an empty file"
        raise DataError(
            f"{path}: header is {found!r}, expected {','.join(HEADERS[kind])!r} for a {kind} submission; "
            "is this the right sample file?"
        )
    ids: list[str] = []
    for number, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != 2:
            raise DataError(
                f"{path}:{number}: {len(row)} columns {row[:3]}, expected 2 ({','.join(HEADERS[kind])})."
            )
        ids.append(row[0])
    if not ids:
        raise DataError(f"{path} has a header but no rows; re-download the sample submission.")
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"{path}: id {dup!r} appears more than once; re-download the sample submission.")
    return ids


def _read_csv_rows(path: Path) -> list[list[str]]:
    """All rows of a CSV file; undecodable or malformed text becomes a DataError naming the file (and line)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            try:
                return list(reader)
            except csv.Error as err:
                raise DataError(f"{path}:{reader.line_num}: not a valid CSV row ({err}).") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text ({err.reason}); is it the right sample file?") from None
    except OSError as err:
        raise DataError(f"cannot read {path} ({err.strerror or err}).") from None


def classification_test_ids(layout: Hw2p2Layout) -> tuple[list[str], list[Path]]:
    """(ids, image paths) of the classification test set in submission order.

    Ids come from the sample submission when the layout has one (each must exist in test/), else they are the
    file names of test/ in numeric order (0.jpg, 1.jpg, ..., 10.jpg).
    """
    if layout.test is None:
        raise DataError(f"no classification test_data folder found under {layout.root}; see `detect_layout`.")
    if layout.class_sample is None:
        paths = list_flat_images(layout.test)
        return [p.name for p in paths], paths
    ids = read_sample_submission(layout.class_sample, "classification")
    paths = [layout.test / i if (layout.test / i).is_file() else layout.test / Path(i).name for i in ids]
    missing = [i for i, p in zip(ids, paths, strict=True) if not p.is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} ids of {layout.class_sample} have no image in {layout.test}, e.g. {missing[0]!r}; "
            "is the test folder complete and from the same dataset?"
        )
    unlisted = len(list_flat_images(layout.test)) - len(set(paths))
    if unlisted > 0:  # a sample cut short would silently give a submission with missing rows
        raise DataError(
            f"{layout.class_sample} lists {len(ids)} ids, but {unlisted} more images in {layout.test} are not "
            "in it; the sample submission looks truncated: re-download it."
        )
    return ids, paths


def write_classification_csv(
    out_path: str | Path, ids: Sequence[str], labels: Sequence[str], sample: str | Path | None = None
) -> Path:
    """Write `id,label` rows; `labels` are identity folder names (map indices through `FolderIndex.classes`)."""
    if len(ids) != len(labels):
        raise ValueError(f"{len(ids)} ids but {len(labels)} labels; predict exactly one label per test image")
    bad = next((i for i, label in enumerate(labels) if not isinstance(label, str)), None)
    if bad is not None:
        raise TypeError(
            f"labels[{bad}] is {labels[bad]} ({type(labels[bad]).__name__}), not a folder name; map class "
            "indices to names with `classes[index]` (FolderIndex.classes) before writing the submission"
        )
    _check_against_sample(list(ids), sample, "classification")
    return _write_atomic(out_path, HEADERS["classification"], zip(ids, labels, strict=True))


def write_verification_csv(
    out_path: str | Path, pairs: PairList, scores: Sequence[float] | np.ndarray, sample: str | Path | None = None
) -> Path:
    """Write `Id,Category` rows: Id = "a b" as written in the pair file, Category = score with 6 decimals."""
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    if values.shape[0] != len(pairs.a):
        raise ValueError(f"{values.shape[0]} scores for {len(pairs.a)} pairs of {pairs.source}; score every pair")
    if not np.isfinite(values).all():
        first = int(np.flatnonzero(~np.isfinite(values))[0])
        raise ValueError(f"score {first} ({values[first]}) is not finite; check the embeddings for NaN")
    ids = [f"{a} {b}" for a, b in zip(pairs.a, pairs.b, strict=True)]
    _check_against_sample(ids, sample, "verification")
    return _write_atomic(out_path, HEADERS["verification"], zip(ids, (f"{v:.6f}" for v in values), strict=True))


def _check_against_sample(ids: list[str], sample: str | Path | None, kind: str) -> None:
    if sample is None:
        return
    expected = read_sample_submission(sample, kind)  # type: ignore[arg-type]
    if len(expected) != len(ids):
        raise DataError(
            f"{len(ids)} rows to write but the sample submission {sample} has {len(expected)}; "
            "predict on the matching test set (same pair file / test folder)."
        )
    row = next((k for k, (want, got) in enumerate(zip(expected, ids, strict=True)) if want != got), None)
    if row is not None:
        raise DataError(
            f"row {row + 1}: id {ids[row]!r} but the sample submission {sample} has {expected[row]!r}; "
            "rows must follow the sample's order (use its ids / the matching pair file)."
        )


def _write_atomic(out_path: str | Path, header: list[str], rows: Iterable[tuple[str, str]]) -> Path:
    """Write to a temp file in the same folder, then os.replace, so a crash never leaves half a CSV."""
    out_path = Path(out_path).expanduser()
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
    except OSError as err:
        raise DataError(f"cannot write {out_path} ({err.strerror or err}); choose another output folder") from None
    try:
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)
        os.replace(tmp, out_path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):  # e.g. a full disk: the previous file (if any) is left as it was
            raise DataError(
                f"could not write {out_path} ({err.strerror or err}); any previous file there is unchanged. "
                "Free disk space or choose another output folder."
            ) from err
        raise
    return out_path
