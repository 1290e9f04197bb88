"""The one way in for models: `load(path)` -> FaceModelLike, for every file that `--checkpoint` accepts.

  * a run checkpoint (RUN/best.pt, RUN/last.pt) or an exported model file (`facerec export --out m.pt`)
    -> inference.model.FaceModel, run by PyTorch on `device`;
  * an ensemble file (`facerec ensemble ... --out ens.pt`) -> inference.model.EnsembleFaceModel;
  * an ONNX export (`facerec export --out m.onnx`) -> inference.onnx.OnnxFaceModel, run by ONNX Runtime on the
    CPU (`device` does not apply).

Only training needs a trainable checkpoint: `facerec train --resume-from`, `train.init_from` and the members of
`facerec ensemble` refuse an .onnx file with a CheckpointError that says so (engine.checkpoint.load_checkpoint).
"""

from __future__ import annotations

from pathlib import Path

from facerec.inference.model import load_model_file
from facerec.inference.onnx import OnnxFaceModel
from facerec.inference.protocol import FaceModelLike
from facerec.inference.sidecar import is_onnx


def load(path: str | Path, device: str = "cpu") -> FaceModelLike:
    """Any facerec model file -> a model with embed / score / verify / class_scores / classify / info (module
    notes). Raises CheckpointError when the file is missing, corrupt or not a facerec model."""
    if is_onnx(path):
        return OnnxFaceModel(path)
    return load_model_file(path, device)
