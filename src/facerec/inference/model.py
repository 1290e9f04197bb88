"""The PyTorch face models: `FaceModel` (one network) and `EnsembleFaceModel` (several as one), both FaceModelLike.

Everything goes through the same scoring path as validation and the submission files (engine/evaluate.py). Load
any model file with `facerec.load` (inference/load.py), which also opens ONNX exports.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from facerec.config import Config, config_from_dict, config_to_dict
from facerec.data.images import ImageLike
from facerec.engine.checkpoint import load_checkpoint
from facerec.engine.evaluate import embed
from facerec.errors import CheckpointError, FacerecError
from facerec.inference.ensemble import EnsembleEmbedder, WithMemberEmbeddings, check_compatible
from facerec.inference.matching import Match, Matcher, stored_means, stored_train_set
from facerec.inference.network import EnsembleHead, log_prob_mean, loss_from_state, network_from_state
from facerec.inference.protocol import Images, PairVerifier, Verdict, top_k, weights_fingerprint
from facerec.losses.base import CombinedLoss
from facerec.metrics.scoring import Scoring

__all__ = ["EnsembleFaceModel", "FaceModel", "ImageLike", "PairVerifier", "Verdict", "model_from_state", "top_k"]


class FaceModel(PairVerifier):
    """A trained face model ready for inference on aligned face crops of its `image_size` (the config's
    data.image_size; other sizes are resized, with one ImageSizeWarning per model: PairVerifier.decode)."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: CombinedLoss,
        cfg: Config,
        classes: list[str],
        scoring: str,
        threshold: float | None = None,
        prototypes: torch.Tensor | None = None,
        device: str = "cpu",
        train: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.loss_fn = loss_fn.to(self.device).eval()
        self.config, self.classes, self.scoring = cfg, classes, scoring
        self.threshold = threshold
        self.prototypes = prototypes
        self.image_size = cfg.data.image_size
        # closed-set matching (inference/matching.py): class centres, class means, or kNN over `train`
        self.matcher = Matcher(self.loss_fn, prototypes, train, len(classes))
        self.match: Match | None = self.matcher.default

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> FaceModel:
        """Deprecated: use `facerec.load(path)`, which opens every model file, ONNX exports included."""
        warnings.warn("FaceModel.load is deprecated; use facerec.load(path)", DeprecationWarning, stacklevel=2)
        return load_model_file(path, device)

    @classmethod
    def from_state(cls, state: dict[str, Any], device: str = "cpu") -> FaceModel:
        """One model's inference state (engine.checkpoint.INFERENCE_KEYS) -> FaceModel."""
        net, cfg = network_from_state(state)
        classes, dim = len(state["classes"]), cfg.model.embedding_dim
        return cls(
            net,
            loss_from_state(state, cfg),
            cfg,
            list(state["classes"]),
            Scoring.of(state.get("scoring", "cosine"), key="scoring of the model").name,
            stored_threshold(state.get("threshold")),
            stored_means(state, classes, dim),
            str(device),
            stored_train_set(state, classes, dim),
        )

    @property
    def fingerprint(self) -> str:
        return weights_fingerprint(self.model)

    def embed(self, images: Images, flip: bool = True) -> torch.Tensor:
        """Images (paths, bytes, PIL images, HxWx3 arrays, or a uint8 (N,S,S,3) tensor) -> (N, D) embeddings."""
        return embed(self.model, self.decode(images), self.device, flip=flip)

    def class_scores(self, images: Images, flip: bool = True, match: str | None = None) -> torch.Tensor:
        """(N, C) closed-set scores over the training identities; the argmax is the predicted identity.

        `match` (inference/matching.py): "centres" (the classifier's logits), "mean" (cosine similarity to the
        class means of the training embeddings) or "knn[:K]"; default `self.match`: "mean" when the file holds
        class means, else "centres"."""
        self.matcher.resolve(match)  # an unknown method, or one without its data, fails before embedding
        return self.matcher.scores(self.embed(images, flip=flip), match)

    def class_head(self) -> nn.Module:
        """(N, D) flip-summed embeddings -> (N, C) `class_scores` by the default method, as a module (what the
        ONNX export stores)."""
        return self.matcher.head()

    def export_network(self) -> nn.Module:
        """The network the ONNX export traces: (N, 3, S, S) -> (N, D) embedding (one pass, no flip)."""
        return self.model

    def info(self) -> dict[str, Any]:
        return {
            "backbone": self.config.model.backbone,
            "embedding_dim": self.config.model.embedding_dim,
            "loss": self.config.loss.name,
            "scoring": self.scoring,
            "classes": len(self.classes),
            "threshold": self.threshold,
        }


