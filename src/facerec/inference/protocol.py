"""What every loaded model offers (`FaceModelLike`), whichever file it came from, and the part they share.

`facerec.load` returns a FaceModel (a run checkpoint or model file), an EnsembleFaceModel (an ensemble file) or an
OnnxFaceModel (an ONNX export); every command that takes `--checkpoint` uses only what this protocol lists, so
each of them works with each kind of file.
"""

from __future__ import annotations

import hashlib
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from facerec.config import Config
from facerec.data.images import ImageLike, decode_batch
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


class ImageSizeWarning(UserWarning):
    """A model was given images of another size than the one it was trained at: they are resized to it."""


class PairVerifier:
    """`decode`, and `score`, `verify` and `classify` on top of `embed` and `class_scores`: shared by every
    backend."""

    image_size: int
    scoring: str
    threshold: float | None
    classes: list[str]
    _size_warned: bool = False

    def decode(self, images: Images) -> torch.Tensor:
        """Images -> the uint8 (N, S, S, 3) the network takes, S = image_size (data.images.decode_batch).

        Images of another size (files, arrays or an (N, H, W, 3) tensor alike) are resized, antialiased; the first
        time a model is given one it says so with an ImageSizeWarning naming both sizes: once per model, not per
        batch, since a caller that feeds 112x112 crops to a 64x64 model usually does it for every batch.
        """
        return decode_batch(images, self.image_size, on_resize=self._resizing)

    def _resizing(self, width: int, height: int) -> None:
        if self._size_warned:
            return
        self._size_warned = True
        s = self.image_size
        warnings.warn(
            f"this model was trained on {s}x{s} images and was given a {width}x{height} one: images of another "
            f"size are resized to {s}x{s} (antialiased bilinear); align or resize them to {s}x{s} to choose how",
            ImageSizeWarning,
            stacklevel=_outside_facerec(),
        )

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


def _outside_facerec() -> int:
    """The `stacklevel` that points a warning raised by the caller at the first frame outside facerec: the
    user's line that passed the images."""
    frame, level = sys._getframe(1), 1  # the caller, which warns: stacklevel 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith("facerec."):
        frame, level = frame.f_back, level + 1
    return level
