"""facerec: train face-embedding CNNs for closed-set face classification and open-set face verification."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from facerec.api import FaceModel


def load(checkpoint: str, device: str = "cpu") -> FaceModel:
    """Load a trained model (a run checkpoint, an exported model file, or an ONNX export) for `embed`, `verify` and
    `classify` (ONNX exports: `embed`, `score` and `verify`, run by ONNX Runtime)."""
    if str(checkpoint).endswith(".onnx"):
        from facerec.onnx_backend import OnnxFaceModel

        return OnnxFaceModel(checkpoint)  # type: ignore[return-value]
    from facerec.api import FaceModel

    return FaceModel.load(checkpoint, device=device)


def __getattr__(name: str) -> Any:
    if name == "FaceModel":
        from facerec.api import FaceModel

        return FaceModel
    raise AttributeError(name)
