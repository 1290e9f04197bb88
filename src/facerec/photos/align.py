"""Real photos to training-style crops: MTCNN face detection + a 5-point similarity alignment to a template (the
facehw 64x64 framing or insightface's 112x112 ArcFace one), at any crop size. The geometry (templates, similarity
fit, warp) is in photos/warp.py; this module finds the faces and applies it.

MTCNN comes from facenet-pytorch, which ships its weights inside the package (no download at run time). It is
loaded on the first detection, so everything else in facerec works without it, and so do photos that are
already crops of the model's size (`FaceAligner.crop` takes them as they are).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageOps

from facerec.data.folder import IMAGE_EXTENSIONS, MAX_PIXELS, DataError, is_hidden, is_image_name
from facerec.photos.warp import (  # noqa: F401  (LANDMARKS, TEMPLATE_64, measure_template, transform_points: public)
    DEFAULT_TEMPLATE,
    LANDMARKS,
    TEMPLATE_64,
    measure_template,
    similarity_transform,
    template_points,
    transform_points,
    warp_similarity,
)

ImageLike = str | Path | Image.Image | np.ndarray

INSTALL_HINT = (
    "face alignment (the default for photos) needs facenet-pytorch's MTCNN; install it without its outdated "
    "torch pins: pip install --no-deps facenet-pytorch==2.6.0 && pip install -e '.[photos]'; or pass --no-align "
    "to resize each photo whole (right for photos that are already face crops)"
)
_SMALL = 160  # images with a shorter side are upscaled (and padded) before detection: crops fill the frame


class Face(NamedTuple):
    """One detection: box (4,) x1 y1 x2 y2, MTCNN probability, landmarks (5, 2) (x, y) as in `LANDMARKS`."""

    box: np.ndarray
    score: float
    landmarks: np.ndarray

    @property
    def area(self) -> float:
        return float(max(self.box[2] - self.box[0], 0) * max(self.box[3] - self.box[1], 0))


def open_photo(source: ImageLike) -> Image.Image:
    """A photo as upright (EXIF-rotated) 8-bit RGB; DataError names the file when it cannot be read."""
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    if isinstance(source, np.ndarray):
        if source.ndim != 3 or source.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) RGB array, got shape {source.shape}")
        return Image.fromarray(source.astype(np.uint8))
    path = Path(source)
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_PIXELS:
                raise DataError(f"{path}: {img.width}x{img.height} is above {MAX_PIXELS} pixels; shrink it first")
            return ImageOps.exif_transpose(img).convert("RGB")
    except FileNotFoundError:
        raise DataError(f"photo {path} does not exist") from None
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"cannot read photo {path}: not an image, or corrupt ({err})") from None


class FaceAligner:
    """Detect faces (MTCNN) and warp each to a `size` x `size` crop framed like the training data.

    Args:
        size: side of the output crops; the template is scaled to it (`warp.template_points`).
        min_face_size: smallest face MTCNN looks for, in pixels of the (possibly shrunk) detection image.
        min_score: detections with a lower MTCNN probability are dropped.
        max_side: photos are shrunk to this longest side for detection (speed); crops come from the original.
        device: torch device for MTCNN.
        template: the framing, "facehw" or "arcface" (`--align-template`). None follows the model: the
            `model_template` that `crop` is given (its data.align_template), else facehw.
    """

    def __init__(
        self,
        size: int = 64,
        min_face_size: int = 20,
        min_score: float = 0.9,
        max_side: int = 1024,
        device: str = "cpu",
        template: str | None = None,
    ) -> None:
        self.size, self.min_score, self.max_side = size, min_score, max_side
        self.min_face_size, self.device = min_face_size, device
        self.template_name = template
        self.template = template_points(template or DEFAULT_TEMPLATE, size)  # checks the name now
        self._mtcnn: Any = None

    def detector(self) -> Any:
        """MTCNN, loaded on first use; ImportError with the install line (INSTALL_HINT) when it is missing."""
        if self._mtcnn is None:
            self._mtcnn = _load_mtcnn(self.min_face_size, self.device)
        return self._mtcnn

    def detect(self, img: ImageLike) -> list[Face]:
        """Faces in the photo, largest first, with boxes and landmarks in the photo's pixel coordinates."""
        photo = open_photo(img)
        det, scale, pad = _detection_view(photo, self.max_side)
        boxes, probs, points = self.detector().detect(det, landmarks=True)
        if boxes is None:
            return []
        faces = []
        for box, prob, pts in zip(boxes, probs, points):
            if prob is None or float(prob) < self.min_score:
                continue
            box = (np.asarray(box, np.float64) - pad) / scale
            faces.append(Face(box, float(prob), (np.asarray(pts, np.float64) - pad) / scale))
        return sorted(faces, key=lambda f: -f.area)

    def align_face(
        self, img: ImageLike, face: Face, size: int | None = None, model_template: str | None = None
    ) -> Image.Image:
        """The size x size crop of one face (default: the aligner's size), on the template `crop` would use."""
        size = size or self.size
        name = self.template_name or model_template or DEFAULT_TEMPLATE
        m = similarity_transform(face.landmarks, template_points(name, size))
        return warp_similarity(open_photo(img), m, size)

    def align(self, img: ImageLike) -> list[Image.Image]:
        """Crops of every face in the photo, largest first (empty when there is none)."""
        photo = open_photo(img)
        return [self.align_face(photo, f) for f in self.detect(photo)]

    def crop(
        self, photo: Image.Image, size: int | None = None, by: str = "largest", model_template: str | None = None
    ) -> Image.Image | None:
        """The one crop the model sees for an upright RGB photo: size x size (default: the aligner's size).

        A photo that already is size x size is taken as an aligned crop and returned as it is, without detection:
        MTCNN on a crop whose face fills the frame may miss it or frame it a little differently, and datasets of
        crops (HW2P2) then embed exactly as they were trained. Otherwise the `by` face (pick_face) is aligned onto
        the aligner's template, else `model_template` (the model's data.align_template), else facehw's; None
        when no face is found.
        """
        size = size or self.size
        if photo.size == (size, size):
            return photo
        faces = self.detect(photo)
        if not faces:
            return None
        return self.align_face(photo, pick_face(faces, by), size, model_template)


