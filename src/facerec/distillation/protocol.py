"""What distillation needs of a teacher (`Teacher`), and the digests its fingerprint is made of."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from facerec.data.images import ImageLike

TeacherImages = Sequence[ImageLike] | torch.Tensor  # paths (or anything decode_image takes), or uint8 (N,S,S,3)


@runtime_checkable
class Teacher(Protocol):
    """Anything that turns face crops into embeddings for a student to learn from.

    Attributes:
        name: a short name for logs and cache file names (`dlib`, the model file's stem).
        embedding_dim: D, the width of `embed`'s output.
    """

    name: str
    embedding_dim: int

    @property
    def fingerprint(self) -> str:
        """Hex digest of everything the embeddings depend on (weights file or package version, options)."""
        ...

    def embed(self, images: TeacherImages) -> np.ndarray:
        """Images -> (N, D) float32 embeddings, not normalised (the cache and the losses normalise them)."""
        ...


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes, hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def options_digest(*parts: object) -> str:
    """sha256 of the options' text, hex: a fingerprint's second half."""
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()
