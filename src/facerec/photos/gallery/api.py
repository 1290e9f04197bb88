"""The gallery as the commands use it: the gallery of a loaded model, and open-set identification."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from facerec.metrics.scoring import Scoring
from facerec.photos.gallery.core import Gallery


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha1 of the model's weights: a gallery only makes sense with the model that made its embeddings."""
    h = hashlib.sha1()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def open_for_model(folder: str | Path, fm: Any, create: bool = False) -> Gallery:
    """The gallery of a loaded model (FaceModelLike, an ONNX export too): its metric and embedding size, checked
    against the model's fingerprint (the same for a checkpoint and its ONNX export)."""
    fp = fm.fingerprint
    if create:
        return Gallery.open(folder, fm.scoring, int(fm.config.model.embedding_dim), fp)
    return Gallery.open(folder, fingerprint=fp)


def identify(
    gallery: Gallery, embeddings: torch.Tensor, k: int = 5, threshold: float | None = None
) -> list[dict[str, Any]]:
    """Top-k matches per query; `name` is the best match, or "unknown" when its score is below `threshold`."""
    out = []
    for matches in gallery.search(embeddings, k):
        top = matches[0]
        known = threshold is None or Scoring.accept(top.score, threshold)
        out.append(
            {
                "name": top.name if known else "unknown",
                "score": top.score,
                "matches": [(m.name, m.score) for m in matches],
            }
        )
    return out
