"""A foreign ONNX face-embedding model as a teacher (one without facerec's metadata: insightface, FaceNet...).

Such a file does not say how to feed it, so the `distill.onnx_*` options do: input side (default: the input's
fixed spatial size), colour order (RGB / BGR), layout (NCHW / NHWC, default: from the input shape), normalisation
`(pixel - mean) / std`, and `inset`, the share cut off each side of the aligned crop before resizing (a model
aligned on a tighter template than facerec's crops). An ONNX file exported by facerec carries all of this in its
metadata and is opened by facerec's own `load()` instead (distillation/teachers.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facerec.config import DistillConfig
from facerec.data.images import decode_batch
from facerec.distillation.protocol import TeacherImages, file_digest, options_digest
from facerec.distillation.reframe import reframe
from facerec.errors import CheckpointError, ConfigError


@dataclass(frozen=True)
class OnnxTeacherOptions:
    """How to turn an RGB uint8 crop into the model's input (module notes); size / layout 0 / "auto": from the
    model's input shape."""

    size: int = 0
    channels: str = "rgb"
    layout: str = "auto"
    mean: float = 127.5
    std: float = 127.5
    inset: float = 0.0
    template: str = "none"  # the teacher's framing: none (resize) | arcface | facehw (photos/warp.py TEMPLATES)
    source: str = "facehw"  # the training crops' framing (data.align_template)

    @classmethod
    def from_config(cls, d: DistillConfig, source: str = "facehw") -> OnnxTeacherOptions:
        """The `distill.onnx_*` options; `source`: the training crops' template (data.align_template)."""
        return cls(
            d.onnx_size,
            d.onnx_channels,
            d.onnx_layout,
            d.onnx_mean,
            d.onnx_std,
            d.onnx_inset,
            d.onnx_template,
            source,
        )


def _session(path: Path) -> Any:
    try:
        import onnxruntime
    except ImportError as err:
        raise ImportError(
            f"{path} is an ONNX model: running it needs onnxruntime (pip install 'facerec[onnx]')"
        ) from err
    try:
        return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:  # ONNX Runtime's errors derive from Exception only
        raise CheckpointError(f"{path} is not a usable ONNX model ({str(err)[:300]})") from None


def _layout_and_size(shape: list[Any], opts: OnnxTeacherOptions, path: Path) -> tuple[str, int]:
    """The input's layout and side: from the options, else from a fixed (N, 3, S, S) or (N, S, S, 3) shape."""
    if len(shape) != 4:
        raise CheckpointError(
            f"{path}: its input has shape {shape}; a face model takes (N, 3, S, S) or (N, S, S, 3)"
        )
    layout = opts.layout
    if layout == "auto":
        layout = "nhwc" if shape[3] == 3 and shape[1] != 3 else "nchw"
    fixed = shape[2] if layout == "nchw" else shape[1]
    size = opts.size or (fixed if isinstance(fixed, int) and fixed > 0 else 0)
    if not size:
        raise ConfigError(f"{path} has no fixed input size: give distill.onnx_size=S (e.g. 112)")
    return layout, size


class OnnxTeacher:
    """An ONNX model run by ONNX Runtime on the CPU, fed as `OnnxTeacherOptions` say; with `flip`, the embedding
    of each crop plus that of its mirror."""

    def __init__(self, path: str | Path, opts: OnnxTeacherOptions, flip: bool = True) -> None:
        self.path, self.opts, self.flip = Path(path), opts, flip
        self.session = _session(self.path)
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        self.layout, self.size = _layout_and_size(list(first.shape), opts, self.path)
        self.name = self.path.stem
        self.embedding_dim = int(self._run(np.zeros((1, self.size, self.size, 3), np.uint8)).shape[1])
        self._fingerprint = options_digest("onnx", file_digest(self.path), opts, self.layout, self.size, flip)

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def crops(self, images: TeacherImages) -> np.ndarray:
        """Images -> uint8 (N, size, size, 3) RGB: warped onto the teacher's template, or decoded larger by the
        inset and their centre cut out."""
        if self.opts.template != "none":
            return reframe(
                decode_batch(images, self.size).numpy(), self.opts.source, self.opts.template, self.size
            )
        full = round(self.size / (1 - 2 * self.opts.inset))
        u8 = decode_batch(images, full).numpy()
        if u8.shape[1:3] != (full, full):  # an already decoded tensor at another size
            u8 = decode_batch(list(u8), full).numpy()
        cut = (full - self.size) // 2
        return u8[:, cut : cut + self.size, cut : cut + self.size]

    def _run(self, crops: np.ndarray) -> np.ndarray:
        x = crops[..., ::-1] if self.opts.channels == "bgr" else crops
        x = (x.astype(np.float32) - np.float32(self.opts.mean)) / np.float32(self.opts.std)
        if self.layout == "nchw":
            x = x.transpose(0, 3, 1, 2)
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(x)})[0]
        if out.ndim != 2 or out.shape[0] != len(crops):
            raise CheckpointError(f"{self.path}: output of shape {out.shape} for {len(crops)} images; not (N, D)")
        return out.astype(np.float32)

    def embed(self, images: TeacherImages) -> np.ndarray:
        crops = self.crops(images)
        if len(crops) == 0:
            return np.zeros((0, self.embedding_dim), np.float32)
        out = self._run(crops)
        return out + self._run(np.ascontiguousarray(crops[:, :, ::-1])) if self.flip else out
