"""The from-scratch recipe study (issue #14): train each candidate on facehw at the full budget, with several seeds
for the leaders, and write one table and one plot.

    python bench/recipe_study.py [--candidates cpu_robust,adaface] [--seeds 0,1,2] [--epochs N] [--threads T]
                                 [--out runs/recipe_study] [--no-shift] [--report-only]

Each (candidate, seed) trains in OUT/NAME-sSEED with `facerec train` (one process; a run that ended is kept and
not trained again, one that was interrupted continues with --resume, so the study can be run in parts across
sessions). Its training CPU time (the child's user + system seconds, summed over the parts) goes to
OUT/NAME-sSEED/study.json. Then every finished run's best.pt is measured through the project's scoring path:
val AUC, EER, TAR@FAR=1e-3 (facehw's 3,200 val pairs, flip TTA, the model's scoring), closed-set top-1 on the val
split (the model's default matching), the mean and the worst AUC under bench/shift.py's ten shifts, and inference
images/s (one embedding per image, no flip, `--threads` threads, 512 val images). Candidates are rows: the mean
over their seeds, the spread (max - min) of val AUC, and the first seed's 95% bootstrap interval of its AUC over
the pairs (metrics/bootstrap.py: how far it would move on other pairs; seeds add their own noise). OUT/table.md
and OUT/recipes.png hold the result; OUT/curves.png the val AUC of every run after each epoch (`--curves NAME=RUN`
adds other runs).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _common import REPO, data_root, hardware
from shift import SHIFTS, shift_aucs

from facerec.data.hw2p2 import detect_layout
from facerec.data.pairset import load_pairset
from facerec.evaluation.datasets import evaluate_dataset
from facerec.inference.load import load

# name -> (recipe, overrides). Every candidate keeps the flatten neck and facenet_s or the similar-speed facenet_m.
CANDIDATES: dict[str, tuple[str, list[str]]] = {
    "cpu": ("cpu", []),  # 12 epochs, standard augmentation: the default recipe
    "cpu_robust": ("cpu_robust", []),  # 24 epochs, robust augmentation: models/facehw.pt until 2026-12-02
    "cpu_robust_48": ("cpu_robust", ["train.epochs=48"]),  # the same recipe on twice the schedule
    "cpu_robust_ema": ("cpu_robust", ["train.ema=0.999"]),
    # dropout 0.4 before the flatten neck's 4096 -> 256 layer (insightface's setting for small datasets): the
    # 48-epoch run overfit (train accuracy 97.8%, val AUC falling after epoch 17)
    "cpu_robust_drop": ("cpu_robust", ["model.dropout=0.4"]),
    "adaface_aug": ("cpu_robust", ["data.augment=adaface"]),
    # regularisation for the longer schedule the 48-epoch run could not use: dropout and twice the weight decay
    "cpu_robust_drop_wd": ("cpu_robust", ["model.dropout=0.4", "optim.weight_decay=1e-3", "train.epochs=32"]),
    # more capacity in the late stages (facenet_m: 4.1M parameters with the neck, ~0.9x facenet_s's speed)
    "cpu_robust_m": ("cpu_robust", ["model.backbone=facenet_m", "model.dropout=0.4"]),
    "arcface": (
        "cpu_robust",
        ["loss.name=arcface", "loss.params={scale: 30.0, margin: 0.4, margin_warmup_epochs: 2}"],
    ),
    "adaface": (
        "cpu_robust",
        ["loss.name=adaface", "loss.params={scale: 30.0, margin: 0.4, margin_warmup_epochs: 2}"],
    ),
    "subcenter_arcface": (
        "cpu_robust",
        ["loss.name=subcenter_arcface", "loss.params={scale: 30.0, margin: 0.4, margin_warmup_epochs: 2}"],
    ),
    "curricularface": (
        "cpu_robust",
        ["loss.name=curricularface", "loss.params={scale: 30.0, margin: 0.4, margin_warmup_epochs: 2}"],
    ),
}


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    names = ", ".join(CANDIDATES)
    p.add_argument("--candidates", default=",".join(CANDIDATES), help="comma-separated, from: " + names)
    p.add_argument("--seeds", default="0", help="comma-separated seeds (3 for the leading candidates)")
    p.add_argument("--epochs", type=int, default=0, help="train.epochs for every run (default: the recipe's)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per run and for the measures (0: all)")
    p.add_argument("--data", help="the dataset (default $FACEREC_DATA, ../shared/data/facehw)")
    p.add_argument("--out", default=str(REPO / "runs" / "recipe_study"))
    p.add_argument("--no-shift", action="store_true", help="skip the ten shifts (about 3 minutes per model)")
    p.add_argument("--report-only", action="store_true", help="train nothing; measure the runs that finished")
    p.add_argument("--models", nargs="*", default=[], metavar="NAME=FILE", help="also measure these model files")
    p.add_argument("--curves", nargs="*", default=[], metavar="NAME=RUN", help="more run folders for curves.png")
    return p.parse_args()


def _finished(run: Path) -> bool:
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return False
    return any(json.loads(line).get("event") == "end" for line in lines if line.strip())


def train(name: str, seed: int, args: argparse.Namespace, data: Path) -> Path:
    """Train (or continue) one candidate at one seed; returns its run folder."""
    recipe, overrides = CANDIDATES[name]
    run = Path(args.out) / f"{name}-s{seed}"
    if _finished(run):
        return run
    cmd = [sys.executable, "-m", "facerec", "train", "--data", str(data), "--out", str(run), "--config", recipe]
    if (run / "last.pt").is_file():
        cmd.append("--resume")
    cmd += [*overrides, f"train.seed={seed}"]
    cmd += [f"train.epochs={args.epochs}"] if args.epochs else []
    cmd += [f"train.threads={args.threads}"] if args.threads else []
    run.mkdir(parents=True, exist_ok=True)
    print(f"{name} seed {seed}: {' '.join(cmd[2:])}", flush=True)
    t0 = time.time()
    with open(run / "study.log", "a") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
    cpu = usage.ru_utime + usage.ru_stime
    record = run / "study.json"
    before = json.loads(record.read_text()) if record.is_file() else {"cpu_s": 0.0, "wall_s": 0.0, "parts": 0}
    now = {
        "cpu_s": before["cpu_s"] + cpu,
        "wall_s": before["wall_s"] + time.time() - t0,
        "parts": before["parts"] + 1,
    }
    record.write_text(json.dumps({**now, "command": cmd[2:], "exit": os.waitstatus_to_exitcode(status)}))
    if status != 0:
        raise SystemExit(f"{name} seed {seed} failed; see {run / 'study.log'}")
    return run


def measure(run: Path, data: Path, shift: bool) -> dict:
    """One finished run's row (module notes); `run` may also be a model file (no training CPU time then)."""
    fm = load(run if run.is_file() else run / "best.pt")
    layout = detect_layout(data)
    pairs = load_pairset(layout.pairs_val, layout.root, layout.verification, fm.image_size)
    m = evaluate_dataset(fm, data, log=lambda _: None, intervals=1000)
    row = {"auc": m["auc"], "eer": m["eer"], "tar3": m["tar@far=1e-3"], "top1": m["accuracy"]}
    row["auc_ci"] = m["auc_ci"]  # 95% bootstrap interval over the pairs (metrics/bootstrap.py)
    if shift:
        names = [n for n in SHIFTS if n != "clean"]
        aucs = shift_aucs(fm, pairs.images, pairs.idx_a, pairs.idx_b, pairs.labels, names)
        worst = min(aucs, key=aucs.get)
        row.update(shift_mean=float(np.mean(list(aucs.values()))), shift_worst=aucs[worst], worst=worst)
        row["low_res"] = aucs["low_res"]
    images = pairs.images[:512]
    fm.embed(images[:16], flip=False)
    t0 = time.perf_counter()
    fm.embed(images, flip=False)
    row["images_per_s"] = len(images) / (time.perf_counter() - t0)
    record = run / "study.json"
    if record.is_file():
        row["cpu_h"] = json.loads(record.read_text())["cpu_s"] / 3600
    row["epochs"] = fm.config.train.epochs
    return row


