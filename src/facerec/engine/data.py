"""The data of a run: its layout, the decoded train / val / pair images, the batch sampler, the epoch's batches."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from facerec.config import Config
from facerec.data.binpack import decode_pack, read_pack
from facerec.data.folder import DataError
from facerec.data.holdout import split_validation
from facerec.data.hw2p2 import Hw2p2Layout, detect_layout
from facerec.data.memory import ImageSet, load_identity_folders
from facerec.data.pack import image_root, is_pack, open_pack, read_meta, subset
from facerec.data.pairset import PairSet, load_pairset
from facerec.data.recordimages import RecordImages
from facerec.data.recordset import is_recordio, open_recordio
from facerec.data.sampler import PKBatchSampler, RandomBatchSampler
from facerec.engine.log import Log, echo
from facerec.losses.base import CombinedLoss
from facerec.metrics.insightface import check_pairs


def load_data(cfg: Config, log: Log = echo) -> tuple[Hw2p2Layout, ImageSet, ImageSet | None, PairSet | None]:
    """Detect the dataset layout, check the pair file (before any training), decode train / val / pair images."""
    d = cfg.data
    if not d.root:
        raise DataError("no dataset given: pass --data DIR (an HW2P2 folder or a folder of identity folders)")
    packed = is_pack(d.root)
    if is_recordio(d.root):  # an insightface training set: the training split, like a pack
        layout = _recordio_layout(d.root, d.pairs)
    else:
        layout = _pack_layout(d.root, d.pairs, log) if packed else detect_layout(d.root)
    log(f"dataset {layout.root} ({layout.kind} layout): train {layout.train}")
    pairs_file = Path(d.pairs) if d.pairs else layout.pairs_val
    pairs = None
    if pairs_file is not None and d.holdout:
        log(f"data.holdout={d.holdout}: val AUC on pairs of held-out identities, not on {pairs_file}")
    elif pairs_file is not None:
        pairs = load_pairset(pairs_file, layout.root, layout.verification, d.image_size, d.num_workers)
        log(f"val pairs: {len(pairs)} from {pairs_file} ({pairs.images.shape[0]} images)")
    train = load_train_images(cfg, layout.train, log)
    log(f"train: {len(train)} images of {len(train.classes)} identities")
    val_dir = Path(d.val) if d.val else layout.val
    val = None
    if d.holdout or d.val_per_class:
        train, val, held_pairs = _hold_out(cfg, train, train_image_root(cfg, layout.train), val_dir, log)
        pairs = held_pairs if held_pairs is not None else pairs
    if val is None and val_dir is not None and not d.val_per_class:
        val = load_identity_folders(val_dir, d.image_size, train.classes, d.num_workers, d.cache, log)
        log(f"val: {len(val)} images")
    if pairs is None and val is None and not d.val_bins:  # packs alone: train.best_metric=bins_auc
        log(
            "no validation data: best.pt follows the last epoch. Hold some out with data.holdout=0.1 "
            "(identities, for val AUC) and/or data.val_per_class=2 (images, for val accuracy)"
        )
    return layout, train, val, pairs


def _hold_out(
    cfg: Config, train: ImageSet, train_root: Path, val_dir: Path | None, log: Log
) -> tuple[ImageSet, ImageSet | None, PairSet | None]:
    """data.holdout / data.val_per_class: (train, val images, val pairs) split off the training images."""
    d = cfg.data
    n_classes, n_images = len(train.classes), len(train)
    train, val, pairs = split_validation(
        train, d.holdout, d.holdout_pairs, d.val_per_class, cfg.train.seed, train_root
    )
    if pairs is not None:
        n_same = int(pairs.labels.sum()) if pairs.labels is not None else 0
        n_held = n_images - len(train) - (len(val) if val is not None else 0)
        log(
            f"held out {n_classes - len(train.classes)} identities ({n_held} images) for verification: "
            f"{len(pairs)} val pairs ({n_same} same)"
        )
    if val is not None:
        if val_dir is not None:
            log(
                f"data.val_per_class={d.val_per_class}: val accuracy on images held out of training, not on "
                f"{val_dir}"
            )
        log(f"val: {len(val)} images held out of training ({d.val_per_class} per identity)")
    log(f"train: {len(train)} of {n_images} images, {len(train.classes)} identities")
    return train, val, pairs


def load_train_images(cfg: Config, train_dir: Path, log: Log = echo) -> ImageSet:
    """The training images as training reads them: the pack at data.root, or the identity folders of `train_dir`
    (the training split of data.root's layout), limited by data.max_per_class / data.max_classes."""
    d = cfg.data
    if is_pack(d.root):
        return subset(open_pack(d.root, d.image_size, log), d.max_per_class, d.max_classes)
    if is_recordio(d.root):
        limits = {"max_per_class": d.max_per_class, "max_classes": d.max_classes}
        return open_recordio(d.root, d.image_size, num_workers=d.num_workers, log=log, **limits)
    return load_identity_folders(
        train_dir, d.image_size, None, d.num_workers, d.cache, log, d.max_per_class, d.max_classes
    )


def train_image_root(cfg: Config, train_dir: Path) -> Path:
    """The folder the training images' files live in (a pack's source split), which held-out pair files are
    written relative to."""
    return image_root(cfg.data.root) if is_pack(cfg.data.root) else train_dir


def _pack_layout(root: str, pairs: str, log: Log) -> Hw2p2Layout:
    """A pack is the training split. Val images and pairs: data.val / data.pairs, else those of the dataset the
    pack was made from (meta.json "source"), when that is still on disk."""
    source = read_meta(root).get("source")
    if source and Path(source).is_dir():
        try:
            layout = detect_layout(source)
            log(f"pack {root} was made from {source}: its val split and pair file are used unless given")
            return dataclasses.replace(layout, train=Path(root), kind=f"pack of {layout.kind}")
        except DataError:
            pass
    base = Path(pairs).parent if pairs else Path(root)  # pair-file paths are relative to the pair file's folder
    return Hw2p2Layout(base, Path(root), None, None, None, None, None, None, None, kind="pack")


def _recordio_layout(root: str, pairs: str) -> Hw2p2Layout:
    """An insightface .rec folder (train.rec, train.idx, property) is the training split; val images and pairs
    come from data.val / data.pairs (or data.holdout)."""
    base = Path(pairs).parent if pairs else Path(root)
    return Hw2p2Layout(base, Path(root), None, None, None, None, None, None, None, kind="insightface RecordIO")


def make_sampler(cfg: Config, train: ImageSet, loss_fn: CombinedLoss) -> RandomBatchSampler | PKBatchSampler:
    """data.sampler: P x K identity batches for losses that need positives in every batch (auto), else random."""
    kind = cfg.data.sampler
    if kind == "auto":
        kind = "pk" if loss_fn.needs_pk else "random"
    if kind == "pk":
        return PKBatchSampler(train.labels, cfg.data.p, cfg.data.k)
    if kind == "random":
        return RandomBatchSampler(len(train), cfg.data.batch_size)
    raise ValueError(f"unknown data.sampler {kind!r}; choose one of ['auto', 'pk', 'random']")


def images_on_gpu(images: ImageSet, device: torch.device, log: Log) -> ImageSet:
    """Keep the uint8 training images on the GPU when they take at most a quarter of its free memory (facehw:
    250 MiB, all of HW2P2 at 64x64: 4.4 GiB): each step's batch is then indexed on the device, with no host gather,
    pinning or copy. Labels stay on the host, where prototypes and samplers use them. Images decoded from a .rec
    file batch by batch stay on the host."""
    if isinstance(images.images, RecordImages):
        return images
    size = images.images.numel() * images.images.element_size()
    free, _ = torch.cuda.mem_get_info(device)
    if size > free // 4:
        log(f"training images ({size / 2**20:.0f} MiB) stay in host memory: over 1/4 of the free GPU memory")
        return images
    log(f"training images ({size / 2**20:.0f} MiB) moved to {device}")
    return dataclasses.replace(images, images=images.images.to(device))


def epoch_batches(
    train: ImageSet, sampler: Any, generator: torch.Generator, device: torch.device, skip: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The epoch's (uint8 images (B, S, S, 3), labels (B,)) batches, without a host sync per step.

    Images that live on the GPU (`images_on_gpu` puts them there when they fit) are indexed there, the epoch's
    indices and labels copied over once; host images are gathered into pinned memory so the copy to the GPU is
    async. `skip` leaves out the first batches (an interrupted epoch resumes after them): the whole order is still
    drawn, so the generator ends where it would have.
    """
    batches = list(sampler.batches(generator))[skip:]
    if not batches:
        return
    order, sizes = torch.cat(batches), [len(b) for b in batches]
    labels = train.labels[order]
    if train.images.device.type != "cpu":
        order = order.pin_memory().to(train.images.device, non_blocking=True)
        labels = labels.pin_memory().to(train.images.device, non_blocking=True)
        yield from zip((train.images[i] for i in order.split(sizes)), labels.split(sizes), strict=True)
        return
    pin = device.type == "cuda"
    for idx, y in zip(order.split(sizes), labels.split(sizes), strict=True):
        x = train.images[idx]
        yield (x.pin_memory(), y.pin_memory()) if pin else (x, y)


@dataclasses.dataclass
class ValBin:
    """A verification pack scored every epoch: `images` (2N, S, S, 3) uint8, pair i in rows 2i and 2i + 1, and
    `issame` (N,) bool; `name` is the pack's stem as metric names use it (bin_<name>_acc, bin_<name>_auc)."""

    name: str
    images: torch.Tensor
    issame: Any


def load_val_bins(cfg: Config, log: Log = echo) -> list[ValBin]:
    """data.val_bins: each pack read safely (data/binpack.py), checked for the 10-fold protocol and decoded once at
    data.image_size. A run loads them before its training images, so a missing, unsafe or malformed pack stops it
    at once, with a DataError naming the file."""
    bins: list[ValBin] = []
    for path in cfg.data.val_bins:
        try:
            pack = read_pack(path)
            check_pairs(pack.issame)
        except ValueError as err:  # DataError included; the protocol's own errors do not name the file
            where = "" if str(path) in str(err) else f"{path}: "
            raise DataError(f"data.val_bins: {where}{err}") from None
        name = re.sub(r"\W", "_", pack.name)
        if name in {b.name for b in bins}:
            raise DataError(f"data.val_bins: two packs are named {name!r} (their metrics would clash); rename one")
        images = decode_pack(pack, cfg.data.image_size, cfg.data.num_workers)
        log(f"val pack {name}: {len(pack)} pairs ({int(pack.issame.sum())} same) from {path}")
        bins.append(ValBin(name, images, pack.issame))
    return bins
