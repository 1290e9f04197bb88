"""Decoded datasets held in memory as one uint8 tensor (and cached on disk as a memory-mappable pack).

Decoding 64x64 JPEGs costs more CPU than a small network's forward pass, so every image is decoded once, up front,
into `images (N, S, S, 3) uint8`. Batches are then plain tensor indexing, augmented in one batched call.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from facerec.data.folder import DataError, FolderIndex, load_images, scan_identity_folders

Log = Callable[[str], None]


@dataclass
class ImageSet:
    """Decoded images with labels: `images (N, S, S, 3) uint8`, `labels (N,) int64` indexing `classes`."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    paths: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.images.shape[0])


def default_cache_dir() -> Path:
    return Path(os.environ.get("FACEREC_CACHE", Path.home() / ".cache" / "facerec"))


def _fingerprint(index: FolderIndex, size: int) -> str:
    """Key of the decoded-image cache: the same files reached by a relative or an absolute path share it."""
    h = hashlib.sha1(f"v1|{size}|{'|'.join(index.classes)}".encode())
    for p, y in zip(index.paths, index.labels):
        st = p.stat()
        h.update(f"{p.resolve()}|{y}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def save_pack(
    folder: Path,
    images: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    paths: list[str],
    extra: dict | None = None,
) -> None:
    """Write a pack (images.npy, labels.npy, meta.json) atomically: readers never see a half-written pack.

    `extra` adds JSON-serialisable entries to meta.json (`facerec pack` records image_size, source, skipped)."""
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    np.save(tmp / "images.npy", images)
    np.save(tmp / "labels.npy", labels.astype(np.int64))
    (tmp / "meta.json").write_text(json.dumps({**(extra or {}), "classes": classes, "paths": paths}))
    if folder.exists():  # another process finished first: keep theirs
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
        return
    os.replace(tmp, folder)


def load_pack(folder: str | Path, mmap: bool = True) -> ImageSet:
    """Read a pack written by `save_pack` (or `facerec pack`); images are memory-mapped unless `mmap=False`."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / "meta.json").read_text())
        # copy-on-write map: pages are shared (page cache, across DDP ranks) and torch gets a writable array
        images = np.load(folder / "images.npy", mmap_mode="c" if mmap else None)
        labels = np.load(folder / "labels.npy")
    except (OSError, ValueError) as err:
        raise DataError(
            f"{folder} is not a readable facerec pack ({err}); re-create it with `facerec pack`"
        ) from None
    return ImageSet(
        torch.from_numpy(np.ascontiguousarray(images)),
        torch.from_numpy(labels),
        meta["classes"],
        meta.get("paths", []),
    )


def load_identity_folders(
    root: str | Path,
    image_size: int,
    class_names: list[str] | None = None,
    num_workers: int = 2,
    cache: bool = True,
    log: Log = print,
    max_per_class: int = 0,
    max_classes: int = 0,
) -> ImageSet:
    """Scan root/<identity>/<image>, decode every image once (or reuse the on-disk cache), skip corrupt files.

    `class_names` maps folder names onto an existing label vocabulary (val onto train), so labels always mean
    the same identity; identities outside it are reported and left out.
    """
    index = scan_identity_folders(root, class_names)
    if max_classes and class_names is None:
        keep = set(range(min(max_classes, len(index.classes))))
        pairs = [(p, y) for p, y in zip(index.paths, index.labels) if y in keep]
        index.paths, index.labels = [p for p, _ in pairs], [y for _, y in pairs]
        index.classes = index.classes[: len(keep)]
    if max_per_class:
        seen: dict[int, int] = {}
        pairs = []
        for p, y in zip(index.paths, index.labels):
            seen[y] = seen.get(y, 0) + 1
            if seen[y] <= max_per_class:
                pairs.append((p, y))
        index.paths, index.labels = [p for p, _ in pairs], [y for _, y in pairs]
    _report_scan(index, root, log)
    if not index.paths and index.unknown_classes:
        raise DataError(
            f"none of the {len(index.unknown_classes)} identities in {root} (e.g. {index.unknown_classes[0]!r}) "
            "is a training identity; point data.val at the validation split of the same dataset."
        )
    if not index.paths:
        raise DataError(f"no readable images under {root}: expected {root}/<identity>/<image>.jpg")
    key = _fingerprint(index, image_size) if cache else ""
    pack = default_cache_dir() / f"{Path(root).name}-{key}"
    if cache and (pack / "meta.json").exists():
        log(f"using decoded-image cache {pack}")
        return load_pack(pack, mmap=False)
    t0 = time.time()
    array, failed = load_images(index.paths, image_size, num_workers=num_workers)
    bad = set(failed)
    paths = [str(p) for i, p in enumerate(index.paths) if i not in bad]
    labels = np.array([y for i, y in enumerate(index.labels) if i not in bad], dtype=np.int64)
    if failed and not paths:
        raise DataError(
            f"none of the {len(failed)} images under {root} could be decoded, e.g. {index.paths[failed[0]]}; "
            "check that the files are images and the dataset was fully extracted."
        )
    if failed:
        log(f"skipped {len(failed)} unreadable images, e.g. {index.paths[failed[0]]}")
    log(f"decoded {len(paths)} images from {root} in {time.time() - t0:.1f}s")
    if cache:
        try:
            save_pack(pack, array, labels, index.classes, paths)
        except OSError as err:
            log(f"could not write the image cache {pack} ({err}); continuing without it")
    return ImageSet(torch.from_numpy(array), torch.from_numpy(labels), index.classes, paths)


def _report_scan(index: FolderIndex, root: str | Path, log: Log) -> None:
    if index.empty_classes:
        log(
            f"warning: {len(index.empty_classes)} empty identity folders in {root}, "
            f"e.g. {index.empty_classes[0]!r}"
        )
    if index.skipped_files:
        log(
            f"skipped {len(index.skipped_files)} hidden or non-image files in {root}, "
            f"e.g. {index.skipped_files[0]}"
        )
    if index.unknown_classes:
        log(
            f"warning: {len(index.unknown_classes)} identities in {root} are not in the training classes and are "
            f"left out, e.g. {index.unknown_classes[0]!r}"
        )


def load_flat_images(paths: list[Path], image_size: int, num_workers: int = 2) -> torch.Tensor:
    """Decode a list of images (test images, pair images) into (N, S, S, 3) uint8; a bad image is an error."""
    array, failed = load_images(paths, image_size, num_workers=num_workers)
    if failed:
        raise DataError(
            f"{len(failed)} images could not be decoded, e.g. {paths[failed[0]]}; replace or remove them"
        )
    return torch.from_numpy(array)
