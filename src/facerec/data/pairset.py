"""Pair files turned into tensors: every unique image decoded once, pairs as index vectors into them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from facerec.data.memory import load_flat_images
from facerec.data.pairs import PairList, check_pair_files, read_pairs, unique_images


@dataclass
class PairSet:
    """`images (U, S, S, 3)` holds each unique image once; pair i is (idx_a[i], idx_b[i]) with `labels[i]`."""

    pairs: PairList
    images: torch.Tensor
    idx_a: torch.Tensor
    idx_b: torch.Tensor
    labels: torch.Tensor | None

    def __len__(self) -> int:
        return int(self.idx_a.shape[0])


def load_pairset(
    pair_file: str | Path,
    root: str | Path,
    verification_dir: str | Path | None,
    image_size: int,
    num_workers: int = 2,
) -> PairSet:
    """Read and check a pair file of either format (`read_pairs`; every path must exist: checked before any
    training), then decode its images, each once."""
    pairs = read_pairs(pair_file)
    unique, idx_a, idx_b = unique_images(*check_pair_files(pairs, root, verification_dir))
    images = load_flat_images(unique, image_size, num_workers=num_workers)
    labels = torch.tensor(pairs.labels) if pairs.labels is not None else None
    return PairSet(pairs, images, torch.tensor(idx_a), torch.tensor(idx_b), labels)
