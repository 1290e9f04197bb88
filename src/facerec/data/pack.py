"""Packed datasets: an identity-folder split decoded once into a memory-mappable uint8 array (`facerec pack`).

A pack is a folder holding `images.npy (N, S, S, 3) uint8`, `labels.npy (N,) int64` and `meta.json` (class names,
relative image paths, image size, the source dataset and the images that could not be decoded). Training from a
pack skips the JPEG decoding entirely, and the memory map lets every process on a machine (DDP ranks included)
share one copy of the images in the page cache.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facerec.data.folder import DataError, load_images, scan_identity_folders
from facerec.data.hw2p2 import detect_layout
from facerec.data.memory import ImageSet, load_pack, save_pack
from facerec.data.recordimages import take_rows
from facerec.data.recordset import decode_records, is_recordio

Log = Callable[[str], None]
EXAMPLES = 10  # unreadable images named in meta.json and in the report


@dataclass
class PackResult:
    folder: Path
    num_images: int
    num_classes: int
    image_size: int
    skipped: list[str]  # every image that could not be decoded, relative to the split root
    seconds: float


def is_pack(folder: str | Path) -> bool:
    """True if `folder` holds a pack (meta.json + images.npy), e.g. one written by `facerec pack`."""
    folder = Path(folder)
    return (folder / "meta.json").is_file() and (folder / "images.npy").is_file()


def read_meta(folder: str | Path) -> dict[str, Any]:
    try:
        return json.loads((Path(folder) / "meta.json").read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{folder}/meta.json is not readable ({err}); re-create it with `facerec pack`") from None


def pack_dataset(
    src: str | Path, out: str | Path, image_size: int = 64, num_workers: int = 2, log: Log = print
) -> PackResult:
    """Decode the training split of `src` (an HW2P2 root in either layout, any root/<identity>/<image> tree, or an
    insightface .rec folder) into a pack at `out`. Unreadable images are left out, counted and named (in the log
    and in meta.json)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out} already exists and is not empty; choose a new OUT folder or delete it first")
    if is_recordio(src):
        return _pack_recordio(Path(src), out, image_size, num_workers, log)
    layout = detect_layout(src)
    if layout.train is None:
        raise DataError(f"{src} has no training split (train_data/ or identity folders) to pack")
    index = scan_identity_folders(layout.train)
    t0 = time.time()
    report = _every(max(len(index) // 10, 1), lambda done, total: log(f"  decoded {done}/{total}"))
    array, failed = load_images(index.paths, image_size, num_workers, report if len(index) > 20_000 else None)
    if len(failed) == len(index):
        raise DataError(f"none of the {len(index)} images under {layout.train} could be decoded; is it a dataset?")
    bad = set(failed)
    rel = [p.relative_to(layout.train).as_posix() for p in index.paths]
    paths = [r for i, r in enumerate(rel) if i not in bad]
    labels = np.array([y for i, y in enumerate(index.labels) if i not in bad], dtype=np.int64)
    skipped = [rel[i] for i in failed]
    meta = {
        "image_size": image_size,
        "source": str(layout.root.resolve()),
        "split": str(layout.train.resolve()),
        "num_skipped": len(skipped),
        "skipped": skipped[:1000],
    }
    if out.exists():
        out.rmdir()  # empty (checked above); save_pack renames its temporary folder onto `out`
    save_pack(out, array, labels, index.classes, paths, extra=meta)
    result = PackResult(out, len(paths), len(index.classes), image_size, skipped, time.time() - t0)
    log(
        f"packed {result.num_images} images of {result.num_classes} identities from {layout.train} into {out} "
        f"({array.nbytes / 2**20:.0f} MiB, {result.seconds:.1f}s)"
    )
    if skipped:
        log(f"skipped {len(skipped)} unreadable images, e.g. {', '.join(skipped[:EXAMPLES])}")
    return result


def _pack_recordio(src: Path, out: Path, image_size: int, num_workers: int, log: Log) -> PackResult:
    """`pack_dataset` of an insightface .rec folder: the images have no paths; undecodable records are named
    `train.rec:KEY`."""
    t0 = time.time()
    array, labels, classes, skipped = decode_records(src, image_size, num_workers, log)
    meta = {"image_size": image_size, "source": str(src.resolve()), "split": str(src.resolve())}
    meta.update(num_skipped=len(skipped), skipped=skipped[:1000])
    if out.exists():
        out.rmdir()  # empty (checked by the caller)
    save_pack(out, array, labels, classes, [], extra=meta)
    result = PackResult(out, len(labels), len(classes), image_size, skipped, time.time() - t0)
    log(
        f"packed {result.num_images} images of {result.num_classes} identities from {src} into {out} "
        f"({array.nbytes / 2**20:.0f} MiB, {result.seconds:.1f}s)"
    )
    if skipped:
        log(f"skipped {len(skipped)} undecodable records, e.g. {', '.join(skipped[:EXAMPLES])}")
    return result


def _every(step: int, report: Callable[[int, int], None]) -> Callable[[int, int], None]:
    last = [0]

    def call(done: int, total: int) -> None:
        if done - last[0] >= step or done == total:
            last[0] = done
            report(done, total)

    return call


def open_pack(folder: str | Path, image_size: int, log: Log = print) -> ImageSet:
    """A pack as an ImageSet whose images stay memory-mapped; its image size must be `image_size`."""
    images = load_pack(folder, mmap=True)
    if images.images.ndim != 4 or images.images.shape[1:] != (image_size, image_size, 3):
        raise DataError(
            f"pack {folder} holds images of shape {tuple(images.images.shape[1:])}, but "
            f"data.image_size={image_size}; set data.image_size={images.images.shape[1]} or re-pack "
            f"with `facerec pack --image-size {image_size}`"
        )
    if images.labels.shape[0] != images.images.shape[0]:
        raise DataError(
            f"pack {folder} is inconsistent: {images.images.shape[0]} images but "
            f"{images.labels.shape[0]} labels; re-create it with `facerec pack`"
        )
    log(f"using pack {folder}: {len(images)} images of {len(images.classes)} identities (memory-mapped)")
    return replace(images, paths=[str(image_root(folder) / p) for p in images.paths])


def image_root(folder: str | Path) -> Path:
    """The folder a pack's image paths are relative to: the training split it was decoded from (meta "split"),
    else the pack folder itself."""
    return Path(read_meta(folder).get("split") or folder)


def subset(images: ImageSet, max_per_class: int = 0, max_classes: int = 0) -> ImageSet:
    """The first `max_classes` identities and the first `max_per_class` images of each (0 = all), in pack order."""
    if not max_per_class and not max_classes:
        return images
    labels = images.labels
    keep = torch.ones(len(labels), dtype=torch.bool)
    classes = images.classes
    if max_classes:
        keep &= labels < max_classes
        classes = classes[:max_classes]
    if max_per_class:
        order = torch.argsort(labels, stable=True)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(len(order)) - torch.searchsorted(labels[order], labels[order], side="left")
        keep &= rank < max_per_class
    idx = torch.nonzero(keep).squeeze(1)
    paths = [images.paths[i] for i in idx.tolist()] if images.paths else []
    return ImageSet(take_rows(images.images, idx), labels[idx], classes, paths)
