"""Models side by side on lfw_tiny, a second face source (real LFW photos, not facehw's crops): every row of
models/README.md's lfw_tiny block in one run.

    python bench/lfw_tiny.py --checkpoints models/facehw.pt models/facehw_dlib_student.pt [--lfw DIR] [--threads T]

Rows, for each model (its own scoring, flip TTA; "aligned" = MTCNN detection and alignment to the model's input,
"raw" = the whole 250x250 photo resized):
* classify, every pair: `benchmark_folder` on lfw_tiny/classify (10 people, 100 photos, 4,950 pairs), aligned:
  pair AUC and leave-one-out rank-1;
* verify: `benchmark_lfw` on lfw_tiny/verify with verify_pairs.txt (100 pairs), aligned and raw: AUC and
  best-threshold accuracy (tuned on the same 100 pairs, so optimistic);
* gallery identification, aligned and raw: photos 1-5 of each classify person enrolled in a facerec gallery,
  photos 6-10 identified (50 queries): top-1, and top-5 (the person among the 5 best matches).
lfw_tiny is LFW: it measures, it never trains or tunes anything.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import REPO, hardware

from facerec.evaluation.folder import benchmark_folder
from facerec.evaluation.lfw import benchmark_lfw
from facerec.inference.load import load
from facerec.photos.align import FaceAligner, load_faces
from facerec.photos.gallery import identify, open_for_model


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoints", nargs="+", required=True, help="model files (.pt, ensemble .pt, .onnx)")
    default = os.environ.get("FACEREC_LFW_TINY", str(REPO.parent / "shared" / "data" / "lfw_tiny"))
    p.add_argument("--lfw", default=default, help="the lfw_tiny folder (default $FACEREC_LFW_TINY, ../shared)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all)")
    return p.parse_args()


def _quiet(_msg: str) -> None:
    pass


def gallery_identification(fm: Any, root: Path, aligner: FaceAligner | None) -> tuple[float, float]:
    """(top-1, top-5) of photos 6-10 of each person against a gallery of their photos 1-5."""
    with tempfile.TemporaryDirectory() as tmp:
        g = open_for_model(Path(tmp) / "g", fm, create=True)
        queries, truth = [], []
        for person in sorted(p.name for p in root.iterdir() if p.is_dir()):
            photos = sorted((root / person).glob("*.jpg"))
            g.add(person, fm.embed(load_faces(photos[:5], aligner)))
            queries += photos[5:10]
            truth += [person] * len(photos[5:10])
        found = identify(g, fm.embed(load_faces(queries, aligner)), k=5)
    top1 = np.mean([r["name"] == t for r, t in zip(found, truth)])
    top5 = np.mean([t in {name for name, _ in r["matches"]} for r, t in zip(found, truth)])
    return float(top1), float(top5)


def measure(path: str, lfw: Path) -> dict[str, str]:
    fm = load(path)
    aligner = FaceAligner(size=fm.image_size)
    rows: dict[str, str] = {}
    r = benchmark_folder(fm, lfw / "classify", aligner, log=_quiet)
    key = "classify, every pair (4,950), aligned: AUC / leave-one-out rank-1"
    rows[key] = f"{r['auc']:.3f} / {r['rank1']:.2f}"
    for name, al in (("aligned", aligner), ("raw photos resized", None)):
        v = benchmark_lfw(fm, lfw / "verify_pairs.txt", lfw / "verify", al, log=_quiet)
        rows[f"verify (100 pairs), {name}: AUC / accuracy (optimistic)"] = f"{v['auc']:.3f} / {v['accuracy']:.2f}"
    for name, al in (("aligned", aligner), ("raw", None)):
        t1, t5 = gallery_identification(fm, lfw / "classify", al)
        rows[f"gallery identification, {name}: top-1 / top-5"] = f"{t1:.2f} / {t5:.2f}"
    return rows


def main() -> None:
    args = _args()
    # the raw rows resize whole photos on purpose
    warnings.filterwarnings("ignore", message=".*was trained on .* images and was given")
    if args.threads:
        torch.set_num_threads(args.threads)
    lfw = Path(args.lfw)
    if not (lfw / "classify").is_dir() or not (lfw / "verify_pairs.txt").is_file():
        raise SystemExit(f"{lfw} is not lfw_tiny (classify/, verify/, verify_pairs.txt); give --lfw")
    print(f"# lfw_tiny, {hardware(torch.device('cpu'))}")
    results = {Path(c).name: measure(c, lfw) for c in args.checkpoints}
    names = list(results)
    print("| lfw_tiny | " + " | ".join(f"`{n}`" for n in names) + " |")
    print("|---|" + "---:|" * len(names))
    for row in next(iter(results.values())):
        print(f"| {row} | " + " | ".join(results[n][row] for n in names) + " |")


if __name__ == "__main__":
    main()
