"""Photos to embeddings: the one loop every command and the service use (`facerec embed`; files: embedfile.py).

`embed_photos` turns each photo into the crop the model sees and embeds it. With an aligner (the default of every
command) a photo already at the model's input size is taken as an aligned crop, and any other photo is aligned on
its largest detected face (`FaceAligner.crop`); without one (`--no-align`) every photo is resized whole, exactly
as `FaceModel.embed(path)` reads it. What happens to a photo in which no face is found is the caller's explicit
choice, `no_face`: "skip" leaves it out (galleries, embedding files, clusters: every row is a face), "whole" embeds
the whole photo resized instead (benchmarks and calibration: every pair needs a score). Either way it is listed
in `EmbeddingSet.no_face`; an unreadable photo is always left out and listed in `unreadable`, never embedded as
something else. Photos go in chunks, so memory stays bounded for large folders.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from facerec.data.folder import DataError, load_image, load_images
from facerec.photos.align import FaceAligner, list_photos, open_photo
from facerec.photos.embedfile import FORMATS, EmbeddingSet, is_embedding_file, load_embeddings, save_embeddings

__all__ = [
    "FORMATS",
    "EmbeddingSet",
    "NoFace",
    "embed_files",
    "embed_photos",
    "is_embedding_file",
    "list_inputs",
    "load_embeddings",
    "save_embeddings",
]

NoFace = Literal["skip", "whole"]
_ALIGNED_CHUNK = 256  # photos per chunk when detecting faces (MTCNN is slow: progress is reported per chunk)


def list_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files as given, and every image below each folder (any depth, hidden entries skipped, a stable
    order), without repeats. A path that does not exist, or a folder without images, is a DataError up front."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            photos = list_photos(path)
            if not photos:
                raise DataError(f"no images under {path}; pass image files or folders that hold images")
            found += photos
        elif path.is_file():
            found.append(path)
        else:
            raise DataError(f"{path} does not exist; pass image files or folders of images")
    seen: set[Path] = set()
    unique = []
    for p in found:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def embed_photos(
    fm: Any,
    photos: Sequence[str | Path],
    aligner: FaceAligner | None = None,
    flip: bool = True,
    no_face: NoFace = "skip",
    chunk: int = 2048,
    log: Callable[[str], None] = print,
) -> EmbeddingSet:
    """Embed `photos` (in their order) with `fm` (a FaceModel or OnnxFaceModel); see the module notes.

    Args:
        aligner: detects and aligns faces (the crop size is the model's `image_size`, the template its
            data.align_template unless the aligner has its own); None resizes every photo whole.
        no_face: "skip" or "whole", for a photo in which the aligner finds no face.
        chunk: photos decoded and embedded at a time (at most 256 while aligning).

    Returns the embeddings (N, D) float32 of the photos kept, in order. DataError when none could be embedded.
    """
    if no_face not in ("skip", "whole"):
        raise ValueError(f"unknown no_face policy {no_face!r}; choose 'skip' or 'whole'")
    paths, size = [Path(p) for p in photos], int(fm.image_size)
    step = chunk if aligner is None else min(chunk, _ALIGNED_CHUNK)
    kept: list[str] = []
    parts: list[torch.Tensor] = []
    unreadable: list[str] = []
    faceless: list[str] = []
    for start in range(0, len(paths), step):
        batch = paths[start : start + step]
        if aligner is None:
            images, failed = load_images(batch, size)
            bad = set(failed)
            unreadable += [str(batch[i]) for i in failed]
            ok = [str(p) for i, p in enumerate(batch) if i not in bad]
            u8 = torch.from_numpy(images)
        else:
            template = fm.config.data.align_template
            ok, u8 = _aligned(batch, aligner, size, no_face, unreadable, faceless, template)
        if ok:
            parts.append(fm.embed(u8, flip=flip).float())
            kept += ok
        log(f"embedded {len(kept)}/{len(paths)} photos")
    if not kept:
        raise DataError(
            f"none of the {len(paths)} photos could be embedded ({len(unreadable)} unreadable, "
            f"{len(faceless)} without a detected face)"
        )
    emb = torch.cat(parts).numpy().astype(np.float32)
    return EmbeddingSet(emb, kept, fm.scoring, fm.threshold, unreadable, faceless)


def _aligned(
    batch: list[Path],
    aligner: FaceAligner,
    size: int,
    no_face: NoFace,
    unreadable: list[str],
    faceless: list[str],
    template: str | None = None,
) -> tuple[list[str], torch.Tensor]:
    """(paths kept, uint8 (n, size, size, 3) crops) of one chunk; appends to `unreadable` and `faceless`.
    `template`: the model's alignment template (FaceAligner.crop's `model_template`)."""
    ok, crops = [], []
    for p in batch:
        try:
            face = aligner.crop(open_photo(p), size, model_template=template)
        except DataError:
            unreadable.append(str(p))
            continue
        if face is not None:
            crops.append(np.asarray(face.convert("RGB"), dtype=np.uint8))
        else:
            faceless.append(str(p))
            if no_face == "skip":
                continue
            whole = load_image(p, size)  # the whole photo resized, as --no-align embeds it
            if whole is None:
                unreadable.append(str(p))
                continue
            crops.append(whole)
        ok.append(str(p))
    u8 = torch.from_numpy(np.stack(crops)) if crops else torch.zeros(0, size, size, 3, dtype=torch.uint8)
    return ok, u8


def embed_files(
    fm: Any,
    inputs: Sequence[str | Path],
    aligner: FaceAligner | None = None,
    flip: bool = True,
    no_face: NoFace = "skip",
    chunk: int = 2048,
    log: Callable[[str], None] = print,
) -> EmbeddingSet:
    """`embed_photos` of every photo of `inputs` (image files and folders, `list_inputs`)."""
    return embed_photos(fm, list_inputs(inputs), aligner, flip, no_face, chunk, log)
