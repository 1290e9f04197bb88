"""facerec: train face-embedding CNNs for closed-set face classification and open-set face verification."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from facerec.api import FaceModel


def load(checkpoint: str, device: str = "cpu") -> FaceModel:
    """Load a trained model (a run checkpoint or an exported model file) for `embed`, `verify` and `classify`."""
    from facerec.api import FaceModel

    return FaceModel.load(checkpoint, device=device)


def __getattr__(name: str) -> Any:
    if name == "FaceModel":
        from facerec.api import FaceModel

        return FaceModel
    raise AttributeError(name)
