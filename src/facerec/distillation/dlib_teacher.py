"""dlib's face descriptor as a teacher: its 128-d ResNet embedding with its own 5-point predictor and 150x150 chip.

dlib (`dlib-bin` on PyPI) runs the network; `face_recognition_models` ships the weights
(shape_predictor_5_face_landmarks.dat, dlib_face_recognition_resnet_model_v1.dat). Both are the optional extra
`pip install 'facerec[dlib]'`; dlib was trained on about 3 million faces, outside the course's rules.

dlib expects a face box from its own detector on a photo. On facehw's 64x64 aligned crops the box decides how
good the descriptor is (issue #18, 400 facehw val pairs): the crop upscaled to about 200 px with a box inset
from its edges (10% left and right, 12% from the top, down to the bottom edge) gave 0.997 AUC; dlib's HOG
detector's box 0.997; the whole crop as the box only 0.975. `box` picks one of the three ("detector" falls back
to the inset box where HOG finds no face).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from facerec.data.images import decode_batch
from facerec.distillation.protocol import TeacherImages, file_digest, options_digest

BOXES = ("inset", "detector", "whole")
INSET = (0.10, 0.12, 0.10, 0.0)  # left, top, right, bottom: shares of the side cut off the upscaled crop
CHIP_SIZE, CHIP_PADDING = 150, 0.25  # dlib's own chip for its ResNet (face_recognition_model_v1)
_INSTALL = "pip install 'facerec[dlib]' (dlib-bin and face_recognition_models)"


def _import_dlib() -> Any:
    try:
        import dlib
    except ImportError as err:
        raise ImportError(f"the dlib teacher needs dlib: {_INSTALL}") from err
    return dlib


def model_files() -> tuple[Path, Path]:
    """(5-point shape predictor, ResNet descriptor) files shipped by face_recognition_models. The package's own
    __init__ needs pkg_resources (gone from recent setuptools), so its folder is found without importing it."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the dlib teacher needs dlib's model files: {_INSTALL}")
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    files = (folder / "shape_predictor_5_face_landmarks.dat", folder / "dlib_face_recognition_resnet_model_v1.dat")
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise ImportError(f"face_recognition_models lacks {', '.join(missing)}; reinstall it: {_INSTALL}")
    return files


def face_box(side: int, box: str, detector: Any = None, image: np.ndarray | None = None) -> tuple[int, ...]:
    """The (left, top, right, bottom) box, inclusive pixel coordinates, that dlib's predictor gets on a
    side x side crop: the inset box, the whole crop, or the largest box of dlib's HOG `detector` on `image`."""
    if box == "detector" and detector is not None and image is not None:
        found = list(detector(image, 0))
        if found:
            r = max(found, key=lambda r: r.width() * r.height())
            return r.left(), r.top(), r.right(), r.bottom()
    if box == "whole":
        return 0, 0, side - 1, side - 1
    left, top, right, bottom = INSET
    return round(left * side), round(top * side), side - 1 - round(right * side), side - 1 - round(bottom * side)


class DlibTeacher:
    """dlib's 128-d descriptor of each crop (module notes); with `flip`, descriptor(chip) + descriptor(mirrored
    chip)."""

    embedding_dim = 128

    def __init__(self, size: int = 200, box: str = "inset", flip: bool = True) -> None:
        if box not in BOXES:
            raise ValueError(f"unknown dlib box {box!r}; choose one of {list(BOXES)}")
        self.dlib = _import_dlib()
        predictor, network = model_files()
        self.predictor = self.dlib.shape_predictor(str(predictor))
        self.network = self.dlib.face_recognition_model_v1(str(network))
        self.detector = self.dlib.get_frontal_face_detector() if box == "detector" else None
        self.size, self.box, self.flip = size, box, flip
        self.name = "dlib"
        versions = [importlib.metadata.version(p) for p in ("dlib-bin", "face_recognition_models")]
        weights = [file_digest(f)[:16] for f in (predictor, network)]
        self._fingerprint = options_digest("dlib", *versions, *weights, size, box, flip)

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def chip(self, image: np.ndarray) -> np.ndarray:
        """An upscaled RGB crop (size, size, 3) -> dlib's aligned 150x150 chip, via its 5 landmarks in the box."""
        rect = self.dlib.rectangle(*face_box(self.size, self.box, self.detector, image))
        shape = self.predictor(image, rect)
        return np.asarray(self.dlib.get_face_chip(image, shape, size=CHIP_SIZE, padding=CHIP_PADDING))

    def embed(self, images: TeacherImages) -> np.ndarray:
        """Images (decoded straight to size x size: the upscale) -> (N, 128) float32 descriptors."""
        crops = decode_batch(images, self.size).numpy()
        if crops.shape[1] != self.size:  # an already decoded tensor at another size
            crops = decode_batch(list(crops), self.size).numpy()
        if len(crops) == 0:
            return np.zeros((0, self.embedding_dim), np.float32)
        chips = [self.chip(np.ascontiguousarray(c)) for c in crops]
        out = np.asarray(self.network.compute_face_descriptor(chips), dtype=np.float32)
        if self.flip:
            mirrored = [np.ascontiguousarray(c[:, ::-1]) for c in chips]
            out = out + np.asarray(self.network.compute_face_descriptor(mirrored), dtype=np.float32)
        return out.reshape(len(crops), self.embedding_dim)
