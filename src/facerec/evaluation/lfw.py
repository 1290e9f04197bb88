"""The LFW verification benchmark: the official pair files, the 10-fold accuracy protocol and ROC AUC.

Pair files (Huang et al. 2007, "Labeled Faces in the Wild", UMass TR 07-49):
  * pairs.txt (View 2): a header "FOLDS N" (10 300), then per fold N matched lines `name n1 n2` followed by
    N mismatched lines `name1 n1 name2 n2`;
  * pairsDevTest.txt / pairsDevTrain.txt (View 1): a header "N", then N matched and N mismatched lines; one fold.
Image `name n` is LFW_DIR/name/name_000n.jpg.

Protocol (View 2): for each fold, the threshold that maximises accuracy on the other folds is applied to the
held-out fold; the report is the mean and standard deviation (numpy's, ddof=0) of the fold accuracies. With a
single fold there is nothing to hold out: the best threshold on the fold itself is used and the accuracy is
optimistic, which the report says. AUC, EER and TAR@FAR are over all pairs (metrics.verification).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from facerec.data.folder import DataError
from facerec.metrics.verification import verification_report

if TYPE_CHECKING:
    from facerec.inference.model import FaceModel
    from facerec.photos.align import FaceAligner


@dataclass
class LfwPairs:
    """Pairs in file order: image paths relative to the LFW root, labels (1 = same), fold of each pair."""

    a: list[str]
    b: list[str]
    labels: np.ndarray
    folds: np.ndarray
    n_folds: int
    source: Path
    line_numbers: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.a)


def lfw_image(name: str, number: str | int, path: Path, line: int) -> str:
    try:
        n = int(number)
    except ValueError:
        raise DataError(f"{path}:{line}: image number {number!r} is not an integer") from None
    return f"{name}/{name}_{n:04d}.jpg"


def _header(fields: list[str], path: Path) -> tuple[int, int]:
    try:
        values = [int(f) for f in fields]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values) < 1:
        raise DataError(
            f"{path}:1: expected the header 'FOLDS N' (pairs.txt, e.g. '10 300') or 'N' "
            f"(pairsDevTest.txt, e.g. '500'), got {' '.join(fields)!r}"
        )
    return (1, values[0]) if len(values) == 1 else (values[0], values[1])


def read_lfw_pairs(path: str | Path) -> LfwPairs:
    """Parse an LFW pair file (either header form); a bad line raises DataError with its line number."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"LFW pair file {path} does not exist")
    lines = [(i, line.split()) for i, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1)]
    lines = [(i, f) for i, f in lines if f]
    if not lines:
        raise DataError(f"{path} is empty; expected an LFW pair file (pairs.txt or pairsDevTest.txt)")
    n_folds, n = _header(lines[0][1], path)
    body = lines[1:]
    if len(body) != 2 * n * n_folds:
        raise DataError(
            f"{path}: the header promises {n_folds} fold(s) x ({n} matched + {n} mismatched) = "
            f"{2 * n * n_folds} pair lines, but the file has {len(body)}"
        )
    out = LfwPairs([], [], np.zeros(len(body), np.int64), np.zeros(len(body), np.int64), n_folds, path)
    for k, (line, fields) in enumerate(body):
        fold, same = k // (2 * n), (k % (2 * n)) < n
        want = 3 if same else 4
        if len(fields) != want:
            kind = "matched `name n1 n2`" if same else "mismatched `name1 n1 name2 n2`"
            part = "first" if same else "second"
            raise DataError(
                f"{path}:{line}: expected a {kind} line (fold {fold + 1}, {part} {n} lines of the "
                f"fold), got {len(fields)} fields: {' '.join(fields)!r}"
            )
        a = lfw_image(fields[0], fields[1], path, line)
        b = lfw_image(fields[0], fields[2], path, line) if same else lfw_image(fields[2], fields[3], path, line)
        out.a.append(a)
        out.b.append(b)
        out.labels[k], out.folds[k] = int(same), fold
        out.line_numbers.append(line)
    return out


def check_lfw_images(pairs: LfwPairs, root: str | Path) -> list[Path]:
    """The unique image paths of the pairs under `root`, in first-use order; DataError on the first missing one."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"LFW folder {root} is not a directory; pass the folder holding <name>/<name>_0001.jpg")
    unique = list(dict.fromkeys(pairs.a + pairs.b))
    missing = [rel for rel in unique if not (root / rel).is_file()]
    if missing:
        first = next(i for i in range(len(pairs)) if pairs.a[i] in missing or pairs.b[i] in missing)
        more = f" ({len(missing) - 1} other images are missing too)" if len(missing) > 1 else ""
        raise DataError(
            f"{pairs.source}:{pairs.line_numbers[first]}: image {root / missing[0]} not found{more}; "
            "--root must be the LFW folder of <name>/<name>_NNNN.jpg"
        )
    return [root / rel for rel in unique]


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
        accs.append(float(((s[test] >= thr) == (y[test] == 1)).mean()))
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


def embed_photos(
    fm: FaceModel,
    paths: list[Path],
    aligner: FaceAligner | None,
    flip: bool = True,
    log: Callable[[str], None] = print,
) -> tuple[Any, list[Path]]:
    """(N, D) embeddings of photos, aligned first when `aligner` is given. A photo without a detected face is
    embedded as the whole image resized (LFW's photos are centred on a face); those paths are returned."""
    if aligner is None:
        return fm.embed(paths, flip=flip), []
    from facerec.photos.align import open_photo, pick_face

    crops, fallback = [], []
    for i, p in enumerate(paths, 1):
        photo = open_photo(p)
        faces = aligner.detect(photo)
        crops.append(aligner.align_face(photo, pick_face(faces)) if faces else photo)
        if not faces:
            fallback.append(p)
        if i % 500 == 0:
            log(f"aligned {i}/{len(paths)} photos")
    return fm.embed(crops, flip=flip), fallback


def benchmark_lfw(
    fm: FaceModel,
    pairs_file: str | Path,
    root: str | Path,
    aligner: FaceAligner | None = None,
    flip: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Score every pair of an LFW pair file with `fm` (its own scoring) and report the LFW protocol."""
    from facerec.metrics.verification import pair_scores

    pairs = read_lfw_pairs(pairs_file)
    paths = check_lfw_images(pairs, root)
    emb, fallback = embed_photos(fm, paths, aligner, flip, log)
    index = {p.relative_to(Path(root).expanduser()).as_posix(): i for i, p in enumerate(paths)}
    ia, ib = [index[a] for a in pairs.a], [index[b] for b in pairs.b]
    scores = pair_scores(emb[ia], emb[ib], fm.scoring).numpy()
    report = lfw_report(scores, pairs.labels, pairs.folds)
    report.update(
        scoring=fm.scoring,
        n_images=len(paths),
        aligned=aligner is not None,
        no_face=[p.as_posix() for p in fallback],
    )
    return report
