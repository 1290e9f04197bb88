"""ONNX Runtime as an inference backend: `OnnxFaceModel` is FaceModelLike, like the PyTorch models.

Decoding (data/images.py), preprocessing, flip TTA (embedding of the image + of its mirror, summed) and scoring
are those of engine/evaluate.py and inference/model.py, so a model exported with `facerec export --out model.onnx`
gives the same embeddings, pair scores and closed-set class scores as its checkpoint (up to float rounding).
Class scores come from the class head stored in the ONNX file (inference/export.py); a file exported by an older
facerec lacks it, and `class_scores` then says how to re-export.
"""

from __future__ import annotations

import base64
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facerec.config import config_from_dict
from facerec.engine.checkpoint import CheckpointError
from facerec.inference.matching import ONNX_METHODS, Match
from facerec.inference.model import FaceModel, load_model_file, stored_threshold
from facerec.inference.protocol import Images, PairVerifier
from facerec.inference.sidecar import CLASS_HEAD_KEY, HEAD_INPUT, INPUT_NAME, OUTPUT_NAME, is_onnx, read_metadata
from facerec.metrics.scoring import Scoring


def _onnxruntime(path: Path) -> Any:
    try:
        import onnxruntime
    except ImportError as err:
        raise ImportError(
            f"{path} is an ONNX model: running it needs onnxruntime (pip install 'facerec[onnx]')"
        ) from err
    return onnxruntime


def _ort_errors(ort: Any) -> tuple[type[Exception], ...]:
    """What ONNX Runtime raises for a damaged or foreign model (its exceptions derive from Exception only)."""
    s = ort.capi.onnxruntime_pybind11_state
    return (
        s.Fail,
        s.InvalidArgument,
        s.InvalidGraph,
        s.InvalidProtobuf,
        s.NoSuchFile,
        s.NotImplemented,
        s.RuntimeException,
    )


