"""Teachers: anything that turns face crops into embeddings for a student to learn from.

A `Teacher` has a `name`, an `embedding_dim`, a `fingerprint` (what the cached embeddings depend on: the teacher's
file or package and its options) and `embed(images) -> (N, D) float32`. `make_teacher` builds one from the
`--teacher` value:

  * `dlib`: dlib's 128-d face descriptor (distillation/dlib_teacher.py, the optional extra `facerec[dlib]`);
  * a facerec model file (run checkpoint, exported .pt, ensemble .pt, or an .onnx exported by facerec, whose
    metadata gives its input size and normalisation), opened by facerec's one `load()`;
  * any other .onnx face-embedding model, prepared as the `distill.onnx_*` options say
    (distillation/onnx_teacher.py).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from torch import nn

from facerec.config import DistillConfig
from facerec.data.images import decode_batch
from facerec.distillation.dlib_teacher import DlibTeacher
from facerec.distillation.onnx_teacher import OnnxTeacher, OnnxTeacherOptions
from facerec.distillation.parallel import ParallelTeacher
from facerec.distillation.protocol import Teacher, TeacherImages, file_digest, options_digest
from facerec.distillation.reframe import reframe
from facerec.errors import ConfigError
from facerec.inference.load import load
from facerec.inference.model import FaceModel
from facerec.inference.sidecar import METADATA_KEY, is_onnx, metadata_props, sidecar_path


class ModelTeacher:
    """A facerec model file as a teacher: a run checkpoint, an exported .pt, an ensemble or a facerec .onnx.

    Its embeddings are `model.embed`'s (decoded at the model's own input size, flip-summed when `flip`), so they
    are the ones its validation AUC was measured with.
    """

    def __init__(self, path: str | Path, device: str = "cpu", flip: bool = True, source: str = "facehw") -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(f"distill.teacher={path}: no such file; give dlib or a model file (.pt or .onnx)")
        self.model = load(self.path, device=device)
        self.flip = flip
        self.name = self.path.stem
        self.embedding_dim = int(self.model.info()["embedding_dim"])
        self.image_size = int(self.model.image_size)
        # the framing the teacher was trained on; crops of another (`source`) are warped onto it
        self.source, self.template = source, getattr(self.model.config.data, "align_template", "facehw")
        self._fingerprint = options_digest("facerec", file_digest(self.path), flip, self.source, self.template)

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def embed(self, images: TeacherImages) -> np.ndarray:
        """Images decoded at the model's input size (resized from the crops' own), flip-summed with `flip`."""
        u8 = decode_batch(images, self.image_size)
        if u8.shape[1] != self.image_size:  # an already decoded tensor at another size
            u8 = decode_batch(list(u8.numpy()), self.image_size)
        if self.template != self.source:
            u8 = torch.from_numpy(reframe(u8.numpy(), self.source, self.template, self.image_size))
        return self.model.embed(u8, flip=self.flip).float().numpy()

    def network(self) -> nn.Module | None:
        """The PyTorch network ((N, 3, S, S) in [-1, 1] -> (N, D)) for an online teacher; None for ONNX files."""
        return self.model.model if isinstance(self.model, FaceModel) else None


def has_facerec_metadata(path: str | Path) -> bool:
    """Whether an .onnx file was exported by facerec (its metadata, or a sidecar, says how to feed it)."""
    if sidecar_path(path).is_file():
        return True
    try:
        return METADATA_KEY in metadata_props(path)
    except Exception:  # onnxruntime cannot read it: ModelTeacher's load gives the useful error
        return True


def make_teacher(spec: str, options: DistillConfig, device: str = "cpu", source: str = "facehw") -> Teacher:
    """The teacher that `--teacher` / `distill.teacher` names (module notes); ConfigError when it names none.
    `source`: the 5-point template the training crops are aligned on (data.align_template)."""
    if not spec:
        raise ConfigError("no teacher given: pass --teacher dlib, a facerec model file or an .onnx model")
    dlib = spec.lower() == "dlib"
    flip = options.flip == "on" or (options.flip == "auto" and not dlib)
    if dlib:
        factory = functools.partial(DlibTeacher, options.dlib_size, options.dlib_box, flip)
        return ParallelTeacher(factory, options.teacher_workers) if options.teacher_workers > 1 else factory()
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ConfigError(f"distill.teacher={spec}: no such file; give dlib or a model file (.pt or .onnx)")
    if is_onnx(path) and not has_facerec_metadata(path):
        return OnnxTeacher(path, OnnxTeacherOptions.from_config(options, source), flip)
    return ModelTeacher(path, device, flip, source)
