"""Fuzz targets for data files: images (the decoder), pair files, embedding files (.npz and .csv)."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from facerec.data.images import MAX_PIXELS, decode_image, open_image
from facerec.data.pairs import read_pairs
from facerec.metrics.scoring import Scoring
from facerec.photos.cluster import cluster_embeddings
from facerec.photos.embed import EmbeddingSet, load_embeddings, save_embeddings
from fuzzing.base import Seed, Target, payloads
from fuzzing.mutate import json_op, png_chunk_op, text_op, zip_member_op

SIZE = 32  # the decode size of the image cases


def _encoded(img: Image.Image, fmt: str, **options: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def image_corpus(folder: Path) -> list[Seed]:
    """A 40x48 photo-like image (a gradient with noise) as JPEG (baseline with an EXIF rotation, progressive),
    PNG (RGB, RGBA, palette with transparency, 16-bit grey), BMP, WebP and GIF."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:40, 0:48]
    rgb = np.stack([x * 5, y * 6, (x + y) * 3], axis=2) + rng.integers(0, 40, (40, 48, 3))
    img = Image.fromarray(rgb.clip(0, 255).astype(np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: decode_image turns it upright
    files = {
        "exif.jpg": _encoded(img, "JPEG", quality=90, exif=exif.tobytes()),
        "progressive.jpg": _encoded(img, "JPEG", quality=80, progressive=True, optimize=True),
        "rgb.png": _encoded(img, "PNG"),
        "rgba.png": _encoded(img.convert("RGBA"), "PNG"),
        "palette.png": _encoded(img.convert("P"), "PNG", transparency=0),
        "grey16.png": _encoded(Image.fromarray((rgb[..., 0] * 200).astype(np.uint16)), "PNG"),
        "photo.bmp": _encoded(img, "BMP"),
        "photo.webp": _encoded(img, "WEBP", quality=80),
        "photo.gif": _encoded(img, "GIF"),
    }
    return [
        Seed(name, {name: data}, name, (png_chunk_op,) if name.endswith(".png") else ())
        for name, data in files.items()
    ]


def run_image(case: Path, context: Any) -> tuple[str, str]:
    """decode_image (the model's crop) and open_image (the whole photo, for face detection) of the file."""
    (path,) = case.iterdir()
    crop = decode_image(path, SIZE)
    assert crop.shape == (SIZE, SIZE, 3) and crop.dtype == np.uint8, (crop.shape, crop.dtype)
    photo = open_image(path.read_bytes())
    assert photo.mode == "RGB" and photo.width * photo.height <= MAX_PIXELS, (photo.mode, photo.size)
    return "ok", f"{photo.width}x{photo.height}"


def pair_corpus(folder: Path) -> list[Seed]:
    """HW2P2 labelled and test pair files, an LFW pairs.txt of 2 folds x (2 + 2) and a pairsDevTest of 2 + 2."""
    hw = [f"verification_data/{i:08d}.jpg verification_data/{i + 5:08d}.jpg" for i in range(6)]
    lfw_matched = ["Ann_B 1 2", "Bob_C 1 3"]
    lfw_mismatched = ["Ann_B 1 Bob_C 2", "Cid_D 4 Ann_B 2"]
    files = {
        "val.txt": "\n".join(f"{line} {i % 2}" for i, line in enumerate(hw)) + "\n",
        "test.txt": "\r\n".join(hw) + "\r\n",
        "pairs.txt": "2\t2\n" + "\n".join((lfw_matched + lfw_mismatched) * 2) + "\n",
        "pairsDevTest.txt": "2\n" + "\n".join(lfw_matched + lfw_mismatched) + "\n",
    }
    return [Seed(name, {name: text.encode()}, name, (text_op,)) for name, text in files.items()]


def run_pairs(case: Path, context: Any) -> tuple[str, str]:
    """read_pairs with the format detected; a PairList must be consistent (what evaluate relies on)."""
    (path,) = case.iterdir()
    pairs = read_pairs(path)
    n = len(pairs.a)
    assert n > 0 and len(pairs.b) == n and len(pairs.line_numbers) == n, "lengths differ"
    assert pairs.labels is None or (len(pairs.labels) == n and set(pairs.labels) <= {0, 1}), pairs.labels
    assert pairs.folds is None or len(pairs.folds) == n, "folds"
    assert all(p and not any(c.isspace() for c in p) for p in pairs.a + pairs.b), "a path holds whitespace"
    return "ok", f"{n} pairs ({pairs.format})"


def _embedding_set(scoring: str, threshold: float | None) -> EmbeddingSet:
    emb = np.random.default_rng(1).normal(size=(5, 8)).astype(np.float32)
    return EmbeddingSet(emb, [f"people/p{i // 2}/{i}.jpg" for i in range(5)], scoring, threshold)


def npz_corpus(folder: Path) -> list[Seed]:
    """`facerec embed` files (with a threshold, and without one), a compressed one, and a malicious one whose
    `paths` array pickles a payload (np.load(allow_pickle=True) would run it)."""
    seeds = []
    for name, es in {
        "cos.npz": _embedding_set("cosine", 0.3),
        "euc.npz": _embedding_set("euclidean", None),
    }.items():
        save_embeddings(es, folder / name)
        seeds.append(Seed(name, {name: (folder / name).read_bytes()}, name, (zip_member_op(),)))
    es = _embedding_set("cosine", 0.3)
    buf = io.BytesIO()
    np.savez_compressed(buf, embeddings=es.embeddings, paths=np.asarray(es.paths), scoring="cosine", threshold=0.3)
    seeds.append(Seed("compressed.npz", {"e.npz": buf.getvalue()}, "e.npz", (zip_member_op(),)))
    for kind, payload in payloads().items():
        buf = io.BytesIO()
        np.savez(buf, embeddings=es.embeddings, paths=np.asarray([payload] * 5, dtype=object))
        seeds.append(Seed(f"pickled {kind}.npz", {"e.npz": buf.getvalue()}, "e.npz", (zip_member_op(),), "clear"))
    return seeds


def csv_corpus(folder: Path) -> list[Seed]:
    save_embeddings(_embedding_set("cosine", None), folder / "e.csv")
    return [Seed("e.csv", {"e.csv": (folder / "e.csv").read_bytes()}, "e.csv", (text_op, json_op))]


def run_embeddings(case: Path, context: Any) -> tuple[str, str]:
    """load_embeddings, then what `facerec cluster FILE` does with it (cluster at the file's threshold)."""
    (path,) = case.iterdir()
    es = load_embeddings(path)
    n = len(es.paths)
    assert es.embeddings.dtype == np.float32 and es.embeddings.shape[:1] == (n,), (es.embeddings.shape, n)
    assert es.embeddings.ndim == 2 and np.isfinite(es.embeddings).all(), "not an (N, D) finite array"
    assert es.threshold is None or math.isfinite(es.threshold), es.threshold
    labels = cluster_embeddings(es.embeddings, es.scoring, 0.3 if es.threshold is None else es.threshold)
    assert labels.shape == (n,), labels.shape
    return "ok", f"{n} x {es.embeddings.shape[1]}, {Scoring.of(es.scoring).name}"


FILE_TARGETS = [
    Target(
        "image", "JPEG / PNG / BMP / WebP / GIF -> data.images.decode_image, open_image", image_corpus, run_image
    ),
    Target("pairs", "HW2P2 and LFW pair files -> data.pairs.read_pairs", pair_corpus, run_pairs),
    Target("npz", "embedding .npz -> photos.embed.load_embeddings + cluster", npz_corpus, run_embeddings),
    Target("csv", "embedding .csv -> photos.embed.load_embeddings + cluster", csv_corpus, run_embeddings),
]
