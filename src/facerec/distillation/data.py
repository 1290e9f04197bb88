"""The training data of a distillation run, and the rule that it holds training images only.

The teacher and the student see training images only (issue #18). On an HW2P2 layout that is train_data, plus
any extra folders the user names (`distill.extra`: identity folders, labelled, or flat folders of face crops,
unlabelled). A folder is refused as training data, with a DataError that says why, when it is:
  * a verification, test or validation split (`verification_data`, `test_data`, `val_data`);
  * an LFW copy: a folder named lfw..., LFW's file naming (`Name_Surname/Name_Surname_0001.jpg`), or a pair file
    (LFW's pairs.txt, pairsDevTest.txt, ...) beside its images. facehw's verification pairs are LFW people;
  * the folder of the images of the run's val pair file.
Validation (the val pairs, the val split) is still read as `facerec train` reads it: it scores the student only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from facerec.config import Config
from facerec.data.folder import DataError, is_image_name, list_flat_images, load_images
from facerec.data.hw2p2 import Hw2p2Layout, detect_layout
from facerec.data.memory import ImageSet, load_identity_folders
from facerec.data.pack import image_root, is_pack
from facerec.data.pairs import check_pair_files, read_pairs
from facerec.data.pairset import PairSet, load_pairset
from facerec.engine.data import load_data
from facerec.engine.log import Log, echo

EVALUATION_SPLITS = {
    "verification_data": "the verification images (the val / test pairs' faces; in facehw, LFW people)",
    "test_data": "the test split (the images the classification submission is scored on)",
    "val_data": "the validation split (the images validation accuracy is measured on)",
}
_LFW_WORD = re.compile(r"(^|[^a-z])lfw([^a-z]|$)")
_LFW_NAME = re.compile(r"^(?P<who>.+)_[0-9]{4}$")
_WHY_NOT = (
    "distillation trains teacher and student on training images only: pass the dataset root (its train_data is "
    "used) and name folders of your own face crops with --extra"
)


@dataclass
class DistillData:
    """The run's data: training images (labels -1 where an image has none), the val split and val pairs."""

    train: ImageSet
    val: ImageSet | None
    pairs: PairSet | None
    layout: Hw2p2Layout | None  # None for an unlabelled folder of face crops

    @property
    def labelled(self) -> int:
        return int((self.train.labels >= 0).sum())


def refusal(folder: str | Path, pair_files_allowed: bool = False) -> str | None:
    """Why `folder` may not be training data (module notes), or None. `pair_files_allowed`: the folder is the
    train split of an HW2P2 layout, whose dataset root holds the assignment's own pair files."""
    path = Path(folder).expanduser().resolve()
    for part in (path.name, path.parent.name):
        if part in EVALUATION_SPLITS:
            return f"it is {EVALUATION_SPLITS[part]}"
    if any(_LFW_WORD.search(p.lower()) for p in (path.name, path.parent.name)):
        return "it is an LFW copy (its path names LFW); LFW people are facehw's verification identities"
    if path.is_dir() and _lfw_file_names(path):
        return (
            "it holds LFW's file naming (Name/Name_0001.jpg): an LFW copy, whose people are facehw's verification "
            "identities"
        )
    if not pair_files_allowed:
        for where in (path, path.parent):
            found = sorted(p.name for p in where.glob("*pairs*.txt")) if where.is_dir() else []
            if found:
                return f"a pair file ({found[0]} in {where}) sits beside its images: it is a verification set"
    return None


def _lfw_file_names(folder: Path, probe: int = 10) -> bool:
    """Most of the first `probe` identity folders hold files named <folder>_NNNN.<ext>, as LFW's do."""
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir())[:probe]
    hits = 0
    for d in subdirs:
        names = [f.stem for f in d.iterdir() if is_image_name(f.name)][:5]
        hits += bool(names) and all((m := _LFW_NAME.match(n)) and m["who"] == d.name for n in names)
    return bool(subdirs) and hits * 2 > len(subdirs)


def check_training_folder(folder: str | Path, what: str, pair_files_allowed: bool = False) -> None:
    """DataError when `folder` may not be training data, naming it and saying why."""
    why = refusal(folder, pair_files_allowed)
    if why is not None:
        raise DataError(f"{what} {folder} is refused as training data: {why}; {_WHY_NOT}")


