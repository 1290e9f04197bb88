"""Face clustering quality on labelled identity folders: linkages side by side over a range of thresholds.

Each folder's photos are embedded once (photos.embed.embed_files, flip TTA; `--align` detects and aligns
raw photos first) and clustered by photos.cluster.cluster_embeddings with `average`, `complete` and `single`
linkage at the model's own verification threshold and at each of `--thresholds`. Scores against the identity
folders: pair precision / recall / F1 and the adjusted Rand index (facerec.photos.cluster.clustering_scores).

    python bench/cluster.py [--checkpoint models/facehw.pt] [--folder DIR[:align]]... [--thresholds 0.3,0.4,...]

Default folders: ../shared/data/lfw_tiny/classify (raw LFW photos, aligned) and facehw's val_data (64x64 crops).
The last line: pair F1 of average linkage over single linkage (connected components of the "same person"
graph), at the model's threshold, geometric mean over the folders.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
from _common import REPO, cpu_model, data_root

import facerec
from facerec.photos.cluster import LINKAGES, cluster_embeddings, clustering_scores
from facerec.photos.embed import embed_files


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(REPO / "models" / "facehw.pt"))
    p.add_argument(
        "--folder",
        action="append",
        help="identity-folder root; append ':align' for raw photos (default: lfw_tiny, facehw val)",
    )
    p.add_argument("--thresholds", default="0.3,0.35,0.4,0.45,0.5,0.6,0.7")
    args = p.parse_args()
    shared = REPO.parent / "shared" / "data"
    folders = args.folder or [
        f"{shared / 'lfw_tiny' / 'classify'}:align",
        str(data_root(None) / "classification_data" / "val_data"),
    ]
    fm = facerec.load(args.checkpoint)
    print(f"model {args.checkpoint} ({fm.scoring} scoring, threshold {fm.threshold:.4f}); CPU: {cpu_model()}")
    thresholds = [float(fm.threshold)] + [float(t) for t in args.thresholds.split(",")]
    ratios = []
    for spec in folders:
        root = spec.removesuffix(":align")
        aligner = None
        if spec.endswith(":align"):
            from facerec.photos.align import FaceAligner

            aligner = FaceAligner()
        t0 = time.perf_counter()
        es = embed_files(fm, [root], aligner, log=lambda m: None)
        truth = [Path(p).parent.name for p in es.paths]
        print(
            f"\n{root}{' (aligned)' if aligner else ''}: {len(es)} photos of {len(set(truth))} people, "
            f"embedded in {time.perf_counter() - t0:.1f} s"
        )
        print(f"{'threshold':>10} " + " ".join(f"{link + ' F1 / ARI / clusters':>30}" for link in LINKAGES))
        f1_at_model: dict[str, float] = {}
        for i, thr in enumerate(thresholds):
            cells = []
            for link in LINKAGES:
                s = clustering_scores(cluster_embeddings(es.embeddings, es.scoring, thr, link), truth)
                if i == 0:
                    f1_at_model[link] = s["pair_f1"]
                cells.append(f"{s['pair_f1']:.3f} / {s['ari']:.3f} / {s['clusters']:>5}")
            label = f"{thr:.4f}" + ("*" if i == 0 else " ")
            print(f"{label:>10} " + " ".join(f"{c:>30}" for c in cells))
        ratios.append(f1_at_model["average"] / max(f1_at_model["single"], 1e-9))
        print("(* the model's threshold)")
    gmean = math.exp(float(np.mean(np.log(ratios))))
    print(
        f"\npair F1, average / single linkage at the model's threshold (geometric mean over {len(ratios)} "
        f"folders): {gmean:.2f}x"
    )


if __name__ == "__main__":
    main()
