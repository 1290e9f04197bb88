"""Closed-set matching: how a face's embedding is matched to one of the training identities.

Three methods turn (N, D) flip-summed query embeddings into (N, C) class scores over the model's classes, so that
top-1 / top-5, `classify` and the classification submission work the same whichever is used:

- "centres": the loss's class-centre logits (a margin head's classifier), `engine.evaluate.class_scores`;
- "mean": cosine similarity to each identity's mean embedding: the mean of the L2-normalised flip-TTA embeddings of
  its training images (the state's "prototypes", (C, D)), re-normalised;
- "knn" (or "knn:K"): the K training images nearest by cosine (the state's "train_embeddings", (M, D) unit-length
  fp16, and "train_labels", (M,)) vote for their identities, each vote weighted by its cosine similarity.

On facehw val with models/facehw.pt, "mean" scores 57.4% top-1 against 48.8% for "centres" and 51.6% for the best
kNN (K = 1; larger K loses, as identities with many images outvote the rest): docs/benchmarks.md "Closed-set
matching". So a model's default is "mean" whenever its file holds class means (every training run writes them
into best.pt; `facerec export --train-data` adds them to an older file), else "centres"; every method stays
selectable by name.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from facerec.engine.evaluate import class_prototypes, class_scores
from facerec.inference.network import ClassHead
from facerec.losses.base import EmbeddingLoss

METHODS = ("centres", "mean", "knn")
DEFAULT_K = 1  # the best K on facehw val (top-1 falls as K grows: 51.6% at 1, 46.2% at 5, 40.7% at 10)
ONNX_METHODS = ("centres", "mean")  # what an ONNX class head can be (a matmul); knn runs in PyTorch only
_NO_IMAGE = -2.0  # nearest similarity of a class without a single training image: below every cosine
ADD_MEANS = "facerec export --checkpoint MODEL --train-data DATA --out MODEL"


@dataclass(frozen=True)
class Match:
    """A matching method by name: "centres", "mean", "knn" (K = DEFAULT_K) or "knn:K"."""

    method: str
    k: int = DEFAULT_K

    @classmethod
    def of(cls, spec: str | Match) -> Match:
        """Parse a method name; ValueError naming the choices for anything else."""
        if isinstance(spec, Match):
            return spec
        name, colon, k = str(spec).strip().lower().partition(":")
        choices = "centres, mean, knn or knn:K (K nearest training images, K >= 1)"
        if name not in METHODS or (colon and name != "knn"):
            raise ValueError(f"unknown matching method {spec!r}; choose one of {choices}")
        if not colon:
            return cls(name)
        if not k.isdigit() or int(k) < 1:
            raise ValueError(f"matching method {spec!r}: K must be a whole number >= 1, as in knn:5")
        return cls(name, int(k))

    def __str__(self) -> str:
        return f"knn:{self.k}" if self.method == "knn" else self.method


def mean_scores(queries: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """(N, D) queries, (C, D) class means -> (N, C) cosine similarities (both sides L2-normalised)."""
    return class_scores(queries.float(), None, means.float())


@torch.no_grad()
def knn_scores(
    queries: torch.Tensor,
    train_embeddings: torch.Tensor,
    train_labels: torch.Tensor,
    num_classes: int,
    k: int = DEFAULT_K,
    chunk: int = 512,
) -> torch.Tensor:
    """Similarity-weighted vote of the k nearest training images by cosine: (N, D) -> (N, C).

    A class scores the sum of the cosine similarities of its images among the k nearest. A class with none of them
    scores its nearest image's similarity minus (k + 1), below every voted class (a vote is at least k times the
    k-th nearest similarity, and an unvoted class's nearest is at most that): the rest of the ranking (top-5 at
    k = 1) follows each class's nearest image rather than an arbitrary order. Neighbours tied in similarity are
    taken in training-set order, and `argmax` takes the first of tied classes, so the result is deterministic.

    Args:
        queries: (N, D) embeddings; train_embeddings: (M, D); both are L2-normalised here.
        train_labels: (M,) class indices in [0, num_classes).
        k: neighbours that vote, capped at M.
        chunk: queries scored at a time ((chunk, M) similarities in memory).
    """
    g = F.normalize(train_embeddings.float(), dim=1)
    labels = train_labels.long()
    k = max(1, min(int(k), len(g)))
    out = []
    for q in F.normalize(queries.float(), dim=1).split(chunk):
        sims = q @ g.T  # (n, M)
        index = labels.expand(len(q), -1)
        nearest = torch.full((len(q), num_classes), _NO_IMAGE).scatter_reduce(1, index, sims, "amax")
        chosen = _k_nearest(sims, k).float()  # (n, M): 1 for the k voters
        votes = torch.zeros(len(q), num_classes).scatter_add_(1, index, sims * chosen)
        voted = torch.zeros(len(q), num_classes).scatter_add_(1, index, chosen) > 0
        out.append(torch.where(voted, votes, nearest - (k + 1)))
    return torch.cat(out) if out else torch.zeros(0, num_classes)


def _k_nearest(sims: torch.Tensor, k: int) -> torch.Tensor:
    """(n, M) similarities -> (n, M) bool, True for the k largest of each row; of the images tied with the k-th
    largest, the first ones in training order (what a stable sort would keep, without sorting the row)."""
    kth = sims.topk(k, dim=1).values[:, -1:]  # (n, 1): exact, whichever tied image topk returned
    above, tied = sims > kth, sims == kth
    room = k - above.sum(1, keepdim=True)  # places left for the tied images, >= 1
    return above | (tied & (tied.cumsum(1) <= room))


def train_set_state(
    embeddings: torch.Tensor, labels: torch.Tensor, num_classes: int, keep_embeddings: bool = False
) -> dict[str, torch.Tensor]:
    """The model-file entries the methods need, from the (M, D) flip-summed embeddings of the training images.

    Returns {"prototypes": (C, D) float32 class means of the normalised embeddings} (what "mean" needs; C x D x 4
    bytes), plus, with `keep_embeddings`, {"train_embeddings": (M, D) unit-length fp16, "train_labels": (M,) int64}
    for "knn" (M x D x 2 bytes: 10.7 MB for facehw's 20,865 256-d embeddings).
    """
    out = {"prototypes": class_prototypes(embeddings, labels.long(), num_classes)}
    if keep_embeddings:
        out["train_embeddings"] = F.normalize(embeddings.float(), dim=1).half()
        out["train_labels"] = labels.long().clone()
    return out


def stored_means(state: dict, num_classes: int, dim: int) -> torch.Tensor | None:
    """A model state's class means ("prototypes", (C, D)) as float32, or None when it holds none; ValueError when
    they are damaged (the loader reports a damaged file)."""
    means = state.get("prototypes")
    if means is None:
        return None
    if not isinstance(means, torch.Tensor) or not means.is_floating_point() or means.shape != (num_classes, dim):
        raise ValueError(f"the stored prototypes (class means) are not {num_classes} x {dim} numbers")
    return means.float()


def stored_train_set(state: dict, num_classes: int, dim: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A model state's (train_embeddings float32 (M, D), train_labels int64 (M,)), or None when it holds none.
    ValueError when they are damaged (shapes, label range): the loader reports a damaged file."""
    e, y = state.get("train_embeddings"), state.get("train_labels")
    if e is None and y is None:
        return None
    ok = isinstance(e, torch.Tensor) and isinstance(y, torch.Tensor) and e.is_floating_point()
    ok = ok and e.ndim == 2 and e.shape[1] == dim and y.shape == (len(e),) and not y.is_floating_point()
    if not ok or (len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes)):
        raise ValueError(f"the stored train_embeddings / train_labels do not fit {num_classes} classes of {dim}-d")
    return e.float(), y.long()


