"""Teacher embeddings, computed once per (teacher, image list) and kept on disk as .npz with nothing pickled.

The file's name and its `key` entry are a digest of the teacher's fingerprint (its weights file or package
version and options) and of the image list (each file's content digest and size): a changed teacher, a changed
option, a changed image or a changed folder gives another key, and the embeddings are computed again. The file
also holds each image's digest and the teacher's fingerprint, so a run on a subset of the images (data.max_classes,
data.holdout) takes its rows from a file of all of them instead of computing them. Beside
the (N, D) embeddings the file holds the teacher's mean L2-normalised embedding over those (training) images,
which distillation subtracts (issue #18: dlib's descriptors share a large common component; without subtracting
it the cosine loss is met by predicting the mean).

A slow teacher (dlib: tens of images per CPU-second) writes its progress to `NAME-KEY.partial.npz` every
`save_every_s` seconds; an interrupted computation continues from there.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from facerec.data.memory import default_cache_dir
from facerec.distillation.protocol import Teacher
from facerec.errors import DataError

CACHE_VERSION = 2  # 2: images known by their content (1: by path, size and modification time)
Log = Callable[[str], None]


@dataclass
class TeacherTargets:
    """A teacher's embeddings of the training images, in the image list's order."""

    embeddings: np.ndarray  # (N, D) float32, as the teacher gave them
    mean: np.ndarray  # (D,) float32, mean of the L2-normalised embeddings
    path: Path  # the cache file
    computed: int  # images the teacher embedded in this call (0: everything came from the cache)

    def targets(self, center: bool = True) -> torch.Tensor:
        """(N, D) unit vectors the student learns from: normalise(normalise(e) - mean) with `center`, else
        normalise(e)."""
        e = F.normalize(torch.from_numpy(self.embeddings).float(), dim=1)
        return F.normalize(e - torch.from_numpy(self.mean).float(), dim=1) if center else e


def default_dir() -> Path:
    """$FACEREC_CACHE/distill (~/.cache/facerec/distill)."""
    return default_cache_dir() / "distill"


def image_records(paths: Sequence[str | Path]) -> list[str]:
    """Each image's content digest (sha256 of its bytes) and size, as one line; DataError for an unreadable file.
    By content, not path and modification time: a folder that is moved, copied or written again with the same
    images (a data volume mounted afresh) keeps its cached embeddings; a changed image does not."""
    records = []
    for p in paths:
        try:
            data = Path(p).read_bytes()
        except OSError as err:
            raise DataError(
                f"training image {p} cannot be read ({err.strerror}); the teacher must see it"
            ) from None
        records.append(f"{hashlib.sha256(data).hexdigest()}|{len(data)}\n")
    return records


def image_digests(records: Sequence[str]) -> np.ndarray:
    """(N,) uint64: the first 8 bytes of each record's sha256, by which a cache file's rows are found again."""
    return np.array(
        [int.from_bytes(hashlib.sha256(r.encode()).digest()[:8], "little") for r in records], np.uint64
    )


def cache_key(teacher: Teacher, records: Sequence[str]) -> str:
    """sha256 of the teacher's fingerprint and the image records, in order."""
    h = hashlib.sha256(f"v{CACHE_VERSION}|{teacher.fingerprint}|".encode())
    h.update(hashlib.sha256("".join(records).encode()).hexdigest().encode())
    return h.hexdigest()


def cache_file(teacher: Teacher, key: str, cache_dir: str | Path | None = None) -> Path:
    """Where this teacher's embeddings of an image list are kept: CACHE_DIR/NAME-KEY.npz."""
    return Path(cache_dir or default_dir()) / f"{_safe(teacher.name)}-{key[:24]}.npz"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:40] or "teacher"


def _read(path: Path, key: str, n: int, dim: int) -> tuple[np.ndarray, int, np.ndarray] | None:
    """(embeddings (n, dim) with the first `done` rows filled, done, their mean (dim,)) from a cache file of this
    key; None when the file is absent, damaged or of another key."""
    try:
        with np.load(path, allow_pickle=False) as f:
            if str(f["key"]) != key:
                return None
            e, done, mean = (
                np.asarray(f["embeddings"], np.float32),
                int(f["done"]),
                np.asarray(f["mean"], np.float32),
            )
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # absent, damaged, not ours
        return None
    if e.shape != (n, dim) or mean.shape != (dim,) or not 0 <= done <= n or not np.isfinite(e[:done]).all():
        return None
    return e, done, mean


