"""Online sample selection (mining) for the pair and triplet losses, by name, using pytorch-metric-learning miners.

A miner looks at one batch and returns index tuples: triplets (anchor, positive, negative) or pairs
(anchor1, positive, anchor2, negative). "none" means every valid tuple of the batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # pytorch-metric-learning pulls in scipy and sklearn: import it only when a miner is built
    from pytorch_metric_learning.miners import BaseMiner

IndexTuple = tuple[torch.Tensor, ...]


def _build(name: str, normalize: bool, margin: float) -> Any:
    from pytorch_metric_learning import miners
    from pytorch_metric_learning.distances import LpDistance

    lp = LpDistance(normalize_embeddings=normalize)
    factories = {
        # hardest positive and hardest negative per anchor (Hermans et al. 2017)
        "batch_hard": lambda: miners.BatchHardMiner(distance=lp),
        # negatives farther than the positive but inside the margin (Schroff et al. 2015, FaceNet)
        "semi_hard": lambda: miners.TripletMarginMiner(margin=margin, type_of_triplets="semihard", distance=lp),
        # pairs that beat the other kind's hardest cosine similarity by epsilon (Wang et al. 2019)
        "multi_similarity": lambda: miners.MultiSimilarityMiner(epsilon=0.1),
        # negatives drawn with weight ~ 1 / density of distances on the unit sphere (Wu et al. 2017)
        "distance_weighted": lambda: miners.DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.4),
    }
    return factories[name]()


MINERS = ("none", "batch_hard", "semi_hard", "multi_similarity", "distance_weighted")


def build_miner(name: str, *, normalize: bool = True, margin: float = 0.2) -> BaseMiner | None:
    """A PML miner for `name` (None for "none"); `margin` is used by semi_hard only.

    distance_weighted samples with PML's global random state (not our generators): seed torch and numpy for
    reproducible runs.
    """
    if name not in MINERS:
        raise ValueError(f"unknown miner {name!r}; choose one of {list(MINERS)}")
    return None if name == "none" else _build(name, normalize, margin)


def mine_pairs(
    miner: BaseMiner | None, embeddings: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(a1, p, a2, n): positive pairs (a1[i], p[i]), negative pairs (a2[j], n[j]); all ordered pairs by default."""
    from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

    if miner is None:
        return lmu.get_all_pairs_indices(labels)
    with torch.no_grad():
        found = miner(embeddings.detach().float(), labels)
    return lmu.convert_to_pairs(found, labels)


def mine_triplets(
    miner: BaseMiner | None, embeddings: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(a, p, n) triplets; every valid triplet of the batch if no miner."""
    from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

    if miner is None:
        return lmu.get_all_triplets_indices(labels)
    with torch.no_grad():
        found = miner(embeddings.detach().float(), labels)
    return lmu.convert_to_triplets(found, labels)


def mine(miner: BaseMiner | None, embeddings: torch.Tensor, labels: torch.Tensor) -> IndexTuple | None:
    """The raw miner output (or None for "none"), for PML losses that accept `indices_tuple`."""
    if miner is None:
        return None
    with torch.no_grad():
        return miner(embeddings.detach().float(), labels)
