"""insightface training sets (a folder of train.rec, train.idx, property) as an ImageSet, read without MXNet.

The layout insightface's rec builder writes (CASIA-WebFace, MS1M, Glint360K): record 0 is a header whose label
holds two floats, the key of the first identity record and the end key (flag 2); records 1 .. first - 1 are the
encoded images, grouped by identity, each labelled with its class id; records first .. end - 1 are one per
identity, their label the identity's [first image key, end key). `property` is `num_classes,height,width`. A
`classes.txt` of `id<TAB>name` lines, when present, names the classes (else the ids are the names). A set without
a header record (flag 0) is read as insightface reads it: every key is an image.

Everything that can be checked without decoding is checked when the set is opened, so a damaged file stops a run
before training starts: each record's head (magic, length inside the file and before the next record, split
records followed to their end), the header and identity records, every image label (an integer class below the
class count, which `property` must agree with). A damaged JPEG is found only when decoded: up front it is left
out and counted, during training replaced (`data/recordimages.py`). Small sets are decoded up front (training then
runs at a pack's speed); a set whose decoded images would take more than `eager_bytes` is decoded batch by batch.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from facerec.data.memory import ImageSet
from facerec.data.recordimages import RecordImages, RecordIndex
from facerec.data.recordio import IR_HEADER, Heads, RecordFile, check_heads, read_index, unpack
from facerec.errors import DataError

Log = Callable[[str], None]
REC, IDX, PROPERTY, CLASSES = "train.rec", "train.idx", "property", "classes.txt"
EAGER_BYTES = 1 << 30  # decode a set up front when its images take at most this much memory (27k at 112x112)
EXAMPLES = 10  # undecodable records named in the log


def is_recordio(folder: str | Path) -> bool:
    """True if `folder` holds an insightface training set (train.rec and train.idx)."""
    return bool(folder) and (Path(folder) / REC).is_file() and (Path(folder) / IDX).is_file()


def read_recordio(folder: str | Path, log: Log = print) -> tuple[RecordIndex, list[str]]:
    """Open and check a .rec set: (where every image record is, with its label; the class names)."""
    folder = Path(folder)
    file = RecordFile(folder / REC)
    keys, offsets = read_index(folder / IDX)
    heads = file.scan(offsets)
    check_heads(file, folder / IDX, keys, offsets, heads)
    order = np.argsort(keys)

    def rows_of(wanted: np.ndarray, what: str) -> np.ndarray:
        at = np.minimum(np.searchsorted(keys[order], wanted), len(keys) - 1)
        missing = keys[order][at] != wanted
        if missing.any():
            raise DataError(
                f"{what} {int(wanted[missing][0])} is missing from {folder / IDX}; the index is damaged"
            )
        return order[at]

    first, end = _header(file, keys, offsets, heads)
    if first is None:  # no header record: every record is an image (as insightface reads such a set)
        image_rows = order
        num_classes = _property(folder)[0] or _max_label(heads, image_rows) + 1
        if num_classes > len(image_rows):
            raise DataError(
                f"{file.path} has no header record, and its labels or `property` give {num_classes} classes, "
                f"more than its {len(image_rows)} images; the file is damaged or `property` is wrong"
            )
    else:
        if end - 1 > len(keys):
            raise DataError(
                f"header record 0 of {file.path} puts the identity records at {first} .. {end - 1}, but "
                f"{folder / IDX} lists {len(keys)} records; the header or the index is damaged"
            )
        image_rows = rows_of(np.arange(1, first), "image record")
        num_classes = end - first
        given = _property(folder)[0]
        if given and given != num_classes:
            raise DataError(
                f"{folder / PROPERTY} says {given} classes but the header record of {file.path} lists "
                f"{num_classes} identity records ({first} .. {end - 1}); the two files belong to different sets"
            )
    index = _image_index(file, keys, offsets, heads, image_rows, num_classes)
    if first is not None:
        _check_identities(file, keys, heads, rows_of(np.arange(first, end), "identity record"), index, log)
    return index, _class_names(folder, num_classes)


def _header(
    file: RecordFile, keys: np.ndarray, offsets: np.ndarray, heads: Heads
) -> tuple[int, int] | tuple[None, None]:
    """(first identity key, end key) from record 0, or (None, None) for a set without a header record."""
    at = np.flatnonzero(keys == 0)
    if not len(at) or heads.flag[at[0]] == 0:
        return None, None
    header, _ = unpack(file.read(int(offsets[at[0]]), 0), f"header record 0 of {file.path}")
    label = np.asarray(header.label, dtype=np.float64)
    if len(label) < 2 or not _whole(label[:2]).all():
        raise DataError(f"header record 0 of {file.path}: label {label.tolist()} is not [first id key, end key]")
    first, end = int(label[0]), int(label[1])
    if not 1 <= first < end:
        raise DataError(
            f"header record 0 of {file.path}: identity records {first} .. {end - 1} are not a range after the "
            "images (expected 1 <= first < end); the file is damaged or not an insightface training set"
        )
    return first, end


def _property(folder: Path) -> tuple[int, int, int]:
    """(num_classes, height, width) from `property`, or zeros when there is no such file."""
    path = folder / PROPERTY
    if not path.is_file():
        return 0, 0, 0
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {path} ({err}); it should read `num_classes,height,width`") from None
    fields = [f.strip() for f in text.split(",")]
    if len(fields) != 3 or not all(f.isdigit() and len(f) <= 12 for f in fields) or int(fields[0]) < 1:
        raise DataError(f"{path} reads {text[:60]!r}; expected `num_classes,height,width`, e.g. `85742,112,112`")
    return int(fields[0]), int(fields[1]), int(fields[2])


def _labels(heads: Heads, rows: np.ndarray) -> np.ndarray:
    """Image labels as insightface reads them: the header's float, or the first float32 after it (flag > 0)."""
    return np.where(heads.flag[rows] > 0, heads.label_a[rows], heads.label[rows]).astype(np.float64)