class OnnxFaceModel(PairVerifier):
    """A face model run by ONNX Runtime on the CPU (or any provider passed in)."""

    def __init__(
        self, path: str | Path, providers: Sequence[str] = ("CPUExecutionProvider",), threads: int = 0
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"ONNX model {self.path} does not exist")
        ort = _onnxruntime(self.path)
        self.providers = list(providers)
        self.options = ort.SessionOptions()
        self.options.intra_op_num_threads = threads  # 0 = ONNX Runtime's default (one per physical core)
        self._errors = _ort_errors(ort)
        self.session = self._session(str(self.path))
        self.meta = read_metadata(self.path, self._props())
        try:
            self.image_size = int(self.meta["image_size"])
            self.classes: list[str] = [str(c) for c in self.meta.get("classes", [])]
            self.scoring: str = Scoring.of(self.meta.get("scoring", "cosine")).name
            self.threshold: float | None = stored_threshold(self.meta.get("threshold"))
            model = self.meta["model"]
            self.embedding_dim = int(model["embedding_dim"])
            self._facts = {"backbone": str(model["backbone"]), "embedding_dim": self.embedding_dim}
            self._facts.update(loss=str(model["loss"]))
            self.config = config_from_dict(self.meta["config"])
            spec = self.meta["class_scores"] if self.has_class_scores else None
            # the class head's input: the graph output it takes, and its width
            self._head_input = None if spec is None else (str(spec["features"]), int(spec["input"]["shape"][1]))
            # the closed-set matching method its class head runs (inference/matching.py); None: not recorded
            self.match: str | None = None if spec is None or "match" not in spec else str(spec["match"])
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as err:  # ConfigError too
            raise CheckpointError(f"the facerec metadata of {self.path} is damaged ({err!r:.300})") from None
        if self.image_size != self.config.data.image_size:
            raise CheckpointError(f"the facerec metadata of {self.path} is damaged (two image sizes)")
        self.config.model.embedding_dim = self.embedding_dim  # an ensemble's config is its first member's
        self._head: Any = None

    def _session(self, model: str | bytes) -> Any:
        """An ONNX Runtime session of a model file (or a serialised model); CheckpointError when it is not one."""
        try:
            return _onnxruntime(self.path).InferenceSession(model, self.options, providers=self.providers)
        except (*self._errors, UnicodeDecodeError) as err:  # its message may hold the file's bytes
            raise CheckpointError(
                f"{self.path} is not a usable ONNX model, ONNX Runtime cannot load it ({str(err)[:300]}); "
                "export it again with `facerec export --out model.onnx`"
            ) from None

    def _run(self, session: Any, outputs: list[str] | None, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The first requested output of `session` for `feeds`; CheckpointError when the graph fails to run."""
        try:
            out = session.run(outputs, feeds)[0]
        except self._errors as err:
            raise CheckpointError(
                f"{self.path}: ONNX Runtime failed to run the model ({str(err)[:300]}); the file may be damaged, "
                "export it again"
            ) from None
        rows = next(iter(feeds.values())).shape[0]
        if out.ndim != 2 or out.shape[0] != rows:
            raise CheckpointError(
                f"{self.path}: the model gave shape {out.shape} for {rows} inputs; is it damaged?"
            )
        return out

    def _props(self) -> dict[str, str]:
        try:
            return dict(self.session.get_modelmeta().custom_metadata_map)
        except UnicodeDecodeError:
            raise CheckpointError(f"the metadata of {self.path} is damaged (not UTF-8 text)") from None

    @property
    def fingerprint(self) -> str | None:
        """The fingerprint of the network it was exported from (inference.protocol); None for older exports."""
        return self.meta.get("fingerprint")

    @property
    def has_class_scores(self) -> bool:
        spec = self.meta.get("class_scores")
        return bool(spec) and "missing" not in spec

    def _features(self, images: Images, output: str, flip: bool, batch_size: int) -> torch.Tensor:
        """Images -> (N, F) float32 values of the graph output `output`, summed over the image and its mirror."""
        u8 = self.decode(images).numpy()  # resized, with one warning, when not image_size
        out = []
        for start in range(0, u8.shape[0], batch_size):
            # the same float32 ops as data.augment.to_input: permute, /127.5, -1
            x = np.ascontiguousarray(u8[start : start + batch_size].transpose(0, 3, 1, 2)).astype(np.float32)
            x = x / np.float32(127.5) - np.float32(1.0)
            e = self._run(self.session, [output], {INPUT_NAME: x})
            if flip:
                e = e + self._run(self.session, [output], {INPUT_NAME: np.ascontiguousarray(x[..., ::-1])})
            out.append(torch.from_numpy(e.astype(np.float32)))
        if not out:
            width = self.embedding_dim if output == OUTPUT_NAME else self._head_input[1]
            return torch.zeros(0, width)
        return torch.cat(out)

    def embed(self, images: Images, flip: bool = True, batch_size: int = 256) -> torch.Tensor:
        """Images (paths, bytes, PIL images, HxWx3 arrays, or a uint8 (N,S,S,3) tensor) -> (N, D) float32."""
        out = self._features(images, OUTPUT_NAME, flip, batch_size)
        if out.shape[1] != self.embedding_dim:
            raise CheckpointError(
                f"{self.path}: {out.shape[1]}-d embeddings, its metadata says {self.embedding_dim}"
            )
        return out

    def _class_head(self) -> Any:
        if self._head is not None:
            return self._head
        spec = self.meta.get("class_scores")
        if not spec:
            raise CheckpointError(
                f"{self.path} was exported without closed-set class scores (by facerec before 0.2); export it "
                f"again with `facerec export --checkpoint MODEL.pt --out {self.path}`, or use the .pt model"
            )
        if "missing" in spec:
            raise CheckpointError(f"{self.path} has no closed-set class scores: {spec['missing']}")
        try:
            graph = base64.b64decode(self._props()[CLASS_HEAD_KEY], validate=True)
        except (KeyError, ValueError):
            raise CheckpointError(f"{self.path}: the class head in its metadata is missing or damaged") from None
        self._head = self._session(graph)
        return self._head

    def class_scores(
        self, images: Images, flip: bool = True, match: str | None = None, batch_size: int = 256
    ) -> torch.Tensor:
        """(N, C) closed-set scores over `classes`, as the checkpoint's `class_scores` gives them (by its default
        matching method, the one the stored head runs; another `match` is a ValueError)."""
        if match is not None and (self.match is None or str(Match.of(match)) != self.match):
            raise ValueError(
                f"{self.path} scores classes by {self.match or 'its checkpoint default'} only: an ONNX export "
                f"stores one class head, matching by {' or '.join(ONNX_METHODS)}; to match by {match!r}, use the "
                ".pt model file (or export one whose default it is)"
            )
        head = self._class_head()
        features = self._features(images, self._head_input[0], flip, batch_size)
        if len(features) == 0:
            return torch.zeros(0, len(self.classes))
        scores = self._run(head, None, {HEAD_INPUT: features.numpy()})
        if scores.shape[1] != len(self.classes):
            raise CheckpointError(f"{self.path}: {scores.shape[1]} class scores for {len(self.classes)} classes")
        return torch.from_numpy(scores.astype(np.float32))

    def info(self) -> dict[str, Any]:
        return {
            **self._facts,
            "scoring": self.scoring,
            "classes": len(self.classes),
            "threshold": self.threshold,
            "backend": "onnxruntime",
        }


def load_any(path: str | Path, device: str = "cpu") -> OnnxFaceModel | FaceModel:
    """Deprecated: use `facerec.load(path)` (inference/load.py), which opens the same files."""
    warnings.warn(
        "facerec.inference.onnx.load_any is deprecated; use facerec.load", DeprecationWarning, stacklevel=2
    )
    return OnnxFaceModel(path) if is_onnx(path) else load_model_file(path, device)
