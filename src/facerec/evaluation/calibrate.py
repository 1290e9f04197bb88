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
from facerec.data.pairs import pair_file_format, read_pairs
from facerec.engine.checkpoint import load_checkpoint, save_checkpoint
from facerec.evaluation.lfw import score_photo_pairs
from facerec.inference.load import load
from facerec.inference.sidecar import is_onnx, update_sidecar
from facerec.metrics.scoring import Scoring
from facerec.metrics.verification import threshold_at_far

if TYPE_CHECKING:
    from facerec.inference.model import FaceModel
    from facerec.photos.align import FaceAligner


def is_lfw_pair_file(path: str | Path) -> bool:
    """Whether `read_pairs` reads the file as LFW pairs (a header "10 300" or "500") rather than `a b label`."""
    return pair_file_format(path) == "lfw"


def score_pair_file(
    fm: FaceModel,
    pairs_file: str | Path,
    root: str | Path,
    aligner: FaceAligner | None = None,
    flip: bool = True,
    log: Callable[[str], None] = print,
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, labels) of a labelled pair file: LFW format (pairs.txt, pairsDevTest.txt) or `a b label` lines."""
    pairs = read_pairs(pairs_file, labelled=True)
    scores, _, fallback = score_photo_pairs(fm, pairs, root, aligner, flip, log)
    if fallback:
        log(f"no face found in {len(fallback)} photos (e.g. {fallback[0]}); they were used whole")
    return scores, np.asarray(pairs.labels, np.int64)


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
        "far": float(Scoring.accept(neg, thr).mean()),
        "tar": float(Scoring.accept(pos, thr).mean()),
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
    checkpoint (or into a copy at `out`) as "threshold", "threshold_source" and "threshold_far". An ONNX export
    keeps them in its sidecar and metadata, where OnnxFaceModel reads them (`out`: another .onnx path)."""
    if not 0.0 < far < 1.0:
        raise ValueError(f"--far must be between 0 and 1 (e.g. 1e-3), got {far}")
    if not Path(pairs_file).expanduser().is_file():
        raise DataError(f"pair file {pairs_file} does not exist")
    fm = load(checkpoint)
    scores, labels = score_pair_file(fm, pairs_file, root, aligner, flip, log)
    if labels.min() == labels.max():
        raise DataError(f"{pairs_file}: calibration needs both same (1) and different (0) pairs")
    result = calibrate_scores(scores, labels, far)
    source = f"calibrate: {Path(pairs_file).name} ({result['n_pairs']} pairs{', aligned' if aligner else ''})"
    fields = {"threshold": result["threshold"], "threshold_source": f"{source}, FAR <= {far:g}"}
    result["checkpoint"] = str(store_threshold(checkpoint, {**fields, "threshold_far": float(far)}, out))
    result["scoring"] = fm.scoring
    return result


def store_threshold(checkpoint: str | Path, fields: dict[str, Any], out: str | Path | None = None) -> Path:
    """Write the threshold fields into the model file (or a copy at `out`, of the same kind): a .pt checkpoint's
    entries, or an ONNX export's sidecar and metadata (inference.sidecar.update_sidecar). Returns the file."""
    if is_onnx(checkpoint):
        return update_sidecar(checkpoint, fields, out)
    if out is not None and is_onnx(out):
        raise ValueError(
            f"--out {out}: a calibrated copy of {checkpoint} is a .pt file; calibrate the .pt model, then "
            "`facerec export` it to ONNX"
        )
    state = load_checkpoint(checkpoint)
    state.pop("format", None)
    state.pop("version", None)
    return save_checkpoint({**state, **fields}, out or checkpoint)