def _check_root(root: str) -> Hw2p2Layout | None:
    """Check data.root under the rule; its HW2P2 layout (None for a flat folder of unlabelled crops)."""
    if is_pack(root):
        check_training_folder(image_root(root), f"the pack {root}, made from")
        return None
    check_training_folder(root, "--data", pair_files_allowed=True)  # an HW2P2 root holds its own pair files
    try:
        layout = detect_layout(root)
    except DataError:
        if _has_images(Path(root)):  # a flat folder of face crops: unlabelled
            check_training_folder(root, "--data")
            return None
        raise
    if layout.kind == "folder":
        check_training_folder(root, "--data")
    elif layout.train is None:
        raise DataError(f"{root} has no train_data split: distillation trains on training images only")
    else:
        check_training_folder(layout.train, "the train split", pair_files_allowed=True)
    return layout


def _has_images(folder: Path) -> bool:
    return folder.is_dir() and any(is_image_name(p.name) and p.is_file() for p in folder.iterdir())


def _flat(folder: str | Path, size: int, workers: int, log: Log) -> ImageSet:
    """A folder of face crops without identities: labels -1."""
    paths = list_flat_images(folder)
    array, failed = load_images(paths, size, num_workers=workers)
    if failed:
        log(f"skipped {len(failed)} unreadable images in {folder}, e.g. {paths[failed[0]]}")
    kept = [str(p) for i, p in enumerate(paths) if i not in set(failed)]
    if not kept:
        raise DataError(f"no readable images in {folder}")
    log(f"unlabelled: {len(kept)} face crops from {folder} (the teacher's losses alone train on them)")
    return ImageSet(torch.from_numpy(array), torch.full((len(kept),), -1, dtype=torch.int64), [], kept)


def _joined(a: ImageSet, b: ImageSet, prefix: str) -> ImageSet:
    """b's images after a's; b's identities become new classes named prefix/identity."""
    labels = torch.where(b.labels >= 0, b.labels + len(a.classes), b.labels)
    return ImageSet(
        torch.cat([a.images, b.images]),
        torch.cat([a.labels, labels]),
        a.classes + [f"{prefix}/{c}" for c in b.classes],
        list(a.paths) + list(b.paths),
    )


def _extra(folder: str, cfg: Config, log: Log) -> ImageSet:
    check_training_folder(folder, "distill.extra folder")
    d = cfg.data
    if _has_images(Path(folder)):
        return _flat(folder, d.image_size, d.num_workers, log)
    extra = load_identity_folders(folder, d.image_size, None, d.num_workers, d.cache, log)
    log(f"extra: {len(extra)} images of {len(extra.classes)} identities from {folder}")
    return extra


def _check_pair_images(pairs_file: Path | None, layout: Hw2p2Layout | None, train: ImageSet) -> None:
    """DataError when a training image lies in a folder of the val pairs' images (evaluation data)."""
    if pairs_file is None:
        return
    root, verification = (layout.root, layout.verification) if layout is not None else (pairs_file.parent, None)
    a, b = check_pair_files(read_pairs(pairs_file), root, verification)
    folders = {Path(p).resolve().parent for p in a + b}
    for p in train.paths:
        if Path(p).resolve().parent in folders:
            raise DataError(
                f"training image {p} lies in the folder of the val pairs' images ({pairs_file}): it is evaluation "
                f"data; {_WHY_NOT}"
            )


def load_distill_data(cfg: Config, log: Log = echo) -> DistillData:
    """The run's data under the rule (module notes): train (+ extras), val split and val pairs."""
    d = cfg.data
    if not d.root:
        raise DataError("no dataset given: pass --data DIR (an HW2P2 folder, identity folders or face crops)")
    for folder in cfg.distill.extra:  # every folder is checked before any image is decoded
        check_training_folder(folder, "distill.extra folder")
    layout = _check_root(d.root)
    if layout is None and not is_pack(d.root):
        train, val = _flat(d.root, d.image_size, d.num_workers, log), None
        pairs = load_pairset(d.pairs, Path(d.pairs).parent, None, d.image_size, d.num_workers) if d.pairs else None
    else:
        layout, train, val, pairs = load_data(cfg, log)
        if is_pack(d.root):  # a pack's paths are relative to the split it was decoded from
            train = replace(train, paths=[str(image_root(d.root) / p) for p in train.paths])
    for i, folder in enumerate(cfg.distill.extra):
        train = _joined(train, _extra(folder, cfg, log), f"extra{i}")
    _check_pair_images(Path(d.pairs) if d.pairs else layout.pairs_val if layout else None, layout, train)
    if not train.paths or len(train.paths) != len(train):
        raise DataError(f"the training images of {d.root} have no file paths: the teacher must read the files")
    return DistillData(replace(train, labels=train.labels.long()), val, pairs, layout)
