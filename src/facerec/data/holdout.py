"""Validation splits carved out of the training folders, for datasets that come without a val split or pair file.

- `hold_out_identities`: a share of the identities leaves training altogether and becomes an open-set
  verification set (the HW2P2 verification task: people never seen in training); `draw_pairs` draws a balanced
  set of distinct pairs from them, so every epoch reports val AUC.
- `hold_out_images`: a few images of each remaining identity leave training and become the closed-set val split
  (classification accuracy).

Both are seeded and depend only on the dataset and the seed, so `--resume` and every DDP rank see the same split.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from facerec.data.folder import DataError
from facerec.data.memory import ImageSet
from facerec.data.pairs import PairList
from facerec.data.pairset import PairSet
from facerec.data.recordimages import take_rows


def _take(images: ImageSet, idx: torch.Tensor, keep_classes: list[int] | None = None) -> ImageSet:
    """Rows `idx` of `images`; with `keep_classes` the labels are renumbered 0.. in that order."""
    labels = images.labels[idx]
    classes = images.classes
    if keep_classes is not None:
        remap = torch.full((len(images.classes),), -1, dtype=torch.long)
        remap[torch.tensor(keep_classes, dtype=torch.long)] = torch.arange(len(keep_classes))
        labels = remap[labels]
        classes = [images.classes[c] for c in keep_classes]
    paths = [images.paths[i] for i in idx.tolist()] if images.paths else []
    return ImageSet(take_rows(images.images, idx), labels, classes, paths)


def hold_out_identities(images: ImageSet, fraction: float, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """Split off round(fraction x identities) identities, chosen at random among those with 2+ images.

    Returns (train, held_out): train's labels are renumbered over the identities left; held_out keeps the
    original class list (its labels only group images by person)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"data.holdout must be a share of identities between 0 and 1 (e.g. 0.1), got {fraction}")
    counts = torch.bincount(images.labels, minlength=len(images.classes))
    eligible = torch.nonzero(counts >= 2).squeeze(1)
    n = max(2, round(fraction * len(images.classes)))
    if len(eligible) < n or len(images.classes) - n < 2:
        raise DataError(
            f"data.holdout={fraction} needs {n} identities with 2+ images to hold out and 2 left to train on; "
            f"the training folders have {len(images.classes)} identities, {len(eligible)} of them with 2+ images. "
            "Use a smaller data.holdout, or give a pair file (data.pairs=...)."
        )
    gen = torch.Generator().manual_seed(seed)
    chosen = eligible[torch.randperm(len(eligible), generator=gen)[:n]]
    is_out = torch.zeros(len(images.classes), dtype=torch.bool)
    is_out[chosen] = True
    out_rows = is_out[images.labels]
    keep = torch.nonzero(~is_out).squeeze(1).tolist()
    train = _take(images, torch.nonzero(~out_rows).squeeze(1), keep)
    held = _take(images, torch.nonzero(out_rows).squeeze(1))
    return train, held