def _mean(rows: list[dict], key: str) -> float:
    values = [r[key] for r in rows if key in r]
    return float(np.mean(values)) if values else float("nan")


def report(results: dict[str, list[dict]], out: Path, hw: str) -> str:
    lines = [
        f"{hw}; {time.strftime('%Y-%m-%d')}",
        "",
        "| candidate | seeds | epochs | val AUC (spread) | AUC 95% interval (first seed) | EER | TAR@FAR=1e-3 "
        "| top-1 | mean AUC under shift | worst shift | low_res | training CPU-h | inference images/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for name, rows in sorted(results.items(), key=lambda kv: -_mean(kv[1], "auc")):
        aucs = [r["auc"] for r in rows]
        worst = ", ".join(sorted({r["worst"] for r in rows if "worst" in r})) or "–"
        ci = rows[0].get("auc_ci")
        interval = f"{ci[0]:.4f}-{ci[1]:.4f}" if ci else "–"
        lines.append(
            f"| {name} | {len(rows)} | {rows[0]['epochs']} | {np.mean(aucs):.4f} ({max(aucs) - min(aucs):.4f}) "
            f"| {interval} | {_mean(rows, 'eer'):.4f} | {_mean(rows, 'tar3'):.3f} | {_mean(rows, 'top1'):.1%} "
            f"| {_mean(rows, 'shift_mean'):.4f} | {worst} {_mean(rows, 'shift_worst'):.4f} "
            f"| {_mean(rows, 'low_res'):.4f} "
            f"| {_mean(rows, 'cpu_h'):.2f} | {_mean(rows, 'images_per_s'):.0f} |".replace("nan", "–")
        )
    text = "\n".join(lines)
    (out / "table.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    _plot(results, out / "recipes.png")
    return text


def _plot(results: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, rows in results.items():
        x, y = [r["cpu_h"] for r in rows if "cpu_h" in r], [r["auc"] for r in rows if "cpu_h" in r]
        if x:
            ax.scatter(x, y, label=name)
    ax.set_xlabel("training CPU-hours (2-core machine: about half that in wall-clock hours)")
    ax.set_ylabel("facehw val AUC")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _curves(runs: dict[str, Path], path: Path) -> None:
    """OUT/curves.png: val AUC after each epoch of each run (its metrics.jsonl)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, run in runs.items():
        lines = (run / "metrics.jsonl").read_text().splitlines()
        epochs = [json.loads(x) for x in lines if '"event": "epoch"' in x]
        points = [(e["epoch"], e["val_auc"]) for e in epochs if e.get("val_auc") is not None]
        ax.plot(*zip(*points), marker=".", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("facehw val AUC")
    ax.set_ylim(0.9, None)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    args = _args()
    names = [n for n in args.candidates.split(",") if n]
    unknown = sorted(set(names) - set(CANDIDATES))
    if unknown:
        raise SystemExit(f"unknown candidates {unknown}; choose from {list(CANDIDATES)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    data, out = data_root(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        for name in names:
            for seed in seeds:
                train(name, seed, args, data)
    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict[str, list[dict]] = {}
    for name in names:
        for seed in seeds:
            run = out / f"{name}-s{seed}"
            if _finished(run):
                results.setdefault(name, []).append(measure(run, data, not args.no_shift))
                print(f"{name} seed {seed}: {json.dumps(results[name][-1])}", flush=True)
    for item in args.models:
        name, _, path = item.partition("=")
        results[name] = [measure(Path(path), data, not args.no_shift)]
        print(f"{name}: {json.dumps(results[name][-1])}", flush=True)
    print(report(results, out, hardware(torch.device("cpu"))))
    runs = {f"{n} seed {seed}": out / f"{n}-s{seed}" for n in names for seed in seeds}
    runs = {k: v for k, v in runs.items() if _finished(v)}
    runs.update((item.partition("=")[0], Path(item.partition("=")[2])) for item in args.curves)
    if runs:
        _curves(runs, out / "curves.png")


if __name__ == "__main__":
    main()