def _whole(values: np.ndarray) -> np.ndarray:
    """Which values are finite whole numbers (labels and keys stored as floats)."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(values) & (np.floor(values) == values)


def _max_label(heads: Heads, rows: np.ndarray) -> int:
    labels = _labels(heads, rows)
    labels = labels[np.isfinite(labels)]
    return int(min(labels.max(initial=0), 2**31))


def _image_index(
    file: RecordFile, keys: np.ndarray, offsets: np.ndarray, heads: Heads, rows: np.ndarray, num_classes: int
) -> RecordIndex:
    """Where each image's bytes are and its label; a header longer than its record, or a label that is not a
    class id below `num_classes`, is a DataError naming the record."""
    if not len(rows):
        raise DataError(f"{file.path} holds no image records; is it a training set?")
    flag, length = heads.flag[rows], heads.length[rows]
    labels = _labels(heads, rows)
    split = heads.cflag[rows] == 1
    for j in np.flatnonzero(split):  # split records: their header and label read from the whole payload
        header, image = unpack(file.read(int(offsets[rows[j]]), int(keys[rows[j]])), f"record {keys[rows[j]]}")
        labels[j] = float(np.ravel(header.label)[0]) if header.flag > 0 else float(header.label)
    skip = IR_HEADER.size + 4 * flag
    short = ~split & (length < skip)
    if short.any():
        i = int(np.argmax(short))
        raise DataError(
            f"record {keys[rows[i]]} of {file.path}: its header declares {flag[i]} labels, more than its "
            f"{length[i]} bytes hold; the file is damaged"
        )
    bad = ~_whole(labels) | (labels < 0) | (labels >= num_classes)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(
            f"record {keys[rows[i]]} of {file.path} has label {labels[i]:g}, not a class id in 0 .. "
            f"{num_classes - 1} ({num_classes} classes); the file is damaged or `property` is wrong"
        )
    starts = offsets[rows] + 8 + skip
    lengths = np.where(split, -1, length - skip)
    return RecordIndex(file, keys[rows], offsets[rows], starts, lengths, labels.astype(np.int64))


def _check_identities(
    file: RecordFile, keys: np.ndarray, heads: Heads, rows: np.ndarray, index: RecordIndex, log: Log
) -> None:
    """Identity record j holds [first image key, end key) of class j: well formed, or a DataError naming it;
    image labels that disagree with these ranges are counted in a warning (the images' own labels are used, as
    insightface uses them)."""
    start, stop = heads.label_a[rows], heads.label_b[rows]
    image_end = len(index.keys) + 1
    bad = (heads.flag[rows] < 2) | (heads.cflag[rows] != 0) | (heads.length[rows] < IR_HEADER.size + 8)
    bad |= ~_whole(start) | ~_whole(stop)
    bad |= ~((start >= 1) & (start <= stop) & (stop <= image_end))
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(
            f"identity record {keys[rows[i]]} of {file.path} is not an image range [first key, end key) within "
            f"1 .. {image_end} (label {start[i]:g}, {stop[i]:g}); the file is damaged"
        )
    expected = np.full(image_end, -1, dtype=np.int64)
    for j, (a, b) in enumerate(zip(start.astype(np.int64).tolist(), stop.astype(np.int64).tolist(), strict=True)):
        expected[a:b] = j
    disagree = np.flatnonzero(expected[index.keys] != index.labels)
    if len(disagree):
        i = int(disagree[0])
        log(
            f"warning: {len(disagree)} image records of {file.path} carry a label other than their identity "
            f"record's, e.g. record {index.keys[i]} (label {index.labels[i]}, identity "
            f"{expected[index.keys[i]]}); the images' labels are used"
        )


def _class_names(folder: Path, num_classes: int) -> list[str]:
    """classes.txt's names (`id<TAB>name` lines) where present, else the class ids as strings."""
    names = [str(i) for i in range(num_classes)]
    path = folder / CLASSES
    if not path.is_file():
        return names
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {path} ({err}); it should hold `class id<TAB>name` lines") from None
    for number, line in enumerate(lines, 1):
        fields = line.split("\t")
        if not line.strip():
            continue
        if len(fields) != 2 or not fields[0].isdigit() or int(fields[0]) >= num_classes or not fields[1].strip():
            raise DataError(f"{path} line {number}: expected `class id<TAB>name` with an id below {num_classes}")
        names[int(fields[0])] = fields[1].strip()
    if len(set(names)) != len(names):
        raise DataError(f"{path} names two classes alike; each class needs a name of its own")
    return names


