"""`facerec benchmark bin`: insightface's verification protocol on .bin packs (lfw.bin, cfp_fp.bin, agedb_30.bin).

Each pack is read safely (data/binpack.py) and checked before any is embedded, so a bad pack among several fails
at once. Images are decoded at the model's input size (`decode_image`: a 112x112 pack given to a 64x64 model is
resized) in chunks of `batch_size`, each embedded with its mirror image summed (`FaceModelLike.embed`, any model
file `facerec.load` opens); the protocol itself is metrics/insightface.py.

A result per pack (`--json` prints the list of them):
    pack: the path; name: the file's stem; n_pairs, n_pos: pairs and same-person pairs;
    accuracy, accuracy_std: mean and std (ddof=0) of the 10 fold accuracies; fold_accuracy, fold_threshold:
        per fold (thresholds are squared L2 distances of unit embeddings: "same" below it); folds, protocol;
    auc, eer, tar@far=1e-3: over all pairs, on the cosine of the normalised embeddings;
    image_size: the model's input side; source_size: [width, height] of the pack's first image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from facerec.data.binpack import VerificationPack, decode_images, read_pack, source_size
from facerec.errors import DataError
from facerec.metrics.insightface import FOLDS, check_pairs, protocol_report

if TYPE_CHECKING:
    from facerec.inference.protocol import FaceModelLike


def read_packs(paths: Sequence[str | Path], folds: int = FOLDS) -> list[VerificationPack]:
    """Read and check every pack (DataError naming the first bad one) before any work is done."""
    if not paths:
        raise DataError("no verification pack given: pass one or more .bin files (e.g. lfw.bin cfp_fp.bin)")
    packs = [read_pack(p) for p in paths]
    for pack in packs:
        try:
            check_pairs(pack.issame, folds)
        except ValueError as err:
            raise DataError(f"{pack.path}: {err}") from None
    return packs


def embed_pack(fm: FaceModelLike, pack: VerificationPack, batch_size: int = 256) -> torch.Tensor:
    """(2N, D) flip-summed embeddings of the pack's images, decoded `batch_size` at a time at the model's size."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    chunks = []
    for start in range(0, len(pack.images), batch_size):
        images = torch.from_numpy(decode_images(pack, start, start + batch_size, fm.image_size))
        chunks.append(fm.embed(images, flip=True).float().cpu())
    return torch.cat(chunks)


def benchmark_pack(fm: FaceModelLike, pack: VerificationPack, batch_size: int = 256) -> dict[str, Any]:
    """The protocol's report of one pack (module notes) for `fm`."""
    report = protocol_report(embed_pack(fm, pack, batch_size), pack.issame)
    return {
        "pack": str(pack.path),
        "name": pack.name,
        **report,
        "image_size": int(fm.image_size),
        "source_size": list(source_size(pack)),
    }


def benchmark_bins(
    fm: FaceModelLike, paths: Sequence[str | Path], batch_size: int = 256, log: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """One result per pack, in the order given; every pack is read and checked first."""
    results = []
    for pack in read_packs(paths):
        log(f"{pack.path}: {len(pack)} pairs ({int(pack.issame.sum())} same), {len(pack.images)} images")
        results.append(benchmark_pack(fm, pack, batch_size))
    return results


def bins_table(results: Sequence[dict[str, Any]]) -> str:
    """A Markdown table, one row per pack: pairs, accuracy +- std, AUC, EER and TAR@FAR=1e-3."""
    lines = [
        "| pack | pairs | accuracy | AUC | EER | TAR@FAR=1e-3 | images |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        w, h = r["source_size"]
        size = f"{w}x{h}" if (w, h) == (r["image_size"],) * 2 else f"{w}x{h} -> {r['image_size']}"
        lines.append(
            f"| {r['name']} | {r['n_pairs']} | {r['accuracy']:.4f} +- {r['accuracy_std']:.4f} | {r['auc']:.4f} "
            f"| {r['eer']:.4f} | {r['tar@far=1e-3']:.4f} | {size} |"
        )
    return "\n".join(lines)
