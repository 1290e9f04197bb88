"""Closed-set matching: top-1 / top-5 on a val split by each way of matching a face to a training identity.

Three methods (inference/matching.py), side by side on the same flip-TTA embeddings of one model:

    centres   the loss's class-centre logits (what the model file always holds)
    mean      cosine to each identity's mean training embedding (C x D floats in the file)
    knn:K     similarity-weighted vote of the K training images nearest by cosine (M x D fp16 in the file)

Each row gives the accuracy on the val images (default: facehw val, 998 images of 735 training identities), the
size of the model file holding what the method needs (written with export_inference, as `facerec export
--train-data [--train-embeddings]` does), and the cost of the matching step alone (the embedding is the same for
all): CPU ms on one thread (process time, which other jobs on the machine distort far less than wall time) for
the whole val set as one batch, and per query when queries come one at a time (a service).

    python bench/closed_set.py [--checkpoint models/facehw.pt] [--data DIR] [--ks 1,5,10,20] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import REPO, data_root, hardware

from facerec.data.hw2p2 import detect_layout
from facerec.data.memory import load_identity_folders
from facerec.engine.checkpoint import INFERENCE_KEYS, load_checkpoint, save_checkpoint
from facerec.engine.evaluate import evaluate_closed_set
from facerec.evaluation.datasets import training_images
from facerec.inference.matching import Matcher, train_set_state
from facerec.inference.model import load_model_file

MATCH_KEYS = ("prototypes", "train_embeddings", "train_labels")


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=str(REPO / "models" / "facehw.pt"), help="a .pt model file")
    p.add_argument("--data", help="the dataset it trained on (default ../shared/data/facehw)")
    p.add_argument("--ks", default="1,5,10,20", help="K values of the kNN rows (default 1,5,10,20)")
    p.add_argument("--repeat", type=int, default=3, help="timing repeats; the median is reported (default 3)")
    p.add_argument("--singles", type=int, default=50, help="queries timed one at a time (default 50)")
    p.add_argument("--threads", type=int, default=1, help="torch threads while timing the matching (default 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    return p.parse_args()


def _file_sizes(checkpoint: str, entries: dict[str, torch.Tensor]) -> dict[str, int]:
    """Bytes of the model file with nothing for matching (centres), + class means (mean), + embeddings (knn)."""
    state = load_checkpoint(checkpoint)
    base = {k: state[k] for k in INFERENCE_KEYS if k in state and k not in MATCH_KEYS}
    means = {"prototypes": entries["prototypes"]}
    variants = {"centres": base, "mean": {**base, **means}, "knn": {**base, **entries}}
    sizes = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, content in variants.items():
            sizes[name] = save_checkpoint(content, Path(tmp) / f"{name}.pt").stat().st_size
    return sizes


def _median_cpu_s(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return statistics.median(times)


def _row(matcher: Matcher, method: str, queries: torch.Tensor, labels: torch.Tensor, args) -> dict:
    acc = evaluate_closed_set(matcher.scores(queries, method), labels)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    batch = _median_cpu_s(lambda: matcher.scores(queries, method), args.repeat)
    singles = queries[: args.singles]
    one = _median_cpu_s(lambda: [matcher.scores(q[None], method) for q in singles], args.repeat) / len(singles)
    torch.set_num_threads(threads)
    return {
        "match": method,
        "top1": acc["acc"],
        "top5": acc["top5"],
        "batch_cpu_ms": 1e3 * batch,
        "query_cpu_ms": 1e3 * one,
    }


def main() -> None:
    args = _args()
    root = data_root(args.data)
    log = (lambda m: None) if args.json else print
    fm = load_model_file(args.checkpoint)
    train = training_images(fm, root, log)
    val = load_identity_folders(detect_layout(root).val, fm.image_size, fm.classes, cache=False, log=log)
    t0 = time.perf_counter()
    e_train = fm.embed(train.images)
    embed_ms = 1e3 * (time.perf_counter() - t0) / len(train)
    e_val = fm.embed(val.images)
    entries = train_set_state(e_train, train.labels, len(fm.classes), keep_embeddings=True)
    stored = (entries["train_embeddings"].float(), entries["train_labels"])  # fp16 in the file, as shipped
    matcher = Matcher(fm.loss_fn, entries["prototypes"], stored, len(fm.classes))
    methods = ["centres", "mean"] + [f"knn:{k}" for k in args.ks.split(",")]
    rows = [_row(matcher, m, e_val, val.labels, args) for m in methods]
    sizes = _file_sizes(args.checkpoint, entries)
    for r in rows:
        r["file_bytes"] = sizes[r["match"].split(":")[0]]
    result = {
        "checkpoint": args.checkpoint,
        "data": str(root),
        "train_images": len(train),
        "val_images": len(val),
        "classes": len(fm.classes),
        "embed_ms_per_image": embed_ms,
        "hardware": hardware(torch.device("cpu")),
        "rows": rows,
    }
    if args.json:
        print(json.dumps(result))
        return
    counts = f"{len(val)} val images, {len(train)} training images, {len(fm.classes)} identities"
    print(f"\n{args.checkpoint} on {root}: {counts}")
    print(f"{result['hardware']}; embedding (flip TTA) {embed_ms:.2f} ms per image (wall)\n")
    print(f"| match | top-1 | top-5 | model file | CPU, {args.threads} thread: val as one batch | one query |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| `{r['match']}` | {100 * r['top1']:.1f}% | {100 * r['top5']:.1f}% | {r['file_bytes'] / 1e6:.2f} MB "
            f"| {r['batch_cpu_ms']:.1f} ms | {r['query_cpu_ms']:.3f} ms |"
        )


if __name__ == "__main__":
    main()
