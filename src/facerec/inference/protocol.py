"""What every loaded model offers (`FaceModelLike`), whichever file it came from, and the part they share.

`facerec.load` returns a FaceModel (a run checkpoint or model file), an EnsembleFaceModel (an ensemble file) or an
OnnxFaceModel (an ONNX export); every command that takes `--checkpoint` uses only what this protocol lists, so
each of them works with each kind of file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from facerec.config import Config
from facerec.data.images import ImageLike
from facerec.metrics.scoring import Scoring

# files, bytes, PIL images, HxWx3 arrays, or already decoded uint8 (N, S, S, 3)
Images = Sequence[ImageLike] | torch.Tensor


@dataclass
class Verdict:
    score: float
    same: bool
    threshold: float


@runtime_checkable
class FaceModelLike(Protocol):
    """A face model ready for inference.

    Attributes:
        image_size: side S of the square crops the network takes; other sizes are resized to it.
        scoring: "cosine" or "euclidean" (negative distance): how two embeddings are compared.
        threshold: pair scores at or above it mean "same person"; None when the model stores none.
        classes: the training identities (folder names), in the order of `class_scores`' columns.
        config: the training config (data.root, the hold-out settings and seed are what evaluation reads).
        fingerprint: 16 hex digits of the embedding network's weights; ties a gallery to the model that made
            its embeddings (an ONNX export carries its checkpoint's); None when unknown.
    """

    image_size: int
    scoring: str
    threshold: float | None
    classes: list[str]
    config: Config

    @property
    def fingerprint(self) -> str | None: ...

    def embed(self, images: Images, flip: bool = True) -> torch.Tensor:
        """(N,) images -> (N, D) float32 embeddings; with `flip`, embedding(image) + embedding(mirror image)."""
        ...

    def score(self, a: ImageLike, b: ImageLike) -> float: ...

    def verify(self, a: ImageLike, b: ImageLike, threshold: float | None = None) -> Verdict: ...

    def class_scores(self, images: Images, flip: bool = True, match: str | None = None) -> torch.Tensor:
        """(N,) images -> (N, C) closed-set scores over `classes`; the argmax is the predicted identity. `match`:
        the matching method (inference/matching.py: centres, mean, knn[:K]; default the model's own)."""
        ...

    def classify(self, images: Images, k: int = 1) -> list[list[tuple[str, float]]]: ...

    def info(self) -> dict[str, Any]:
        """backbone, embedding_dim, loss, scoring, classes (count) and threshold, as plain values."""
        ...


def top_k(scores: torch.Tensor, classes: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
    """(N, C) class scores -> for each row, the k best (class name, score), best first."""
    top = scores.topk(min(k, scores.shape[1]), dim=1)
    return [[(classes[int(i)], float(v)) for v, i in zip(vals, idx)] for vals, idx in zip(*top)]


def weights_fingerprint(network: nn.Module) -> str:
    """sha1 of a network's weights (names and fp32 values), first 16 hex digits."""
    h = hashlib.sha1()
    for name, tensor in sorted(network.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class PairVerifier:
    """`score`, `verify` and `classify` on top of `embed` and `class_scores`: shared by every backend."""

    scoring: str
    threshold: float | None
    classes: list[str]

    def embed(self, images: Images, flip: bool = True) -> torch.Tensor:
        raise NotImplementedError

    def class_scores(self, images: Images, flip: bool = True, match: str | None = None) -> torch.Tensor:
        raise NotImplementedError

    def score(self, a: ImageLike, b: ImageLike) -> float:
        """Similarity of two face images (higher = more likely the same person), with the model's scoring."""
        e = self.embed([a, b])
        return float(Scoring.of(self.scoring).pairs(e[:1], e[1:])[0])

    def verify(self, a: ImageLike, b: ImageLike, threshold: float | None = None) -> Verdict:
        """Same person or not, at `threshold` (default: the one stored with the model)."""
        thr = threshold if threshold is not None else self.threshold
        if thr is None:
            raise ValueError("this model has no stored threshold; pass threshold=")
        s = self.score(a, b)
        return Verdict(s, Scoring.accept(s, thr), float(thr))

    def classify(self, images: Images, k: int = 1) -> list[list[tuple[str, float]]]:
        """Top-k (identity folder name, score) for each image, over the training identities."""
        return top_k(self.class_scores(images), self.classes, k)
