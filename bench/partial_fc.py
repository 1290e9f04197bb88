"""Partial FC (losses/partial_fc.py) at scale, one CPU process: steps/s and peak memory of the loss head alone.

Each configuration (classes x sample_rate) runs in a fresh child process, so that its peak resident memory
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`) is its own. A step is what `facerec train` does to the head: a
synthetic (B, D) batch of embeddings (random, requiring grad, as a backbone's output) with random labels, the
ArcFace loss (s = 64, m = 0.5) through Partial FC, backward, and facerec's optimiser (`build_optimizer`: fused SGD,
momentum 0.9, weight decay 5e-4 on the whole centre matrix, as insightface v2), `zero_grad(set_to_none=True)`.
The centres are built as a run builds them (`build_partial_fc`: the xavier draw of the whole matrix); building is
timed apart. `--warmup` steps run first, untimed. Steps/s is wall-clock; CPU seconds per step count every thread
of the process, which other processes sharing the cores do not inflate.

    nice -n 10 python bench/partial_fc.py [--runs 1000000:0.1,250000:1.0] [--dim 512] [--batch 128] [--steps 5]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from _common import hardware
from torch import nn

from facerec.engine.optim import build_optimizer
from facerec.losses.partial_fc import build_partial_fc


def one_run(classes: int, rate: float, dim: int, batch: int, steps: int, warmup: int) -> dict:
    """Build the head, train it `warmup + steps` steps on synthetic embeddings; the figures of the timed steps."""
    torch.manual_seed(0)
    t0 = time.perf_counter()
    pfc = build_partial_fc(
        "arcface", {"scale": 64.0, "margin": 0.5}, embedding_dim=dim, num_classes=classes, sample_rate=rate
    )
    build_s = time.perf_counter() - t0
    optimizer = build_optimizer(nn.Identity(), pfc, "sgd", 0.1, 5e-4, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    losses = []
    for i in range(warmup + steps):
        if i == warmup:
            wall, cpu = time.perf_counter(), time.process_time()
        x = torch.randn(batch, dim, generator=gen, requires_grad=True)
        y = torch.randint(0, classes, (batch,), generator=gen)
        optimizer.zero_grad(set_to_none=True)
        loss = pfc(x, y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "classes": classes,
        "sample_rate": rate,
        "sampled": pfc.num_sample,
        "dim": dim,
        "batch": batch,
        "steps": steps,
        "steps_per_s": steps / wall,
        "cpu_s_per_step": cpu / steps,
        "build_s": build_s,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,  # KiB on Linux
        "matrix_gb": classes * dim * 4 / 2**30,
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "threads": torch.get_num_threads(),
    }


def parse_runs(text: str) -> list[tuple[int, float]]:
    """ "1000000:0.1,250000:1.0" -> [(1000000, 0.1), (250000, 1.0)]."""
    runs = []
    for item in text.split(","):
        classes, rate = item.split(":")
        runs.append((int(classes), float(rate)))
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", default="1000000:0.1,250000:0.1,250000:1.0", help="CLASSES:SAMPLE_RATE,...")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--one", metavar="CLASSES:RATE", help=argparse.SUPPRESS)  # the child's own run
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        ((classes, rate),) = parse_runs(args.one)
        print(json.dumps(one_run(classes, rate, args.dim, args.batch, args.steps, args.warmup)))
        return
    print(f"# {hardware(torch.device('cpu'))}")
    print("| classes | sample_rate | centres/step | steps/s | CPU s/step | peak RSS GB | matrix GB | build s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    flags = ["--dim", str(args.dim), "--batch", str(args.batch), "--steps", str(args.steps)]
    flags += ["--warmup", str(args.warmup), "--threads", str(args.threads)]
    for classes, rate in parse_runs(args.runs):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--one", f"{classes}:{rate}", *flags]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"| {r['classes']:,} | {r['sample_rate']} | {r['sampled']:,} | {r['steps_per_s']:.2f} | "
            f"{r['cpu_s_per_step']:.2f} | {r['peak_rss_gb']:.2f} | {r['matrix_gb']:.2f} | {r['build_s']:.1f} |",
            flush=True,
        )
        print(f"<!-- {json.dumps(r)} -->", flush=True)


if __name__ == "__main__":
    main()
