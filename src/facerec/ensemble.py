"""Several trained models as one: `facerec ensemble A.pt B.pt ... --out ens.pt`, loaded by `facerec.load`.

The ensemble's embedding is the concatenation of its members' embeddings (each with flip TTA), each divided by
sqrt(M) and, for cosine models, L2-normalised first. Its cosine is then exactly the mean of the members' cosines,
and for Euclidean models its distance is the root-mean-square of theirs; so every consumer of embeddings (pair
scores, `evaluate`, the verification submission, galleries, clustering, the service) uses it unchanged. Its
closed-set scores are the normalised geometric mean of the members' softmax probabilities. Members must share the
image size, the scoring and the identities (names and order): models of one dataset, e.g. several seeds or
recipes.

An ensemble file is a facerec checkpoint whose "ensemble" entry lists the members' inference states (no optimiser
state). Its threshold is the best-accuracy threshold on the val pairs of `--data` (as training stores one), or,
without data, derived from the members' thresholds (the mean for cosine) and marked as such.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from facerec.api import FaceModel, ImageLike, PairVerifier, top_k
from facerec.config import config_from_dict, config_to_dict
from facerec.engine.checkpoint import INFERENCE_KEYS, load_checkpoint, save_checkpoint


class EnsembleError(ValueError):
    pass


class EnsembleFaceModel(PairVerifier):
    """`embed`, `score`, `verify`, `classify` and `class_scores` over several FaceModels (module notes)."""

    def __init__(self, members: Sequence[FaceModel], threshold: float | None = None) -> None:
        check_compatible(members)
        self.members = list(members)
        first = self.members[0]
        self.device = first.device
        self.scoring, self.classes, self.image_size = first.scoring, first.classes, first.image_size
        self.threshold = threshold
        self.prototypes = None
        self.loss_fn = None
        self.model = nn.ModuleList([m.model for m in self.members])  # its weights: the gallery's fingerprint
        self.config = config_from_dict(config_to_dict(first.config))
        self.config.model.embedding_dim = sum(int(m.config.model.embedding_dim) for m in self.members)

    @classmethod
    def from_state(cls, state: dict[str, Any], device: str = "cpu") -> EnsembleFaceModel:
        members = [FaceModel.from_state(s, device) for s in state["ensemble"]]
        return cls(members, state.get("threshold"))

    def embed(self, images: Sequence[ImageLike] | torch.Tensor, flip: bool = True) -> torch.Tensor:
        u8 = self.members[0]._as_uint8(images)
        scale = 1.0 / math.sqrt(len(self.members))
        parts = []
        for m in self.members:
            e = m.embed(u8, flip=flip)
            if self.scoring == "cosine":
                e = torch.nn.functional.normalize(e, dim=1)
            parts.append(e * scale)
        return torch.cat(parts, dim=1)

    def class_scores(self, images: Sequence[ImageLike] | torch.Tensor, flip: bool = True) -> torch.Tensor:
        """(N, C) probabilities over the identities: the normalised geometric mean of the members' (softmax of
        the mean log-probability; measured better than the arithmetic mean, docs/benchmarks.md "Ensembles")."""
        u8 = self.members[0]._as_uint8(images)
        logp = torch.stack([m.class_scores(u8, flip).float().log_softmax(dim=1) for m in self.members])
        return logp.mean(0).softmax(dim=1)

    def classify(self, images: Sequence[ImageLike] | torch.Tensor, k: int = 1) -> list[list[tuple[str, float]]]:
        return top_k(self.class_scores(images), self.classes, k)

    def info(self) -> dict[str, Any]:
        return {"ensemble": [m.info() for m in self.members], "embedding_dim": self.config.model.embedding_dim,
                "scoring": self.scoring, "classes": len(self.classes), "threshold": self.threshold}


def check_compatible(members: Sequence[FaceModel]) -> None:
    if len(members) < 2:
        raise EnsembleError(f"an ensemble needs at least 2 models, got {len(members)}")
    first = members[0]
    for i, m in enumerate(members[1:], start=2):
        for what, a, b in (("image size", first.image_size, m.image_size), ("scoring", first.scoring, m.scoring)):
            if a != b:
                raise EnsembleError(f"model 1 and model {i} differ in {what} ({a} against {b}); ensemble models "
                                    "that compare faces the same way")
        if m.classes != first.classes:
            raise EnsembleError(f"model 1 and model {i} were trained on different identities "
                                f"({len(first.classes)} and {len(m.classes)}, or another order); ensemble models "
                                "of one dataset")


def member_thresholds_combined(members: Sequence[FaceModel]) -> float | None:
    """Without data to tune on: the mean of the members' cosine thresholds (the ensemble's cosine is the mean of
    theirs), or minus the root-mean-square of their distance thresholds (Euclidean)."""
    thresholds = [m.threshold for m in members]
    if any(t is None for t in thresholds):
        return None
    if members[0].scoring == "cosine":
        return float(sum(thresholds) / len(thresholds))
    return -math.sqrt(sum(t * t for t in thresholds) / len(thresholds))


def build_ensemble(checkpoints: Sequence[str | Path], out: str | Path, data: str | Path | None = None,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write the ensemble of `checkpoints` to `out`. With `data` (a dataset with labelled val pairs and/or a val
    split), score every member and the ensemble there and store the ensemble's best-accuracy threshold on the val
    pairs. Returns {"members": [metrics...], "ensemble": metrics, "threshold", "threshold_source"}."""
    states = []
    for c in checkpoints:
        state = load_checkpoint(c)
        if "ensemble" in state:
            raise EnsembleError(f"{c} is an ensemble already; list its member models instead")
        states.append({k: state[k] for k in INFERENCE_KEYS if k in state})
    members = [FaceModel.from_state(s) for s in states]
    check_compatible(members)
    result: dict[str, Any] = {"members": [], "ensemble": {}}
    threshold, source = member_thresholds_combined(members), "derived from the members' thresholds (not tuned)"
    if data is not None:
        from facerec.inference import evaluate_dataset

        for m in members:  # each member embeds each image set once, for its own scores and the ensemble's
            m.embed = _Memo(m)  # type: ignore[method-assign]
        for c, m in zip(checkpoints, members):
            result["members"].append({"checkpoint": str(c), **evaluate_dataset(m, data, log=log)})
        ens = EnsembleFaceModel(members)
        result["ensemble"] = evaluate_dataset(ens, data, log=log)
        if "best_threshold" in result["ensemble"]:
            threshold = float(result["ensemble"]["best_threshold"])
            source = "best-accuracy threshold on the val pairs"
    first = states[0]
    combined = {"config": first["config"], "classes": first["classes"], "scoring": first["scoring"],
                "ensemble": states, "threshold": threshold, "threshold_source": source}
    save_checkpoint(combined, out)
    result.update(threshold=threshold, threshold_source=source, out=str(out))
    return result


class _Memo:
    """A member's `embed`, remembering its results by the images' content (build_ensemble scores the same images
    with each member and then with the ensemble)."""

    def __init__(self, fm: FaceModel) -> None:
        self.embed, self.as_uint8 = fm.embed, fm._as_uint8
        self.cache: dict[tuple[str, tuple[int, ...], bool], torch.Tensor] = {}

    def __call__(self, images: Sequence[ImageLike] | torch.Tensor, flip: bool = True) -> torch.Tensor:
        u8 = self.as_uint8(images)
        key = (hashlib.sha1(u8.contiguous().numpy().tobytes()).hexdigest(), tuple(u8.shape), flip)
        if key not in self.cache:
            self.cache[key] = self.embed(u8, flip=flip)
        return self.cache[key]
