"""What the service needs from a model, a gallery and an aligner: small interfaces, and adapters to facerec's.

The service never imports photos.gallery or photos.align at module import: `load_gallery` / `load_aligner`
try them when the server starts, and the endpoints that need a missing part answer 501 with the reason.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Protocol

import torch
from PIL import Image


class Model(Protocol):
    """api.FaceModel and onnx_backend.OnnxFaceModel both have this."""

    image_size: int
    scoring: str
    threshold: float | None

    def embed(self, images: torch.Tensor, flip: bool = True) -> torch.Tensor: ...

    def info(self) -> dict[str, Any]: ...


class Aligner(Protocol):
    def align(self, image: Image.Image) -> Any:
        """An RGB photo -> the aligned face crop (PIL image or HxWx3 uint8 array), or None if no face is found.
        facerec's (FacerecAligner) takes a photo already at the model's input size as an aligned crop."""


class Gallery(Protocol):
    """Enrolled identities searched by embedding (embeddings come from the service's model)."""

    def enroll(self, identity: str, embeddings: torch.Tensor) -> int:
        """Add (N, D) embeddings for `identity`; returns how many that identity has now."""

    def identify(self, embeddings: torch.Tensor, k: int) -> list[list[tuple[str, float]]]:
        """(Q, D) -> for each query the top-k (identity, similarity), best first."""

    def remove(self, identity: str) -> int:
        """Delete an identity; returns how many embeddings were removed (0 if it was not enrolled)."""

    def identities(self) -> list[str]: ...


class Unavailable:
    """Stands in for a missing part; `reason` is what the 501 answer says."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class FacerecGallery:
    """Adapts photos.gallery.Gallery (gallery.db + a FAISS index) to the `Gallery` interface. Each change is one
    database transaction, so CLI commands (or other servers) may use the same folder at the same time, and every
    identify sees what they committed. The Gallery has its own lock (requests run in a threadpool)."""

    def __init__(self, impl: Any) -> None:
        self.impl = impl

    def enroll(self, identity: str, embeddings: torch.Tensor) -> int:
        self.impl.add(identity, embeddings)
        return int(self.impl.people().get(identity, 0))

    def identify(self, embeddings: torch.Tensor, k: int) -> list[list[tuple[str, float]]]:
        from facerec.errors import DataError

        try:
            rows = self.impl.search(embeddings, k)
        except DataError:  # empty (perhaps just emptied by another process)
            if len(self.impl) == 0:
                return [[] for _ in range(len(embeddings))]
            raise
        return [[(m.name, float(m.score)) for m in row] for row in rows]

    def remove(self, identity: str) -> int:
        from facerec.errors import DataError

        try:
            return int(self.impl.remove(identity))
        except DataError:
            if identity not in self.impl.people():  # not enrolled (not: a damaged or busy database)
                return 0
            raise

    def identities(self) -> list[str]:
        return list(self.impl.people())


def load_gallery(model: Model, folder: str | Path | None) -> Gallery | Unavailable:
    """The facerec.photos.gallery folder for this model (created empty if new), or Unavailable(reason)."""
    if not folder:
        return Unavailable(
            "no gallery on this server: start it with `facerec serve --gallery DIR` to enable "
            "identify / enroll / delete"
        )
    try:
        from facerec.errors import DataError
        from facerec.photos import gallery as gallery_module

        fingerprint = getattr(model, "fingerprint", None)  # ties the gallery to the model (inference.protocol)
        impl = gallery_module.Gallery.open(folder, model.scoring, int(model.info()["embedding_dim"]), fingerprint)
    except (ImportError, DataError, ValueError, OSError) as err:
        return Unavailable(f"the gallery {folder} cannot be used: {err}")
    return FacerecGallery(impl)


class FacerecAligner:
    """Adapts facerec.photos.align.FaceAligner to the `Aligner` interface: `FaceAligner.crop`, the rule every
    command uses (a photo already size x size is taken as a crop, else the largest face aligned, or None)."""

    def __init__(self, impl: Any) -> None:
        self.impl = impl
        self.lock = threading.Lock()  # MTCNN is a torch model shared by the request threads

    def align(self, image: Image.Image) -> Image.Image | None:
        with self.lock, torch.inference_mode():
            return self.impl.crop(image)


def load_aligner(size: int, template: str | None = None) -> Aligner | Unavailable:
    """facerec.photos.align.FaceAligner(size, template) behind the `Aligner` interface, its MTCNN loaded now (a
    server should fail at start-up, not on its first upload), or Unavailable(reason: how to install it).
    `template`: "facehw" (None) or "arcface", the model's data.align_template (`facerec serve` passes it)."""
    try:
        from facerec.photos.align import FaceAligner

        impl = FaceAligner(size=size, template=template)
        impl.detector()
        return FacerecAligner(impl)
    except (ImportError, OSError, RuntimeError) as err:
        return Unavailable(f"face alignment is not available: {err}")
