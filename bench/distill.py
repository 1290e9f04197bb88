"""Distillation side by side: students, their teacher and the from-scratch model in one run (issue #18).

For every facerec model file (the from-scratch model, the students, and the teacher when it is a model file):
val ROC AUC, EER, TAR@FAR=1e-3 on the dataset's val pairs (identities unseen in training), closed-set top-1 on the
val split, the mean AUC under bench/shift.py's ten shifts (`--shift`), and embeddings per CPU-second. The dlib
teacher is slow (about 5 images per CPU-second), so it is scored on the first `--teacher-pairs` val pairs only,
and every model's AUC on that same subset is printed beside it. Under the table, each student's AUC minus the
from-scratch model's (and student 1's) on the same pairs, with a 95% paired-bootstrap interval. Everything goes
through the project's one scoring path (`FaceModel.embed` with flip TTA and the model's own scoring; dlib: its
descriptor, cosine).

    python bench/distill.py --scratch models/facehw.pt --students models/facehw_dlib_student.pt \\
        --teacher dlib [--teacher-pairs 400] [--shift] [--speed-images 256] [--data DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from _common import data_root, hardware
from shift import SHIFTS, shift_aucs

from facerec.config import DistillConfig
from facerec.data.hw2p2 import detect_layout
from facerec.data.pairset import PairSet, load_pairset
from facerec.distillation.teachers import make_teacher
from facerec.engine.evaluate import evaluate_pairs
from facerec.evaluation.datasets import evaluate_split
from facerec.inference.load import load
from facerec.metrics.bootstrap import paired_difference
from facerec.metrics.scoring import Scoring


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scratch", required=True, help="the from-scratch model of the students' network")
    p.add_argument("--students", nargs="+", required=True, help="distilled model files")
    p.add_argument("--teacher", required=True, help="dlib, or the teacher's model file")
    p.add_argument("--teacher-pairs", type=int, default=400, help="val pairs the dlib teacher scores (first N)")
    p.add_argument("--shift", action="store_true", help="also the mean AUC under bench/shift.py's ten shifts")
    p.add_argument("--speed-images", type=int, default=256, help="images timed for embeddings per CPU-second")
    p.add_argument("--data", help="dataset with val split and val pairs (default $FACEREC_DATA, facehw)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="also write the rows here")
    return p.parse_args()


def _subset(ps: PairSet, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The images the first n pairs use, and those pairs re-indexed into them."""
    a, b, y = ps.idx_a[:n], ps.idx_b[:n], ps.labels[:n]
    used = torch.unique(torch.cat([a, b]))
    remap = torch.full((ps.images.shape[0],), -1, dtype=torch.long)
    remap[used] = torch.arange(used.numel())
    return ps.images[used], remap[a], remap[b], y


def _per_cpu_second(embed, images: torch.Tensor) -> float:
    """Embeddings per CPU-second (all threads' time: time.process_time), one embedding per image, no flip."""
    embed(images[:8])  # warm-up
    t0 = time.process_time()
    embed(images)
    return len(images) / max(time.process_time() - t0, 1e-9)


def _shift_mean(fm, images: torch.Tensor, a: torch.Tensor, b: torch.Tensor, y: torch.Tensor) -> float:
    """bench/shift.py's protocol: reference side clean, probe side shifted; the mean AUC over the ten shifts."""
    return float(np.mean(list(shift_aucs(fm, images, a, b, y, [n for n in SHIFTS if n != "clean"]).values())))


def _model_row(name: str, path: str, layout, ps: PairSet, n_subset: int, args: argparse.Namespace) -> dict:
    fm = load(path)
    e = fm.embed(ps.images)
    scoring = Scoring.of(fm.scoring)
    scores = scoring.indexed_pairs(e, ps.idx_a, ps.idx_b)
    m = evaluate_pairs(scores, ps.labels)
    n = n_subset  # the teacher's pairs: the first n, scored from the same embeddings
    sub = evaluate_pairs(scoring.indexed_pairs(e, ps.idx_a[:n], ps.idx_b[:n]), ps.labels[:n])
    row = {"model": name, "file": path, "auc": m["auc"], "eer": m["eer"], "tar@far=1e-3": m["tar@far=1e-3"]}
    row["auc_subset"] = sub["auc"]
    if layout.val is not None and fm.classes:
        row["top1"] = evaluate_split(fm, layout.val, log=lambda _: None)["accuracy"]
    if args.shift:
        row["shift_mean"] = _shift_mean(fm, ps.images, ps.idx_a, ps.idx_b, ps.labels)
    row["per_cpu_s"] = _per_cpu_second(lambda x: fm.embed(x, flip=False), ps.images[: args.speed_images])
    row["scores"] = scores.numpy()  # for the paired comparisons; not written to --json
    return row


