"""Batch samplers over integer labels: shuffled random batches, and P identities x K images per batch."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import torch


class RandomBatchSampler:
    """Shuffled batches of `batch_size` indices; the last partial batch is dropped when `drop_last`."""

    def __init__(self, n: int, batch_size: int, drop_last: bool = True) -> None:
        if n < 1:
            raise ValueError("cannot sample batches from an empty dataset")
        self.n, self.batch_size = n, min(batch_size, n)
        self.drop_last = drop_last

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def batches(self, generator: torch.Generator) -> Iterator[torch.Tensor]:
        order = torch.randperm(self.n, generator=generator)
        for i in range(len(self)):
            yield order[i * self.batch_size : (i + 1) * self.batch_size]


class PKBatchSampler:
    """Batches of P identities x K images, so every anchor has a positive (triplet, contrastive, B-way losses).

    An epoch visits every identity once (len = num_identities // P batches); identities with fewer than K images
    are sampled with replacement.
    """

    def __init__(self, labels: Sequence[int] | torch.Tensor, p: int, k: int) -> None:
        by_class: dict[int, list[int]] = defaultdict(list)
        for index, label in enumerate(torch.as_tensor(labels).tolist()):
            by_class[label].append(index)
        if k < 2:
            raise ValueError(f"K={k} images per identity: pair losses need K >= 2")
        if len(by_class) < p:
            raise ValueError(f"P={p} identities per batch, but the dataset has only {len(by_class)}; lower data.p")
        self.groups = [torch.tensor(ix) for _, ix in sorted(by_class.items())]
        self.p, self.k = p, k
        self.batch_size = p * k

    def __len__(self) -> int:
        return len(self.groups) // self.p

    def batches(self, generator: torch.Generator) -> Iterator[torch.Tensor]:
        order = torch.randperm(len(self.groups), generator=generator).tolist()
        for start in range(0, len(self) * self.p, self.p):
            picks = []
            for g in order[start : start + self.p]:
                ix = self.groups[g]
                if len(ix) >= self.k:
                    pick = torch.randperm(len(ix), generator=generator)[: self.k]
                else:
                    pick = torch.randint(len(ix), (self.k,), generator=generator)
                picks.append(ix[pick])
            yield torch.cat(picks)
