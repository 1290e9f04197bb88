"""Several trained models as one network: `facerec ensemble A.pt B.pt ... --out ens.pt`, loaded by `facerec.load`.

The ensemble's network (`EnsembleEmbedder`) maps an image to the concatenation of its members' embeddings, each
divided by sqrt(M) and, for cosine models, L2-normalised first: the cosine of two such embeddings is exactly the
mean of the members' cosines, and for Euclidean models the distance is the root-mean-square of theirs. Flip
test-time augmentation sums the embeddings of the image and its mirror, as for one model. Being one network, it
goes wherever a model's network goes: pair scores, `evaluate`, the verification submission, galleries,
clustering, the service and ONNX export. Closed-set scores are the normalised geometric mean of the members'
softmax probabilities (each member with its own classifier, on its own flip-summed embedding: `parts`). Members
must share the image size, the scoring and the identities (names and order): models of one dataset, e.g. several
seeds or recipes.

An ensemble file is a facerec checkpoint whose "ensemble" entry lists the members' inference states (no optimiser
state); inference.model.EnsembleFaceModel runs it, evaluation.ensemble writes it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from facerec.errors import EnsembleError
from facerec.inference.network import network_from_state
from facerec.metrics.scoring import Scoring


class EnsembleEmbedder(nn.Module):
    """(N, 3, S, S) -> (N, sum D_i): the members' embeddings side by side, each / sqrt(M) (and unit-length first
    when `normalize`, for cosine scoring)."""

    def __init__(self, members: Sequence[nn.Module], normalize: bool) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.normalize = normalize
        self.embedding_dim = sum(int(getattr(m, "embedding_dim", 0)) for m in members)

    def parts(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(N, 3, S, S) -> the members' raw (N, D_i) embeddings, what their class heads take."""
        return [m(x).float() for m in self.members]

    def combine(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """The members' raw embeddings -> the ensemble embedding (module notes)."""
        if self.normalize:
            parts = [nn.functional.normalize(p, dim=1) for p in parts]
        return torch.cat(parts, dim=1) / math.sqrt(len(parts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.combine(self.parts(x))


class WithMemberEmbeddings(nn.Module):
    """(N, 3, S, S) -> (ensemble embedding, the members' raw embeddings side by side): the ONNX export's graph,
    whose second output feeds the class head (inference.network.EnsembleHead)."""

    def __init__(self, ensemble: EnsembleEmbedder) -> None:
        super().__init__()
        self.ensemble = ensemble

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        parts = self.ensemble.parts(x)
        return self.ensemble.combine(parts), torch.cat(parts, dim=1)


def ensemble_embedder(states: Sequence[dict[str, Any]]) -> EnsembleEmbedder:
    """The network of an ensemble file's member states (fp16 weights are computed in fp32)."""
    nets = [network_from_state(s)[0] for s in states]
    return EnsembleEmbedder(nets, Scoring.of(states[0].get("scoring", "cosine")).unit_length).eval()


def check_compatible(members: Sequence[Any]) -> None:
    """Members (loaded models) must share image size, scoring and identities; EnsembleError says which differ."""
    if len(members) < 2:
        raise EnsembleError(f"an ensemble needs at least 2 models, got {len(members)}")
    first = members[0]
    for i, m in enumerate(members[1:], start=2):
        for what, a, b in (("image size", first.image_size, m.image_size), ("scoring", first.scoring, m.scoring)):
            if a != b:
                raise EnsembleError(
                    f"model 1 and model {i} differ in {what} ({a} against {b}); ensemble models "
                    "that compare faces the same way"
                )
        if m.classes != first.classes:
            raise EnsembleError(
                f"model 1 and model {i} were trained on different identities "
                f"({len(first.classes)} and {len(m.classes)}, or another order); ensemble models "
                "of one dataset"
            )


def member_thresholds_combined(members: Sequence[Any]) -> float | None:
    """Without data to tune on: the mean of the members' cosine thresholds (the ensemble's cosine is the mean of
    theirs), or minus the root-mean-square of their distance thresholds (Euclidean)."""
    thresholds = [m.threshold for m in members]
    if any(t is None for t in thresholds):
        return None
    if Scoring.of(members[0].scoring).unit_length:
        return float(sum(thresholds) / len(thresholds))
    return -math.sqrt(sum(t * t for t in thresholds) / len(thresholds))