def hold_out_images(images: ImageSet, per_class: int, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """Move `per_class` random images of every identity with more than `per_class` images into a val split
    (identities with fewer keep all theirs for training). Returns (train, val) over the same classes."""
    if per_class < 1:
        raise ValueError(f"data.val_per_class must be >= 1, got {per_class}")
    gen = torch.Generator().manual_seed(seed + 1)  # independent of the identity split's draw
    order = torch.randperm(len(images), generator=gen)
    order = order[torch.argsort(images.labels[order], stable=True)]  # shuffled within each identity
    sorted_labels = images.labels[order]
    rank = torch.arange(len(order)) - torch.searchsorted(sorted_labels, sorted_labels, side="left")
    counts = torch.bincount(images.labels, minlength=len(images.classes))
    to_val = (rank < per_class) & (counts[sorted_labels] > per_class)
    if not to_val.any():
        raise DataError(
            f"data.val_per_class={per_class}: no identity has more than {per_class} images, so none can give "
            "images to a val split; use a smaller value or give a val folder (data.val=...)."
        )
    val_idx, train_idx = order[to_val].sort().values, order[~to_val].sort().values
    return _take(images, train_idx), _take(images, val_idx)


def draw_pairs(
    labels: torch.Tensor, n_pairs: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`n_pairs` distinct unordered pairs, half of them same-identity (fewer if fewer exist: then every
    same-identity pair is taken and as many different-identity ones drawn). Same pairs are drawn uniformly over
    all same pairs, different pairs uniformly over all different pairs. Returns idx_a, idx_b, label (1 = same)."""
    if n_pairs < 2:
        raise ValueError(f"data.holdout_pairs must be at least 2 (one same, one different pair), got {n_pairs}")
    labels = torch.as_tensor(labels).long()
    n = len(labels)
    gen = torch.Generator().manual_seed(seed + 2)
    counts = torch.bincount(labels)
    total_same = int((counts * (counts - 1) // 2).sum())
    total_diff = n * (n - 1) // 2 - total_same
    n_same = min(n_pairs // 2, total_same)
    n_diff = min(n_pairs - n_same if n_same == n_pairs // 2 else n_same, total_diff)  # balanced when short
    if n_same == 0 or n_diff == 0:
        raise DataError("held-out identities give no same-identity or no different-identity pair; hold out more")
    order = torch.argsort(labels, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    same: set[tuple[int, int]] = set()
    if 2 * n_same > total_same:  # most of them: list all and pick
        groups = [sorted(order[starts[c] : starts[c] + counts[c]].tolist()) for c in range(len(counts))]
        every = [(a, b) for g in groups for i, a in enumerate(g) for b in g[i + 1 :]]
        pick = torch.randperm(len(every), generator=gen)[:n_same].tolist()
        same = {every[p] for p in pick}
    weights = (counts * (counts - 1)).double()
    while len(same) < n_same:  # a small share of all same pairs: draw, dropping repeats
        k = 4 * (n_same - len(same))
        cls = torch.multinomial(weights, k, replacement=True, generator=gen)
        i = (torch.rand(k, generator=gen) * counts[cls]).long()
        j = (torch.rand(k, generator=gen) * (counts[cls] - 1)).long()
        j = j + (j >= i).long()  # a second, different member of the class
        a, b = order[starts[cls] + i], order[starts[cls] + j]
        for x, y in zip(torch.minimum(a, b).tolist(), torch.maximum(a, b).tolist()):
            if len(same) < n_same:
                same.add((x, y))
    diff: set[tuple[int, int]] = set()
    if 2 * n_diff > total_diff:
        y = labels.tolist()
        every = [(a, b) for a in range(n) for b in range(a + 1, n) if y[a] != y[b]]
        pick = torch.randperm(len(every), generator=gen)[:n_diff].tolist()
        diff = {every[p] for p in pick}
    while len(diff) < n_diff:
        k = 4 * (n_diff - len(diff))
        a = torch.randint(n, (k,), generator=gen)
        b = torch.randint(n, (k,), generator=gen)
        ok = labels[a] != labels[b]
        for x, y in zip(torch.minimum(a, b)[ok].tolist(), torch.maximum(a, b)[ok].tolist()):
            if len(diff) < n_diff:
                diff.add((x, y))
    pairs = sorted(same) + sorted(diff)
    flags = [1] * len(same) + [0] * len(diff)
    perm = torch.randperm(len(pairs), generator=gen).tolist()
    idx_a = torch.tensor([pairs[p][0] for p in perm])
    idx_b = torch.tensor([pairs[p][1] for p in perm])
    return idx_a, idx_b, torch.tensor([flags[p] for p in perm])


def holdout_pairset(held: ImageSet, n_pairs: int, seed: int, root: str | Path | None = None) -> PairSet:
    """A labelled PairSet over the held-out images; pair paths are written relative to `root` when they lie
    under it (so `facerec evaluate --pairs FILE --root ROOT` reads them back)."""
    a, b, same = draw_pairs(held.labels, n_pairs, seed)
    used = torch.unique(torch.cat([a, b]))
    position = torch.full((len(held),), -1, dtype=torch.long)
    position[used] = torch.arange(len(used))
    names = [
        _relative(held.paths[i], root) if held.paths else f"{held.classes[held.labels[i]]}/{i}"
        for i in used.tolist()
    ]
    pa, pb = position[a], position[b]
    pairs = PairList(
        [names[i] for i in pa.tolist()], [names[i] for i in pb.tolist()], same.tolist(), Path("holdout_pairs.txt")
    )
    return PairSet(pairs, held.images[used], pa, pb, same)


def split_validation(
    train: ImageSet, holdout: float, holdout_pairs: int, val_per_class: int, seed: int, root: str | Path | None
) -> tuple[ImageSet, ImageSet | None, PairSet | None]:
    """The splits of `data.holdout` and `data.val_per_class` (either may be 0): (train left, val images or None,
    held-out pairs or None). Training and `facerec evaluate` both call this, so they score the same people."""
    pairs = val = None
    if holdout:
        train, held = hold_out_identities(train, holdout, seed)
        pairs = holdout_pairset(held, holdout_pairs, seed, root)
    if val_per_class:
        train, val = hold_out_images(train, val_per_class, seed)
    return train, val, pairs


def _relative(path: str, root: str | Path | None) -> str:
    if root is None:
        return path
    try:
        return Path(os.path.relpath(Path(path).resolve(), Path(root).resolve())).as_posix()
    except ValueError:  # another drive (Windows)
        return path


def write_pair_file(pairs: PairList, path: str | Path) -> None:
    """`a b label` lines, the HW2P2 val pair format (readable by `read_pairs` and `facerec evaluate --pairs`)."""
    labels = pairs.labels if pairs.labels is not None else [None] * len(pairs)
    lines = [f"{a} {b}" + ("" if y is None else f" {y}") for a, b, y in zip(pairs.a, pairs.b, labels, strict=True)]
    Path(path).write_text("\n".join(lines) + "\n")