def _detection_view(photo: Image.Image, max_side: int) -> tuple[Image.Image, float, float]:
    """(image for MTCNN, scale, padding): detection coordinates = photo coordinates * scale + padding.

    Big photos are shrunk (MTCNN's cost grows with the pixels); small ones, like 64x64 crops whose face fills
    the frame, are upscaled and given a black border so the whole face is inside the image.
    """
    w, h = photo.size
    if max(w, h) > max_side:
        s = max_side / max(w, h)
        return photo.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BILINEAR), s, 0.0
    if min(w, h) < _SMALL:
        s = float(math.ceil(1.2 * _SMALL / min(w, h)))  # 64 -> 3 (192 px), as the template was measured
        big = photo.resize((round(w * s), round(h * s)), Image.Resampling.BICUBIC)
        pad = round(0.25 * min(big.size))
        canvas = Image.new("RGB", (big.width + 2 * pad, big.height + 2 * pad))
        canvas.paste(big, (pad, pad))
        return canvas, s, float(pad)
    return photo, 1.0, 0.0


def _load_mtcnn(min_face_size: int, device: str) -> Any:
    try:
        from facenet_pytorch import MTCNN
    except ImportError as err:
        raise ImportError(f"{INSTALL_HINT} ({err})") from None
    return MTCNN(keep_all=True, min_face_size=min_face_size, device=device)


def pick_face(faces: list[Face], by: str = "largest") -> Face:
    """The face to keep from several: the largest box or the most confident detection."""
    if by not in ("largest", "score"):
        raise ValueError(f"unknown face choice {by!r}; choose 'largest' or 'score'")
    return max(faces, key=(lambda f: f.area) if by == "largest" else (lambda f: f.score))


