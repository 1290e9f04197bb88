"""Calibrate a model's verification threshold for a target false-accept rate on labelled pairs, and store it.

Accepting `score >= threshold` then gives an empirical FAR <= the target on the calibration pairs
(metrics.verification.threshold_at_far), with the highest TAR that allows. FAR moves in steps of
1 / (different pairs): a target of 1e-3 needs well over 1,000 different pairs to mean anything.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from facerec.data.folder import DataError
from facerec.engine.checkpoint import load_checkpoint, save_checkpoint
from facerec.metrics.verification import pair_scores, threshold_at_far

if TYPE_CHECKING:
    from facerec.inference.model import FaceModel
    from facerec.photos.align import FaceAligner


def is_lfw_pair_file(path: str | Path) -> bool:
    """LFW pair files start with a header of one or two integers ("10 300", "500"); HW2P2 lines are `a b label`."""
    with open(Path(path).expanduser(), encoding="utf-8-sig") as fh:
        first = next((line.split() for line in fh if line.strip()), [])
    return 1 <= len(first) <= 2 and all(f.isdigit() for f in first)


def score_pair_file(
    fm: FaceModel,
    pairs_file: str | Path,
    root: str | Path,
    aligner: FaceAligner | None = None,
    flip: bool = True,
    log: Callable[[str], None] = print,
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, labels) of a labelled pair file: LFW format (pairs.txt, pairsDevTest.txt) or `a b label` lines."""
    from facerec.evaluation.lfw import check_lfw_images, embed_photos, read_lfw_pairs

    if is_lfw_pair_file(pairs_file):
        pairs = read_lfw_pairs(pairs_file)
        paths = check_lfw_images(pairs, root)
        rel = [p.relative_to(Path(root).expanduser()).as_posix() for p in paths]
        a, b, labels = pairs.a, pairs.b, pairs.labels
    else:
        from facerec.data.pairs import check_pair_files, read_pairs

        plist = read_pairs(pairs_file, labelled=True)
        pa, pb = check_pair_files(plist, root, None)
        paths = list(dict.fromkeys(pa + pb))
        rel = [str(p) for p in paths]
        a, b, labels = [str(p) for p in pa], [str(p) for p in pb], np.asarray(plist.labels, np.int64)
    emb, fallback = embed_photos(fm, paths, aligner, flip, log)
    if fallback:
        log(f"no face found in {len(fallback)} photos (e.g. {fallback[0]}); they were used whole")
    index = {r: i for i, r in enumerate(rel)}
    scores = pair_scores(emb[[index[x] for x in a]], emb[[index[y] for y in b]], fm.scoring).numpy()
    return scores.astype(np.float64), np.asarray(labels, np.int64)


def calibrate_scores(scores: np.ndarray, labels: np.ndarray, far: float) -> dict[str, float]:
    """The threshold for `far` and its empirical FAR / TAR on these pairs."""
    thr = threshold_at_far(scores, labels, far)
    neg, pos = scores[labels == 0], scores[labels == 1]
    n_neg = len(neg)
    if far > 0 and n_neg * far < 1:
        note = f"{n_neg} different pairs: the smallest non-zero FAR is {1 / n_neg:.1e}, above the target"
    else:
        note = ""
    return {
        "threshold": thr,
        "far_target": far,
        "far": float((neg >= thr).mean()),
        "tar": float((pos >= thr).mean()),
        "n_pairs": int(len(scores)),
        "n_different": n_neg,
        "note": note,
    }


def calibrate(
    checkpoint: str | Path,
    pairs_file: str | Path,
    root: str | Path,
    far: float,
    out: str | Path | None = None,
    aligner: FaceAligner | None = None,
    flip: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Score the pairs with the checkpoint's model, choose the threshold for `far`, and write it into the
    checkpoint (or into a copy at `out`) as "threshold", "threshold_source" and "threshold_far"."""
    from facerec.inference.model import FaceModel

    if not 0.0 < far < 1.0:
        raise ValueError(f"--far must be between 0 and 1 (e.g. 1e-3), got {far}")
    if not Path(pairs_file).expanduser().is_file():
        raise DataError(f"pair file {pairs_file} does not exist")
    fm = FaceModel.load(checkpoint)
    scores, labels = score_pair_file(fm, pairs_file, root, aligner, flip, log)
    if labels.min() == labels.max():
        raise DataError(f"{pairs_file}: calibration needs both same (1) and different (0) pairs")
    result = calibrate_scores(scores, labels, far)
    state = load_checkpoint(checkpoint)
    state.pop("format", None)
    state.pop("version", None)
    state["threshold"] = result["threshold"]
    state["threshold_source"] = (
        f"calibrate: {Path(pairs_file).name} ({result['n_pairs']} pairs"
        f"{', aligned' if aligner else ''}), FAR <= {far:g}"
    )
    state["threshold_far"] = float(far)
    result["checkpoint"] = str(save_checkpoint(state, out or checkpoint))
    result["scoring"] = fm.scoring
    return result