def _paired(rows: list[dict], labels: np.ndarray) -> list[str]:
    """Each student's AUC against the from-scratch model's and (with several students) student 1's, on the same
    pairs: the difference and its 95% paired-bootstrap interval (metrics/bootstrap.py)."""
    models = [r for r in rows if "scores" in r]
    bases = [models[0]] + ([models[1]] if len(models) > 2 and models[1]["model"].startswith("student") else [])
    lines = []
    for base in bases:
        for r in models[1:]:
            if r is base:
                continue
            d = paired_difference(base["scores"], r["scores"], labels)
            lines.append(
                f"{r['model']} - {base['model']}: AUC {d['delta']:+.4f} (95% interval {d['low']:+.4f} to "
                f"{d['high']:+.4f}; not ahead in {d['p_not_ahead']:.1%} of 1,000 paired resamples of the pairs)"
            )
    return lines


def _dlib_row(subset, args: argparse.Namespace) -> dict:
    teacher = make_teacher("dlib", DistillConfig(teacher="dlib"))
    images, a, b, y = subset
    t0 = time.process_time()
    e = torch.from_numpy(teacher.embed(images))
    rate = len(images) / max(time.process_time() - t0, 1e-9)
    sub = evaluate_pairs(Scoring.of("cosine").indexed_pairs(e, a, b), y)
    return {"model": "teacher: dlib", "file": "dlib", "auc_subset": sub["auc"], "per_cpu_s": rate}


def _table(rows: list[dict], n_subset: int, n_pairs: int) -> str:
    cols = [
        ("auc", f"val AUC ({n_pairs} pairs)", "{:.4f}"),
        ("auc_subset", f"AUC, first {n_subset} pairs", "{:.4f}"),
        ("eer", "EER", "{:.4f}"),
        ("tar@far=1e-3", "TAR@FAR=1e-3", "{:.3f}"),
        ("top1", "top-1", "{:.1%}"),
        ("shift_mean", "mean AUC under shift", "{:.4f}"),
        ("per_cpu_s", "embeddings / CPU-s", "{:.1f}"),
    ]
    cols = [c for c in cols if any(c[0] in r for r in rows)]
    lines = ["| model | " + " | ".join(c[1] for c in cols) + " |", "|---|" + "---:|" * len(cols)]
    for r in rows:
        cells = [c[2].format(r[c[0]]) if c[0] in r else "–" for c in cols]
        lines.append(f"| {r['model']} (`{r['file']}`) | " + " | ".join(cells) + " |")
    base = rows[0]
    for r in rows[1:]:
        if "auc" in r:
            lines.append(
                f"{r['model']}: 1 - AUC {(1 - base['auc']) / max(1 - r['auc'], 1e-9):.2f}x lower than the "
                f"from-scratch model's; {r['per_cpu_s'] / base['per_cpu_s']:.2f}x its embeddings per CPU-second"
            )
    return "\n".join(lines)


def main() -> None:
    args = _args()
    torch.set_num_threads(args.threads)
    layout = detect_layout(data_root(args.data))
    if layout.pairs_val is None:
        raise SystemExit(f"{layout.root} has no labelled val pair file (verification_pairs_val.txt)")
    scratch = load(args.scratch)
    ps = load_pairset(layout.pairs_val, layout.root, layout.verification, scratch.image_size)
    n_subset = min(args.teacher_pairs, len(ps.labels))
    print(hardware(torch.device("cpu")))
    print(f"{len(ps.labels)} val pairs from {layout.pairs_val}; the teacher subset: the first {n_subset}")
    t0 = time.perf_counter()
    named = [("from scratch", args.scratch)] + [(f"student {i + 1}", s) for i, s in enumerate(args.students)]
    if args.teacher != "dlib":
        named.append(("teacher", args.teacher))
    rows = []
    for name, path in named:
        rows.append(_model_row(name, path, layout, ps, n_subset, args))
        print(
            f"  {name}: {json.dumps({k: v for k, v in rows[-1].items() if k not in ('file', 'scores')})}",
            flush=True,
        )
    if args.teacher == "dlib":
        rows.append(_dlib_row(_subset(ps, n_subset), args))
        print(f"  dlib: {json.dumps(rows[-1])}", flush=True)
    print(f"({time.perf_counter() - t0:.0f} s)\n")
    print(_table(rows, n_subset, len(ps.labels)))
    dlib = next((r for r in rows if r["file"] == "dlib"), None)
    if dlib is not None:
        for r in rows[1:-1]:
            print(f"{r['model']}: {r['per_cpu_s'] / dlib['per_cpu_s']:.1f}x dlib's embeddings per CPU-second")
    print("\n".join(_paired(rows, ps.labels.numpy())))
    if args.json:
        Path(args.json).write_text(
            json.dumps([{k: v for k, v in r.items() if k != "scores"} for r in rows], indent=1)
        )


if __name__ == "__main__":
    main()