def open_recordio(
    folder: str | Path,
    image_size: int,
    *,
    num_workers: int = 2,
    log: Log = print,
    max_per_class: int = 0,
    max_classes: int = 0,
    eager_bytes: int | None = None,
) -> ImageSet:
    """A .rec set as training reads it: decoded up front when its images take at most `eager_bytes` (default
    EAGER_BYTES; undecodable ones left out and counted), else a `RecordImages` decoded batch by batch. `paths` is
    empty (the images have no files). `max_per_class` / `max_classes` keep the first images / identities, as for
    identity folders."""
    index, classes = read_recordio(folder, log)
    rows = _limited(index.labels, max_per_class, max_classes)
    if max_classes:
        classes = classes[:max_classes]
    images = RecordImages(index, rows, image_size, max(num_workers, 1), log)
    labels = torch.from_numpy(index.labels[rows])
    size = images.numel()
    about = f"insightface RecordIO set {folder}: {len(rows)} images of {len(classes)} identities"
    _, height, width = _property(Path(folder))
    if (height, width) not in ((0, 0), (image_size, image_size)):
        log(f"its images are {width}x{height} (property); each is resized to data.image_size={image_size}")
    eager_bytes = EAGER_BYTES if eager_bytes is None else eager_bytes
    if size > eager_bytes:
        log(f"{about}, decoded batch by batch ({size / 2**30:.1f} GiB decoded > {eager_bytes / 2**30:.1f} GiB)")
        return ImageSet(images, labels, classes)
    array, ok = images.decode_all()
    log(f"{about}, decoded up front ({array.nbytes / 2**20:.0f} MiB)")
    _report_skipped(index, rows[~ok], log)
    if not ok.any():
        raise DataError(f"none of the {len(rows)} image records of {index.file.path} decodes; is it a dataset?")
    return ImageSet(torch.from_numpy(array), labels[torch.from_numpy(ok)], classes)


def decode_records(
    folder: str | Path, image_size: int, num_workers: int = 2, log: Log = print
) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """Every image of a .rec set decoded (for `facerec pack`): (images (N, S, S, 3) uint8, labels (N,) int64,
    class names, the records that did not decode, as `train.rec:KEY`)."""
    index, classes = read_recordio(folder, log)
    rows = np.arange(len(index.keys))
    array, ok = RecordImages(index, rows, image_size, max(num_workers, 1), log).decode_all()
    if not ok.any():
        raise DataError(f"none of the {len(rows)} image records of {index.file.path} decodes; is it a dataset?")
    return array, index.labels[ok], classes, [f"{REC}:{k}" for k in index.keys[~ok].tolist()]


def _report_skipped(index: RecordIndex, rows: np.ndarray, log: Log) -> None:
    if len(rows):
        names = ", ".join(str(k) for k in index.keys[rows[:EXAMPLES]].tolist())
        log(f"skipped {len(rows)} image records of {index.file.path} that do not decode: keys {names}")


def _limited(labels: np.ndarray, max_per_class: int, max_classes: int) -> np.ndarray:
    """Rows of the first `max_classes` identities and the first `max_per_class` images of each (0 = all)."""
    keep = np.ones(len(labels), dtype=bool)
    if max_classes:
        keep &= labels < max_classes
    if max_per_class:
        order = np.argsort(labels, kind="stable")
        rank = np.empty(len(labels), dtype=np.int64)
        rank[order] = np.arange(len(labels)) - np.searchsorted(labels[order], labels[order], side="left")
        keep &= rank < max_per_class
    return np.flatnonzero(keep)
