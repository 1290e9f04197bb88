"""The Python API: `facerec.load(checkpoint)` -> FaceModel with `embed`, `verify` and `classify`.

Everything goes through the same scoring path as validation and the submission files (engine/evaluate.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from facerec.config import Config, config_from_dict
from facerec.data.folder import DataError, load_image
from facerec.engine.checkpoint import load_checkpoint
from facerec.engine.evaluate import class_scores, embed
from facerec.losses.base import CombinedLoss
from facerec.metrics.verification import pair_scores
from facerec.models.embedder import FaceEmbedder

ImageLike = str | Path | Image.Image | np.ndarray


@dataclass
class Verdict:
    score: float
    same: bool
    threshold: float


def _float32(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Model files may store fp16 weights (`export_inference(half=True)`); compute in fp32."""
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def top_k(scores: torch.Tensor, classes: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
    """(N, C) class scores -> for each row, the k best (class name, score), best first."""
    top = scores.topk(min(k, scores.shape[1]), dim=1)
    return [[(classes[int(i)], float(v)) for v, i in zip(vals, idx)] for vals, idx in zip(*top)]


class PairVerifier:
    """`score` and `verify` on top of `embed`: shared by the PyTorch and the ONNX Runtime backends."""

    scoring: str
    threshold: float | None

    def embed(self, images: Sequence[ImageLike] | torch.Tensor, flip: bool = True) -> torch.Tensor:
        raise NotImplementedError

    def score(self, a: ImageLike, b: ImageLike) -> float:
        """Similarity of two face images (higher = more likely the same person), with the model's scoring."""
        e = self.embed([a, b])
        return float(pair_scores(e[:1], e[1:], self.scoring)[0])

    def verify(self, a: ImageLike, b: ImageLike, threshold: float | None = None) -> Verdict:
        """Same person or not, at `threshold` (default: the one stored with the model)."""
        thr = threshold if threshold is not None else self.threshold
        if thr is None:
            raise ValueError("this model has no stored threshold; pass threshold=")
        s = self.score(a, b)
        return Verdict(s, s >= thr, float(thr))


class FaceModel(PairVerifier):
    """A trained face model ready for inference on 64x64-style aligned face crops (any size is resized)."""

    def __init__(
        self,
        model: FaceEmbedder,
        loss_fn: CombinedLoss,
        cfg: Config,
        classes: list[str],
        scoring: str,
        threshold: float | None = None,
        prototypes: torch.Tensor | None = None,
        device: str = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.loss_fn = loss_fn.to(self.device).eval()
        self.config, self.classes, self.scoring = cfg, classes, scoring
        self.threshold = threshold
        self.prototypes = prototypes
        self.image_size = cfg.data.image_size

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> FaceModel:
        """A model file or run checkpoint; an ensemble file (inference/ensemble.py) gives an EnsembleFaceModel."""
        state = load_checkpoint(path, map_location=device)
        if "ensemble" in state:
            from facerec.inference.ensemble import EnsembleFaceModel

            return EnsembleFaceModel.from_state(state, device)
        return cls.from_state(state, device)

    @classmethod
    def from_state(cls, state: dict[str, Any], device: str = "cpu") -> FaceModel:
        from facerec.engine.build import build_loss_fn, build_model

        cfg = config_from_dict(state["config"])
        model = build_model(cfg)
        model.load_state_dict(_float32(state["model"]))
        loss_fn = build_loss_fn(cfg, len(state["classes"]))
        loss_fn.load_state_dict(_float32(state["loss"]))
        protos = state.get("prototypes")
        return cls(
            model,
            loss_fn,
            cfg,
            list(state["classes"]),
            state.get("scoring", "cosine"),
            state.get("threshold"),
            None if protos is None else protos.float(),
            device,
        )

    def _as_uint8(self, images: Sequence[ImageLike] | torch.Tensor) -> torch.Tensor:
        if isinstance(images, torch.Tensor):
            return images
        arrays = []
        for item in images:
            if isinstance(item, str | Path):
                arr = load_image(Path(item), self.image_size)
                if arr is None:
                    raise DataError(f"cannot read image {item}: not an image, or corrupt")
            else:
                img = item if isinstance(item, Image.Image) else Image.fromarray(np.asarray(item))
                arr = np.asarray(img.convert("RGB").resize((self.image_size, self.image_size), Image.BILINEAR))
            arrays.append(arr)
        return (
            torch.from_numpy(np.stack(arrays))
            if arrays
            else torch.zeros(0, self.image_size, self.image_size, 3, dtype=torch.uint8)
        )

    def embed(self, images: Sequence[ImageLike] | torch.Tensor, flip: bool = True) -> torch.Tensor:
        """Images (paths, PIL images, HxWx3 arrays, or a uint8 (N,S,S,3) tensor) -> (N, D) embeddings."""
        return embed(self.model, self._as_uint8(images), self.device, flip=flip)

    def class_scores(self, images: Sequence[ImageLike] | torch.Tensor, flip: bool = True) -> torch.Tensor:
        """(N, C) closed-set scores over the training identities (the classifier's logits, or cosine similarity
        to class prototypes for losses without one); the argmax is the predicted identity."""
        return class_scores(self.embed(images, flip=flip), self.loss_fn, self.prototypes)

    def classify(self, images: Sequence[ImageLike] | torch.Tensor, k: int = 1) -> list[list[tuple[str, float]]]:
        """Top-k (identity folder name, score) for each image, over the training identities."""
        return top_k(self.class_scores(images), self.classes, k)

    def info(self) -> dict[str, Any]:
        return {
            "backbone": self.config.model.backbone,
            "embedding_dim": self.config.model.embedding_dim,
            "loss": self.config.loss.name,
            "scoring": self.scoring,
            "classes": len(self.classes),
            "threshold": self.threshold,
        }
