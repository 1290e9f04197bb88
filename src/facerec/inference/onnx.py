"""ONNX Runtime as an inference backend: `OnnxFaceModel` has FaceModel's `embed` / `score` / `verify` / `info`.

Preprocessing, flip TTA (embedding of the image + of its mirror, summed) and scoring are those of
engine/evaluate.py and api.py, so a model exported with `facerec export --out model.onnx` gives the same scores
as its checkpoint (up to float rounding). Closed-set `classify` is not available: the classifier weights are not
part of the exported graph.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from facerec.data.folder import DataError, load_image
from facerec.inference.export import INPUT_NAME, METADATA_KEY, OUTPUT_NAME, SIDECAR_FORMAT, sidecar_path
from facerec.inference.model import ImageLike, PairVerifier


def images_to_uint8(images: Sequence[ImageLike] | torch.Tensor, size: int) -> torch.Tensor:
    """Paths, PIL images or HxWx3 arrays -> uint8 (N, size, size, 3), decoded exactly as FaceModel does."""
    if isinstance(images, torch.Tensor):
        return images
    arrays = []
    for item in images:
        if isinstance(item, str | Path):
            arr = load_image(Path(item), size)
            if arr is None:
                raise DataError(f"cannot read image {item}: not an image, or corrupt")
        else:
            img = item if isinstance(item, Image.Image) else Image.fromarray(np.asarray(item))
            arr = np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR))
        arrays.append(arr)
    if not arrays:
        return torch.zeros(0, size, size, 3, dtype=torch.uint8)
    return torch.from_numpy(np.stack(arrays))


def read_metadata(onnx_path: str | Path) -> dict[str, Any]:
    """The sidecar `model.onnx.json` if present, else the copy stored in the ONNX file's metadata."""
    side = sidecar_path(onnx_path)
    if side.is_file():
        meta = json.loads(side.read_text())
    else:
        import onnx

        props = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
        if METADATA_KEY not in props:
            raise ValueError(
                f"{onnx_path} has no facerec metadata and no sidecar {side.name}; "
                "export it with `facerec export --out model.onnx`"
            )
        meta = json.loads(props[METADATA_KEY])
    if meta.get("format") != SIDECAR_FORMAT:
        raise ValueError(f"{side} is not a facerec ONNX sidecar (format {meta.get('format')!r})")
    return meta


class OnnxFaceModel(PairVerifier):
    """A face model run by ONNX Runtime on the CPU (or any provider passed in)."""

    def __init__(
        self, path: str | Path, providers: Sequence[str] = ("CPUExecutionProvider",), threads: int = 0
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model {self.path} does not exist")
        self.meta = read_metadata(self.path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0 = ONNX Runtime's default (one per physical core)
        self.session = ort.InferenceSession(str(self.path), options, providers=list(providers))
        self.image_size = int(self.meta["image_size"])
        self.classes: list[str] = list(self.meta.get("classes", []))
        self.scoring: str = self.meta.get("scoring", "cosine")
        self.threshold: float | None = self.meta.get("threshold")
        self.embedding_dim = int(self.meta["model"]["embedding_dim"])

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]

    def embed(
        self, images: Sequence[ImageLike] | torch.Tensor, flip: bool = True, batch_size: int = 256
    ) -> torch.Tensor:
        """Images (paths, PIL images, HxWx3 arrays, or a uint8 (N,S,S,3) tensor) -> (N, D) float32 embeddings."""
        u8 = images_to_uint8(images, self.image_size).numpy()
        out = []
        for start in range(0, u8.shape[0], batch_size):
            # the same float32 ops as data.augment.to_input: permute, /127.5, -1
            x = np.ascontiguousarray(u8[start : start + batch_size].transpose(0, 3, 1, 2)).astype(np.float32)
            x = x / np.float32(127.5) - np.float32(1.0)
            e = self._run(x)
            if flip:
                e = e + self._run(np.ascontiguousarray(x[..., ::-1]))
            out.append(torch.from_numpy(e.astype(np.float32)))
        return torch.cat(out) if out else torch.zeros(0, self.embedding_dim)

    def classify(self, images: Any, k: int = 1) -> list[list[tuple[str, float]]]:
        raise NotImplementedError(
            "closed-set classify needs the classifier weights, which an ONNX export lacks; "
            "use the .pt model (facerec.load) or a gallery (identify)"
        )

    def info(self) -> dict[str, Any]:
        m = self.meta["model"]
        return {
            "backbone": m["backbone"],
            "embedding_dim": m["embedding_dim"],
            "loss": m["loss"],
            "scoring": self.scoring,
            "classes": len(self.classes),
            "threshold": self.threshold,
            "backend": "onnxruntime",
        }


def load_any(path: str | Path, device: str = "cpu") -> Any:
    """`.onnx` -> OnnxFaceModel; anything else -> api.FaceModel (what `facerec.load` can delegate to)."""
    if Path(path).suffix.lower() == ".onnx":
        return OnnxFaceModel(path)
    from facerec.inference.model import FaceModel

    return FaceModel.load(path, device=device)
