"""Identity-folder datasets (root/<identity>/<image>) scanned into paths + labels, decoded in a thread pool.

Labels always come from folder NAMES: a split scanned with `class_names=` (e.g. val onto train's classes) gets
the index of the same folder name in that vocabulary, never a re-numbering of its own folders.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facerec.data.images import MAX_PIXELS, load_image  # noqa: F401 (re-exported: the one decoder)
from facerec.errors import DataError  # noqa: F401 (re-exported)

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff"}
)
_CHUNK = 256  # images per thread-pool task in load_images


@dataclass
class FolderIndex:
    """Image paths and integer labels of an identity-folder tree; `labels[i]` indexes `classes`.

    `empty_classes`: identity folders without a single image (not part of `classes` unless given as the
    vocabulary). `skipped_files`: hidden entries and files without an image extension. `unknown_classes`:
    identity folders missing from the `class_names` vocabulary; their images are excluded.
    """

    paths: list[Path]
    labels: list[int]
    classes: list[str]
    empty_classes: list[str] = field(default_factory=list)
    skipped_files: list[Path] = field(default_factory=list)
    unknown_classes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)


def is_hidden(name: str) -> bool:
    """Dot files/folders and the `__MACOSX` folder that zip archives made on macOS carry."""
    return name.startswith(".") or name == "__MACOSX"


def is_image_name(name: str) -> bool:
    return not is_hidden(name) and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


_INT = re.compile(r"[0-9]+")


def natural_order(names: Iterable[str], key: Callable[[str], str] = lambda s: s) -> list[str]:
    """Sort numerically ("2" < "10") when every key is a non-negative integer, else lexicographically."""
    names = list(names)
    if names and all(_INT.fullmatch(key(n)) for n in names):
        return sorted(names, key=lambda n: (int(key(n)), n))
    return sorted(names)


def _stem(name: str) -> str:
    return os.path.splitext(name)[0]


def _list_dir(folder: Path) -> tuple[list[str], list[str], list[Path]]:
    """(image file names, visible subfolder names, skipped entries) directly inside `folder`."""
    images: list[str] = []
    dirs: list[str] = []
    skipped: list[Path] = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if is_hidden(entry.name):
                skipped.append(Path(entry.path))
            elif entry.is_dir():
                dirs.append(entry.name)
            elif is_image_name(entry.name):
                images.append(entry.name)
            else:
                skipped.append(Path(entry.path))
    return images, dirs, sorted(skipped)


def _require_dir(root: str | Path, what: str) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{what} {root} is not a directory; check the path (and FACEREC_DATA / --data).")
    return root


def scan_identity_folders(root: str | Path, class_names: Sequence[str] | None = None) -> FolderIndex:
    """Index root/<identity>/<image>. Images inside each identity are in natural order, classes likewise.

    With `class_names`, that list is the label vocabulary (label = its index of the folder name), folders it
    lacks go to `unknown_classes` and are excluded; use this to map val/test splits onto train's classes.
    """
    root = _require_dir(root, "identity-folder root")
    top_images, identities, skipped = _list_dir(root)
    if not identities:
        hint = f"it holds {len(top_images)} images directly (a flat test folder?)" if top_images else "it is empty"
        raise DataError(
            f"{root} has no identity folders: expected {root}/<identity>/<image>.jpg, but {hint}. "
            "Point at a folder of per-identity subfolders (e.g. classification_data/train_data)."
        )
    skipped += [root / name for name in top_images]
    files: dict[str, list[str]] = {}
    empty: list[str] = []
    for identity in identities:
        images, subdirs, inner_skipped = _list_dir(root / identity)
        skipped += inner_skipped + [root / identity / d for d in subdirs]
        if images:
            files[identity] = natural_order(images, key=_stem)
        elif subdirs:
            raise DataError(
                f"{root / identity} holds folders ({', '.join(sorted(subdirs)[:3])}) but no images, so {root} is "
                "not an identity-folder root; point at the folder whose subfolders hold the images directly "
                "(for the HW2P2 layouts use facerec.data.hw2p2.detect_layout)."
            )
        else:
            empty.append(identity)
    if not files:
        raise DataError(
            f"none of the {len(identities)} identity folders under {root} holds an image "
            f"(extensions: {', '.join(sorted(IMAGE_EXTENSIONS))}); check that the dataset was fully extracted."
        )
    classes, unknown = _vocabulary(list(files), class_names)
    index_of = {name: i for i, name in enumerate(classes)}
    paths: list[Path] = []
    labels: list[int] = []
    for identity in natural_order(files):
        if identity in index_of:
            paths += [root / identity / name for name in files[identity]]
            labels += [index_of[identity]] * len(files[identity])
    return FolderIndex(paths, labels, classes, natural_order(empty), sorted(skipped), unknown)


def _vocabulary(found: list[str], class_names: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """(classes, unknown identities): the found folders in natural order, or the given vocabulary."""
    if class_names is None:
        return natural_order(found), []
    classes = [str(c) for c in class_names]
    if len(set(classes)) != len(classes):
        dup = next(c for c in classes if classes.count(c) > 1)
        raise DataError(f"class_names lists {dup!r} more than once; pass the training split's `classes` list.")
    known = set(classes)
    return classes, natural_order(f for f in found if f not in known)


def list_flat_images(root: str | Path) -> list[Path]:
    """Images directly inside `root` (hidden and non-image files ignored), numeric by stem when all are ints."""
    root = _require_dir(root, "image folder")
    images, dirs, _ = _list_dir(root)
    if not images:
        where = f"; it has subfolders {sorted(dirs)[:3]} (nested one level too deep?)" if dirs else ""
        raise DataError(f"no images directly inside {root}{where}. Point at the folder holding the image files.")
    return [root / name for name in natural_order(images, key=_stem)]


def load_images(
    paths: Sequence[str | Path],
    size: int,
    num_workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, list[int]]:
    """Decode `paths` in a thread pool into one uint8 array (N_ok, size, size, 3), in the order of `paths`.

    Returns (images, failed) where `failed` are the indices into `paths` that could not be decoded; the
    array holds the remaining images in order. `progress(done, total)` is called from the calling thread.
    """
    total = len(paths)
    out = np.empty((total, size, size, 3), dtype=np.uint8)
    ok = np.zeros(total, dtype=bool)

    def work(start: int) -> int:
        stop = min(start + _CHUNK, total)
        for i in range(start, stop):
            image = load_image(paths[i], size)
            if image is not None:
                out[i] = image
                ok[i] = True
        return stop - start

    starts = range(0, total, _CHUNK)
    done = 0
    if num_workers <= 1:
        for start in starts:
            done += work(start)
            if progress is not None:
                progress(done, total)
    else:
        with ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="decode") as pool:
            for future in as_completed([pool.submit(work, s) for s in starts]):
                done += future.result()
                if progress is not None:
                    progress(done, total)
    failed = np.flatnonzero(~ok).tolist()
    return (out[ok] if failed else out), failed
