"""Several trained models as one: `facerec ensemble A.pt B.pt ... --out ens.pt`, loaded by `facerec.load`.

The ensemble's network (`EnsembleEmbedder`) maps an image to the concatenation of its members' embeddings, each
divided by sqrt(M) and, for cosine models, L2-normalised first: the cosine of two such embeddings is exactly the
mean of the members' cosines, and for Euclidean models the distance is the root-mean-square of theirs. Flip
test-time augmentation sums the embeddings of the image and its mirror, as for one model. Being one network, it
goes wherever a model's network goes: pair scores, `evaluate`, the verification submission, galleries,
clustering, the service and ONNX export. Closed-set scores are the normalised geometric mean of the members'
softmax probabilities (each member with its own classifier). Members must share the image size, the scoring and
the identities (names and order): models of one dataset, e.g. several seeds or recipes.

An ensemble file is a facerec checkpoint whose "ensemble" entry lists the members' inference states (no optimiser
state). Its threshold is the best-accuracy threshold on the val pairs of `--data` (as training stores one), or,
without data, derived from the members' thresholds (the mean for cosine) and marked as such.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from facerec.config import config_from_dict, config_to_dict
from facerec.engine.checkpoint import INFERENCE_KEYS, load_checkpoint, save_checkpoint
from facerec.errors import EnsembleError  # noqa: F401 (re-exported)
from facerec.inference.model import FaceModel, ImageLike


class EnsembleEmbedder(nn.Module):
    """(N, 3, S, S) -> (N, sum D_i): the members' embeddings side by side, each / sqrt(M) (and unit-length first
    when `normalize`, for cosine scoring)."""

    def __init__(self, members: Sequence[nn.Module], normalize: bool) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.normalize = normalize
        self.embedding_dim = sum(int(getattr(m, "embedding_dim", 0)) for m in members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [m(x).float() for m in self.members]
        if self.normalize:
            parts = [nn.functional.normalize(p, dim=1) for p in parts]
        return torch.cat(parts, dim=1) / math.sqrt(len(parts))


def ensemble_embedder(states: Sequence[dict[str, Any]]) -> EnsembleEmbedder:
    """The network of an ensemble file's member states (fp16 weights are computed in fp32)."""
    from facerec.engine.build import build_model
    from facerec.inference.model import _float32

    nets = []
    for s in states:
        net = build_model(config_from_dict(s["config"]))
        net.load_state_dict(_float32(s["model"]))
        nets.append(net.eval())
    return EnsembleEmbedder(nets, states[0].get("scoring", "cosine") == "cosine").eval()


class EnsembleFaceModel(FaceModel):
    """A FaceModel whose network is an EnsembleEmbedder; `class_scores` (and so `classify`) combine the members'
    (module notes)."""

    def __init__(self, members: Sequence[FaceModel], threshold: float | None = None) -> None:
        check_compatible(members)
        self.members = list(members)
        first = self.members[0]
        cfg = config_from_dict(config_to_dict(first.config))
        net = EnsembleEmbedder([m.model for m in self.members], first.scoring == "cosine")
        cfg.model.embedding_dim = net.embedding_dim
        super().__init__(net, first.loss_fn, cfg, first.classes, first.scoring, threshold, None, str(first.device))

    @classmethod
    def from_state(cls, state: dict[str, Any], device: str = "cpu") -> EnsembleFaceModel:
        members = [FaceModel.from_state(s, device) for s in state["ensemble"]]
        return cls(members, state.get("threshold"))

    def class_scores(self, images: Sequence[ImageLike] | torch.Tensor, flip: bool = True) -> torch.Tensor:
        """(N, C) probabilities over the identities: the normalised geometric mean of the members' (softmax of
        the mean log-probability; measured better than the arithmetic mean, docs/benchmarks.md "Ensembles")."""
        u8 = self._as_uint8(images)
        logp = torch.stack([m.class_scores(u8, flip).float().log_softmax(dim=1) for m in self.members])
        return logp.mean(0).softmax(dim=1)

    def info(self) -> dict[str, Any]:
        """FaceModel.info's keys (backbone and loss name every member, as the ONNX sidecar does) + "members"."""
        members = [m.info() for m in self.members]
        return {
            **super().info(),
            "backbone": "ensemble: " + " + ".join(m["backbone"] for m in members),
            "loss": " + ".join(m["loss"] for m in members),
            "members": members,
        }


def check_compatible(members: Sequence[FaceModel]) -> None:
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


def member_thresholds_combined(members: Sequence[FaceModel]) -> float | None:
    """Without data to tune on: the mean of the members' cosine thresholds (the ensemble's cosine is the mean of
    theirs), or minus the root-mean-square of their distance thresholds (Euclidean)."""
    thresholds = [m.threshold for m in members]
    if any(t is None for t in thresholds):
        return None
    if members[0].scoring == "cosine":
        return float(sum(thresholds) / len(thresholds))
    return -math.sqrt(sum(t * t for t in thresholds) / len(thresholds))


def build_ensemble(
    checkpoints: Sequence[str | Path],
    out: str | Path,
    data: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
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
        from facerec.evaluation.datasets import evaluate_dataset

        for c, m in zip(checkpoints, members):
            result["members"].append({"checkpoint": str(c), **evaluate_dataset(m, data, log=log)})
        ens = EnsembleFaceModel(members)
        result["ensemble"] = evaluate_dataset(ens, data, log=log)
        if "best_threshold" in result["ensemble"]:
            threshold = float(result["ensemble"]["best_threshold"])
            source = "best-accuracy threshold on the val pairs"
    first = states[0]
    combined = {
        "config": first["config"],
        "classes": first["classes"],
        "scoring": members[0].scoring,
        "ensemble": states,
        "threshold": threshold,
        "threshold_source": source,
    }
    if result["ensemble"]:  # the ensemble's own val metrics, as a run's best.pt carries its epoch's
        combined["metrics"] = {k: v for k, v in result["ensemble"].items() if isinstance(v, int | float)}
    save_checkpoint(combined, out)
    result.update(threshold=threshold, threshold_source=source, out=str(out))
    return result