def load_face(source: ImageLike, aligner: FaceAligner | None, by: str = "largest") -> Image.Image:
    """One photo -> one crop, ready for `FaceModel.embed` (`FaceAligner.crop`: a photo already at the aligner's
    size is taken as a crop). With `aligner=None` the photo is taken as an already-aligned crop (returned upright,
    RGB). DataError when no face is found."""
    photo = open_photo(source)
    if aligner is None:
        return photo
    face = aligner.crop(photo, by=by)
    if face is None:
        raise DataError(
            f"no face found in {source if isinstance(source, str | Path) else 'the image'}; use a photo with a "
            "visible face, or, for a photo that already is a face crop, --no-align (aligner=None)"
        )
    return face


def load_faces(sources: list[ImageLike], aligner: FaceAligner | None, by: str = "largest") -> list[Image.Image]:
    return [load_face(s, aligner, by) for s in sources]


@dataclass
class FolderReport:
    """What `align_folder` did; paths are relative to the input folder."""

    written: int = 0
    existing: int = 0
    no_face: list[str] = field(default_factory=list)
    several: list[tuple[str, int]] = field(default_factory=list)  # (photo, faces found): kept one, or skipped
    unreadable: list[tuple[str, str]] = field(default_factory=list)

    def summary(self, skip_several: bool) -> str:
        several = "skipped" if skip_several else "kept the largest"
        return (
            f"{self.written} aligned, {self.existing} already there, {len(self.no_face)} without a face, "
            f"{len(self.several)} with several faces ({several}), {len(self.unreadable)} unreadable"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "written": self.written,
            "existing": self.existing,
            "no_face": self.no_face,
            "several": [{"photo": p, "faces": n} for p, n in self.several],
            "unreadable": [{"photo": p, "error": e} for p, e in self.unreadable],
        }


def list_photos(root: Path) -> list[Path]:
    """Every image under `root` (any depth, hidden entries skipped), in a stable order."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not is_hidden(d))
        found += [Path(folder) / f for f in sorted(files) if is_image_name(f)]
    return found


def align_folder(
    in_dir: str | Path,
    out_dir: str | Path,
    aligner: FaceAligner,
    skip_several: bool = False,
    by: str = "largest",
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> FolderReport:
    """Align every photo under `in_dir` into `out_dir`, keeping the folder structure (identity folders stay
    identity folders, a flat folder stays flat); each output is `<same relative path>.jpg`, one face per photo.

    Photos with several faces keep the largest (`by`) unless `skip_several`; outputs that exist are kept unless
    `overwrite`, so an interrupted run continues where it stopped.
    """
    src, dst = Path(in_dir).expanduser().resolve(), Path(out_dir).expanduser().resolve()
    if not src.is_dir():
        raise DataError(f"input folder {src} is not a directory")
    if dst == src or src in dst.parents:
        raise DataError(f"output folder {dst} is inside the input folder {src}; choose a folder outside it")
    photos = list_photos(src)
    if not photos:
        raise DataError(f"no images under {src} (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    report = FolderReport()
    for n, path in enumerate(photos, 1):
        rel = path.relative_to(src)
        target = dst / rel.with_suffix(".jpg")
        if target.exists() and not overwrite:
            report.existing += 1
            continue
        try:
            photo = open_photo(path)
        except DataError as err:
            report.unreadable.append((rel.as_posix(), str(err)))
            continue
        faces = aligner.detect(photo)
        if not faces:
            report.no_face.append(rel.as_posix())
            continue
        if len(faces) > 1:
            report.several.append((rel.as_posix(), len(faces)))
            if skip_several:
                continue
        target.parent.mkdir(parents=True, exist_ok=True)
        aligner.align_face(photo, pick_face(faces, by)).save(target, quality=95)
        report.written += 1
        if n % 100 == 0:
            log(f"{n}/{len(photos)} photos")
    return report