def _write(path: Path, key: str, embeddings: np.ndarray, done: int, fingerprint: str, images: np.ndarray) -> None:
    """Atomically (a temporary file, then a rename): readers never see half a file. `images`: the (N,) image
    digests, `fingerprint` the teacher's: with them a run on a subset of the images finds its rows here."""
    path.parent.mkdir(parents=True, exist_ok=True)
    e = F.normalize(torch.from_numpy(embeddings[:done]).float(), dim=1)
    mean = (e.mean(0) if done else torch.zeros(embeddings.shape[1])).numpy()  # over the rows computed so far
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        np.savez(
            f,
            key=np.array(key),
            embeddings=embeddings,
            done=np.array(done),
            mean=mean,
            fingerprint=np.array(fingerprint),
            images=images,
        )
    os.replace(tmp, path)


def teacher_targets(
    teacher: Teacher,
    paths: Sequence[str | Path],
    cache_dir: str | Path | None = None,
    batch_size: int = 64,
    log: Log = print,
    save_every_s: float = 60.0,
) -> TeacherTargets:
    """The teacher's (N, D) embeddings of the images at `paths` and their mean, from the cache when it holds them
    (module notes), else computed `batch_size` images at a time and cached."""
    records = image_records(paths)
    key, digests, n, dim = cache_key(teacher, records), image_digests(records), len(paths), teacher.embedding_dim
    path = cache_file(teacher, key, cache_dir)
    partial = path.with_name(path.name.replace(".npz", ".partial.npz"))
    found = _read(path, key, n, dim) or _read(partial, key, n, dim)
    if found is None and (rows := _rows_from_other_files(teacher, digests, path.parent)) is not None:
        e, source = rows
        _write(path, key, e, n, teacher.fingerprint, digests)
        log(f"teacher {teacher.name}: embeddings of {n} images from the cache {source} (a superset)")
        return TeacherTargets(e, _mean(e), path, 0)
    e, done, mean = found if found is not None else (np.zeros((n, dim), np.float32), 0, None)
    if done == n:
        log(f"teacher {teacher.name}: embeddings of {n} images from the cache {path}")
        if not _has_digests(path):  # written by an earlier facerec: add them, for runs on subsets
            _write(path, key, e, n, teacher.fingerprint, digests)
        return TeacherTargets(e, mean, path, 0)
    start, t0, last_save = done, time.time(), time.time()
    log(f"teacher {teacher.name}: embedding {n - done} of {n} images (cache {path})")
    for i in range(done, n, batch_size):
        e[i : i + batch_size] = teacher.embed([str(p) for p in paths[i : i + batch_size]])
        done = min(i + batch_size, n)
        if time.time() - last_save > save_every_s and done < n:
            _write(partial, key, e, done, teacher.fingerprint, digests)
            rate = (done - start) / (time.time() - t0)
            log(f"teacher {teacher.name}: {done}/{n} images, {rate:.1f} images/s")
            last_save = time.time()
    if not np.isfinite(e).all():
        raise DataError(f"teacher {teacher.name} gave non-finite embeddings; is its model file damaged?")
    _write(path, key, e, n, teacher.fingerprint, digests)
    partial.unlink(missing_ok=True)
    seconds = time.time() - t0
    log(f"teacher {teacher.name}: {n - start} images in {seconds:.1f}s ({(n - start) / max(seconds, 1e-9):.1f}/s)")
    return TeacherTargets(e, _mean(e), path, n - start)


def _rows_from_other_files(teacher: Teacher, digests: np.ndarray, folder: Path) -> tuple[np.ndarray, Path] | None:
    """(embeddings (N, D) of the images with these digests, the file) from a complete cache file of the same
    teacher that holds all of them (a run on a subset of the images: data.max_classes, data.holdout), or None."""
    for f in sorted(folder.glob(f"{_safe(teacher.name)}-*.npz")):
        if f.name.endswith(".partial.npz"):
            continue
        try:
            with np.load(f, allow_pickle=False) as z:
                if str(z["fingerprint"]) != teacher.fingerprint or int(z["done"]) != len(z["images"]):
                    continue
                have, e = np.asarray(z["images"], np.uint64), z["embeddings"]
                order = np.argsort(have)
                pos = np.minimum(np.searchsorted(have[order], digests), len(have) - 1)
                if (
                    len(have)
                    and e.shape == (len(have), teacher.embedding_dim)
                    and (have[order][pos] == digests).all()
                ):
                    return np.asarray(e[order[pos]], np.float32), f
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            continue
    return None


def _has_digests(path: Path) -> bool:
    with np.load(path, allow_pickle=False) as z:
        return "images" in z.files and "fingerprint" in z.files


def _mean(embeddings: np.ndarray) -> np.ndarray:
    return F.normalize(torch.from_numpy(embeddings).float(), dim=1).mean(0).numpy()
