"""The LFW verification benchmark: the 10-fold accuracy protocol and ROC AUC over LFW's pair files.

The pair files (pairs.txt with its "10 300" header, pairsDevTest.txt with "500") are read by
`data.pairs.read_pairs`, which reads HW2P2 `a b label` files too (those are one fold).

Protocol (View 2): for each fold, the threshold that maximises accuracy on the other folds is applied to the
held-out fold; the report is the mean and standard deviation (numpy's, ddof=0) of the fold accuracies. With a
single fold there is nothing to hold out: the best threshold on the fold itself is used and the accuracy is
optimistic, which the report says. AUC, EER and TAR@FAR are over all pairs (metrics.verification).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from facerec.data.folder import DataError
from facerec.data.pairs import PairList, check_pair_files, read_pairs, unique_images
from facerec.metrics.scoring import Scoring
from facerec.metrics.verification import verification_report
from facerec.photos.embed import embed_photos

if TYPE_CHECKING:
    from facerec.inference.model import FaceModel
    from facerec.photos.align import FaceAligner

LfwPairs = PairList  # the old name of an LFW file's pairs: one PairList for every pair-file format


def read_lfw_pairs(path: str | Path) -> PairList:
    """An LFW pair file (either header form), insisting on the LFW format: `read_pairs(path, fmt="lfw")`."""
    return read_pairs(path, fmt="lfw")


def check_lfw_images(pairs: PairList, root: str | Path) -> list[Path]:
    """The unique image paths of the pairs under `root`, in first-use order; DataError on the first missing one."""
    return unique_images(*_pair_paths(pairs, root))[0]


def _pair_paths(pairs: PairList, root: str | Path) -> tuple[list[Path], list[Path]]:
    root = Path(root).expanduser()
    if not root.is_dir():
        layout = "the LFW folder of <name>/<name>_0001.jpg" if pairs.format == "lfw" else "the folder they are in"
        raise DataError(f"{root} is not a directory; pass {layout} (the images {pairs.source} names)")
    return check_pair_files(pairs, root, None)


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The accuracy-maximising threshold on these pairs (accept score >= threshold)."""
    return float(verification_report(scores, labels, fars=())["best_threshold"])


def kfold_accuracy(scores: Any, labels: Any, folds: Any) -> dict[str, Any]:
    """Per-fold accuracy with the threshold tuned on the other folds (or on the fold itself when it is alone)."""
    s, y, f = np.asarray(scores, np.float64), np.asarray(labels, np.int64), np.asarray(folds, np.int64)
    ids = np.unique(f)
    accs, thrs = [], []
    for k in ids:
        test = f == k
        train = ~test if len(ids) > 1 else test
        thr = best_threshold(s[train], y[train])
        accs.append(float((Scoring.accept(s[test], thr) == (y[test] == 1)).mean()))
        thrs.append(thr)
    protocol = (
        f"{len(ids)}-fold: threshold tuned on the other folds"
        if len(ids) > 1
        else "single fold: threshold tuned on the same pairs (optimistic accuracy)"
    )
    return {
        "protocol": protocol,
        "folds": int(len(ids)),
        "accuracy": float(np.mean(accs)),
        "accuracy_std": float(np.std(accs)),
        "fold_accuracy": accs,
        "fold_threshold": thrs,
    }


def lfw_report(scores: Any, labels: Any, folds: Any) -> dict[str, Any]:
    """The k-fold accuracy plus AUC, EER and TAR@FAR over all pairs."""
    overall = verification_report(scores, labels)
    return {
        **kfold_accuracy(scores, labels, folds),
        **{k: overall[k] for k in overall if k not in ("best_acc", "best_threshold")},
    }


def embed_every_photo(
    fm: FaceModel,
    paths: list[Path],
    aligner: FaceAligner | None,
    flip: bool = True,
    log: Callable[[str], None] = print,
) -> tuple[torch.Tensor, list[str]]:
    """(N, D) embeddings of every photo, in order, and the photos in which no face was found. Every pair must be
    scored, so such a photo is embedded whole, resized (photos.embed.embed_photos, no_face="whole"; LFW's photos
    are centred on a face); an unreadable photo is a DataError."""
    es = embed_photos(fm, paths, aligner, flip, no_face="whole", log=log)
    if es.unreadable:
        more = f" ({len(es.unreadable) - 1} more)" if len(es.unreadable) > 1 else ""
        raise DataError(f"cannot read photo {es.unreadable[0]}{more}: not an image, or corrupt; replace it")
    return torch.from_numpy(es.embeddings), es.no_face


def score_photo_pairs(
    fm: FaceModel,
    pairs: PairList,
    root: str | Path,
    aligner: FaceAligner | None = None,
    flip: bool = True,
    log: Callable[[str], None] = print,
) -> tuple[np.ndarray, list[Path], list[str]]:
    """Embed each photo of the pairs once (`embed_every_photo`) and score every pair with the model's scoring:
    ((N,) float64 scores, the unique photos, the photos in which no face was found and which were used whole)."""
    unique, ia, ib = unique_images(*_pair_paths(pairs, root))
    emb, no_face = embed_every_photo(fm, unique, aligner, flip, log)
    scores = Scoring.of(fm.scoring).indexed_pairs(emb, ia, ib).numpy()
    return scores.astype(np.float64), unique, no_face


def benchmark_lfw(
    fm: FaceModel,
    pairs_file: str | Path,
    root: str | Path,
    aligner: FaceAligner | None = None,
    flip: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Score every pair of a labelled pair file (LFW format, or `a b label` lines: one fold) with `fm` (its own
    scoring) and report the LFW protocol."""
    pairs = read_pairs(pairs_file, labelled=True)
    scores, paths, fallback = score_photo_pairs(fm, pairs, root, aligner, flip, log)
    folds = pairs.folds if pairs.folds is not None else [0] * len(pairs)
    report = lfw_report(scores, pairs.labels, folds)
    report.update(
        scoring=fm.scoring,
        n_images=len(paths),
        aligned=aligner is not None,
        no_face=[Path(p).as_posix() for p in fallback],
    )
    return report
