"""Time to reach val AUC 0.90 and 0.95 (verification pairs), read from the metrics.jsonl of training runs.

The time is the sum of `epoch_time_s` (training + validation of each epoch) up to the first epoch whose val_auc
reaches the target, so resumed runs add up correctly; decoding the dataset before the first epoch is not counted.
A target that no epoch reached is reported as "not reached", with the best AUC seen.

    python bench/time_to_auc.py RUN [RUN ...]                      # existing run folders
    python bench/time_to_auc.py --train OUT [--config cpu] [key=value ...]   # train on $FACEREC_DATA, then report
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from _common import data_root

from facerec.engine.progress import format_duration, read_metrics

TARGETS = (0.90, 0.95)


def time_to(records: list[dict[str, Any]], target: float) -> tuple[int, float] | None:
    """(epoch, seconds) of the first epoch with val_auc >= target, or None."""
    seconds = 0.0
    for r in records:
        if r.get("event") != "epoch":
            continue
        seconds += float(r.get("epoch_time_s", 0.0))
        if r.get("val_auc") is not None and r["val_auc"] >= target:
            return int(r["epoch"]), seconds
    return None


def describe(run: Path) -> dict[float, float | None]:
    records = read_metrics(run)
    start = next((r for r in records if r.get("event") == "start"), {})
    epochs = [r for r in records if r.get("event") == "epoch"]
    aucs = [(r["val_auc"], r["epoch"]) for r in epochs if r.get("val_auc") is not None]
    done = "finished" if any(r.get("event") == "end" for r in records) else "unfinished"
    print(
        f"{run}: {len(epochs)} epochs ({done}) on {start.get('device', '?')}, world size "
        f"{start.get('world_size', 1)}, {start.get('num_train_images', '?')} training images"
    )
    out: dict[float, float | None] = {}
    for target in TARGETS:
        hit = time_to(records, target)
        out[target] = hit[1] if hit else None
        if hit:
            print(f"  val AUC {target:.2f}: epoch {hit[0]}, {format_duration(hit[1])} ({hit[1]:.0f}s)")
        elif aucs:
            best, at = max(aucs)
            print(f"  val AUC {target:.2f}: not reached (best {best:.4f} at epoch {at})")
        else:
            print(f"  val AUC {target:.2f}: not reached (no val_auc logged: no labelled pair file?)")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", help="run folders (with metrics.jsonl); with --train: key=value overrides")
    p.add_argument("--train", metavar="OUT", help="train a new run into OUT first")
    p.add_argument("--config", help="recipe for --train (e.g. cpu)")
    p.add_argument("--data", help="dataset for --train (default $FACEREC_DATA, ../shared/data/facehw)")
    args = p.parse_args()
    runs = [Path(r) for r in args.runs]
    if args.train:
        from facerec.cli.main import main as facerec

        cmd = ["train", "--data", str(data_root(args.data)), "--out", args.train, *args.runs]
        if facerec(cmd + (["--config", args.config] if args.config else [])) != 0:
            return 1
        runs = [Path(args.train)]
    if not runs:
        p.error("give run folders, or --train OUT")
    times = [describe(r) for r in runs]
    if len(times) >= 2:
        a, b = times[0][TARGETS[0]], times[1][TARGETS[0]]
        ratio = f"{a / b:.2f}x" if a and b else "n/a (not reached by both)"
        print(f"ratio time to AUC {TARGETS[0]:.2f}, {runs[0].name} / {runs[1].name}: {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