class Matcher:
    """What a model matches query embeddings against: its loss (class centres), class means and training
    embeddings (each may be missing), and the methods that these allow."""

    def __init__(
        self,
        loss_fn: EmbeddingLoss | None,
        means: torch.Tensor | None,
        train: tuple[torch.Tensor, torch.Tensor] | None,
        num_classes: int,
    ) -> None:
        self.loss_fn, self.train, self.num_classes = loss_fn, train, num_classes
        if means is None and train is not None:  # the means follow from the embeddings
            means = class_prototypes(train[0], train[1], num_classes)
        self.means = None if means is None else means.float()

    @property
    def methods(self) -> list[str]:
        """The methods this model's data allows, among METHODS."""
        have = {
            "centres": self.loss_fn is not None and bool(self.loss_fn.has_logits),
            "mean": self.means is not None,
            "knn": self.train is not None,
        }
        return [m for m in METHODS if have[m]]

    @property
    def default(self) -> Match:
        """The default method: "mean" when there are class means (the best measured), else "centres"."""
        return Match("mean") if self.means is not None else Match("centres")

    def resolve(self, match: str | Match | None) -> Match:
        """The method to use (the default for None); ValueError for an unknown one, or one without its data."""
        m = self.default if match is None else Match.of(match)
        if m.method in self.methods or (match is None and not self.methods):
            return m  # no method at all: class_scores says what is missing, as before
        if m.method == "centres":
            raise ValueError("matching by 'centres' needs a classifier, and this model's loss has none; use mean")
        extra = " --train-embeddings" if m.method == "knn" else ""
        need = "the training images' embeddings" if m.method == "knn" else "the class means of its training images"
        raise ValueError(
            f"matching by {str(m)!r} needs {need}, which this model file does not hold (it allows "
            f"{', '.join(self.methods) or 'none'}); add them with `{ADD_MEANS}{extra}`"
        )

    def scores(self, embeddings: torch.Tensor, match: str | Match | None = None) -> torch.Tensor:
        """(N, D) flip-summed embeddings -> (N, C) class scores by `match` (default: `default`)."""
        m = self.resolve(match)
        if m.method == "knn":
            return knn_scores(embeddings, self.train[0], self.train[1], self.num_classes, m.k)
        if m.method == "mean":
            return mean_scores(embeddings, self.means)
        return class_scores(embeddings, self.loss_fn, None)

    def head(self, match: str | Match | None = None) -> ClassHead:
        """`scores` as a module for the ONNX export (a matmul); ValueError for "knn" (PyTorch only)."""
        m = self.resolve(match)
        if m.method not in ONNX_METHODS:
            raise ValueError(
                f"an ONNX class head can match by {' or '.join(ONNX_METHODS)}, not {str(m)!r}; use the .pt model "
                "file for kNN"
            )
        return ClassHead(None, self.means) if m.method == "mean" else ClassHead(self.loss_fn, None)