class EnsembleFaceModel(FaceModel):
    """A FaceModel whose network is an EnsembleEmbedder (inference/ensemble.py); `class_scores` (and so
    `classify`) combine the members' own."""

    def __init__(self, members: Sequence[FaceModel], threshold: float | None = None) -> None:
        check_compatible(members)
        self.members = list(members)
        first = self.members[0]
        cfg = config_from_dict(config_to_dict(first.config))
        net = EnsembleEmbedder([m.model for m in self.members], Scoring.of(first.scoring).unit_length)
        cfg.model.embedding_dim = net.embedding_dim
        super().__init__(net, first.loss_fn, cfg, first.classes, first.scoring, threshold, None, str(first.device))
        defaults = {str(m.match) for m in self.members}  # each member matches by its own default
        self.match = first.match if len(defaults) == 1 else None

    @classmethod
    def from_state(cls, state: dict[str, Any], device: str = "cpu") -> EnsembleFaceModel:
        members = [FaceModel.from_state(s, device) for s in state["ensemble"]]
        return cls(members, stored_threshold(state.get("threshold")))

    def class_scores(self, images: Images, flip: bool = True, match: str | None = None) -> torch.Tensor:
        """(N, C) probabilities over the identities: the normalised geometric mean of the members' (each by
        `match`, default its own: inference.network.log_prob_mean)."""
        u8 = self.decode(images)
        return log_prob_mean([m.class_scores(u8, flip, match) for m in self.members])

    def class_head(self) -> nn.Module:
        """(N, sum D_i) the members' flip-summed raw embeddings side by side -> (N, C) `class_scores`."""
        heads = [m.matcher.head() for m in self.members]
        return EnsembleHead(heads, [int(m.config.model.embedding_dim) for m in self.members])

    def export_network(self) -> nn.Module:
        """(N, 3, S, S) -> (ensemble embedding, the members' raw embeddings side by side) for the class head."""
        return WithMemberEmbeddings(self.model).eval()  # eval: the exporter restores the mode it finds

    def info(self) -> dict[str, Any]:
        """FaceModel.info's keys (backbone and loss name every member, as the ONNX sidecar does) + "members"."""
        members = [m.info() for m in self.members]
        return {
            **super().info(),
            "backbone": "ensemble: " + " + ".join(m["backbone"] for m in members),
            "loss": " + ".join(m["loss"] for m in members),
            "members": members,
        }


def stored_threshold(value: Any) -> float | None:
    """A model's stored threshold: None or a number (ValueError for anything else: a damaged file)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ValueError(f"the stored threshold {value!r} is not a number")
    return float(value)


def model_from_state(state: dict[str, Any], device: str = "cpu") -> FaceModel:
    """A checkpoint's content -> FaceModel, or EnsembleFaceModel for an ensemble file."""
    if "ensemble" in state:
        return EnsembleFaceModel.from_state(state, device)
    return FaceModel.from_state(state, device)


def load_model_file(path: str | Path, device: str = "cpu") -> FaceModel:
    """A run checkpoint, an exported .pt model file or an ensemble file -> FaceModel / EnsembleFaceModel.
    CheckpointError when the file is not one, or its content does not make a model (a damaged file)."""
    return checked_model(load_checkpoint(path, map_location=device), path, device)


def checked_model(state: dict[str, Any], path: str | Path, device: str = "cpu") -> FaceModel:
    """`model_from_state` of the content of the file `path` (export and ensemble need the state too): a
    CheckpointError naming the file, not a raw KeyError or RuntimeError, when the content does not make a model."""
    try:
        return model_from_state(state, device)
    except FacerecError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, RuntimeError) as err:
        raise CheckpointError(
            f"{path} is damaged: its content does not make a facerec model ({type(err).__name__}: {err}); "
            "use the checkpoint or model file it was copied from"
        ) from None
