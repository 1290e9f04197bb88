"""Fuzz cases run in a worker process: a hang is a timeout, a crash a dead worker, each reported with its case.

The parent builds each case (the target's seed files, one of them mutated) in a folder and sends its path to the
worker, a spawned Python process that imports the target registry (fuzzing.targets, or fuzzing.checks for the
runner's own tests) once, runs the target's entry point there and answers
with the outcome: "ok" (a result that passed the target's checks), "clear" (facerec's own error, or the target's
other accepted answer) or "fail" (any other exception, a failed check). A case that takes longer than `timeout`
seconds kills the worker (a hang); a worker that dies mid-case is a crash; either way a fresh worker takes the
next case. The worker's address space is capped (`memory_gib`), so an input that makes facerec allocate
gigabytes fails fast instead of swapping the machine. After every case the parent looks for the marker file that
the malicious seed files try to write: if it exists, their code ran.
"""

from __future__ import annotations

import importlib
import multiprocessing as mp
import os
import random
import resource
import shutil
import signal
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fuzzing.base import MARKER, Seed, Target
from fuzzing.mutate import mutate

START_TIMEOUT = 300.0  # seconds for a worker to import facerec and prepare a target (a busy 2-core machine)


@dataclass
class Case:
    target: str
    index: int  # -1 - k: the k-th seed file unmutated; 0, 1, ...: mutated cases
    seed: Seed
    what: str
    files: dict[str, bytes]

    @property
    def label(self) -> str:
        return f"{self.target} case {self.index} (seed file {self.seed.name!r}: {self.what})"


@dataclass
class Summary:
    target: str
    cases: int = 0
    ok: int = 0
    clear: int = 0
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    slowest: tuple[float, int] = (0.0, 0)  # (seconds, case number) of the slowest case


def make_case(target: Target, seeds: list[Seed], index: int) -> Case:
    """Case `index` of a target: index < 0 is seed file -1 - index as it is; index >= 0 a seeded mutation."""
    if index < 0:
        seed = seeds[-1 - index]
        return Case(target.name, index, seed, "unmutated", dict(seed.files))
    rng = random.Random(f"{target.name}/{index}")
    seed = rng.choice(seeds)
    data, what = mutate(seed.files[seed.mutable], f"{target.name}/{index}", seed.extra)
    return Case(target.name, index, seed, what, {**seed.files, seed.mutable: data})


def write_case(case: Case, folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name, data in case.files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def run_case(target: Target, folder: Path, context: Any) -> tuple[str, str]:
    """(outcome, detail) of one case folder, in this process; any exception but the accepted ones is a fail."""
    try:
        return target.run(folder, context)
    except target.accepted as err:
        return "clear", f"{type(err).__name__}: {err}"[:300]
    except Exception:  # the very thing looked for: an unexpected exception, reported with its traceback
        return "fail", traceback.format_exc(limit=-6)


def _limit_memory(gib: float) -> None:
    limit = int(gib * (1 << 30))
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _serve(conn: Any, registry: str, corpus: str, memory_gib: float) -> None:
    """The worker: import the `registry` module (its TARGETS), prepare targets and run case folders until told to
    stop (None)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _limit_memory(memory_gib)
    os.chdir(corpus)  # where a malicious file's payload, if it ran, would write its marker
    targets = importlib.import_module(registry).TARGETS
    contexts: dict[str, Any] = {}
    conn.send("ready")
    while (message := conn.recv()) is not None:
        kind, name, folder = message
        target = targets[name]
        if kind == "prepare":
            contexts[name] = target.prepare(Path(corpus)) if target.prepare else None
            conn.send("prepared")
            continue
        start = time.perf_counter()
        outcome, detail = run_case(target, Path(folder), contexts.get(name))
        conn.send((outcome, detail, time.perf_counter() - start))


class Worker:
    """A spawned process that runs case folders one at a time; started again after a hang or a crash."""

    def __init__(
        self, workdir: Path, timeout: float = 20.0, memory_gib: float = 6.0, registry: str = "fuzzing.targets"
    ) -> None:
        self.workdir, self.corpus, self.registry = workdir, workdir / "corpus", registry
        self.timeout, self.memory_gib = timeout, memory_gib
        self.prepared: set[str] = set()
        self.process: Any = None
        self.restarts = 0

    def _start(self) -> None:
        ctx = mp.get_context("spawn")  # fork after torch or ONNX Runtime started threads can deadlock
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=_serve, args=(child, self.registry, str(self.corpus), self.memory_gib), daemon=True
        )
        threads = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = "1"  # the worker's torch: tiny models, one case at a time
        try:
            self.process.start()  # the child's environment is copied now (it imports torch before `_serve`)
        finally:
            if threads is None:
                del os.environ["OMP_NUM_THREADS"]
            else:
                os.environ["OMP_NUM_THREADS"] = threads
        child.close()
        self.prepared = set()
        self._expect("ready", START_TIMEOUT)

    def _expect(self, answer: str, timeout: float) -> None:
        if not self.conn.poll(timeout) or self.conn.recv() != answer:
            self.stop()
            raise RuntimeError(f"the fuzz worker did not answer {answer!r} within {timeout:.0f} s")

    def run(self, target: str, folder: Path) -> tuple[str, str, float]:
        if self.process is None or not self.process.is_alive():
            self._start()
        if target not in self.prepared:
            self.conn.send(("prepare", target, ""))
            self._expect("prepared", START_TIMEOUT)
            self.prepared.add(target)
        start = time.perf_counter()
        self.conn.send(("run", target, str(folder)))
        try:
            if self.conn.poll(self.timeout):
                return self.conn.recv()
            detail = f"hang: no answer within {self.timeout:.0f} s"
        except EOFError:
            self.process.join(5)
            detail = f"crash: the worker died (exit code {self.process.exitcode})"
        self.stop()
        self.restarts += 1
        return "fail", detail, time.perf_counter() - start

    def stop(self) -> None:
        if self.process is not None and self.process.is_alive():
            try:
                self.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
            self.process.join(2)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()
        self.process = None


def campaign(target: Target, count: int, worker: Worker, log: Any = None, first: int = 0) -> Summary:
    """The target's seed files unmutated (each must give its expected outcome), then mutated cases
    first .. first + count - 1; every failure is listed with its case number, which reproduces it."""
    worker.corpus.mkdir(parents=True, exist_ok=True)
    seeds = target.corpus(worker.corpus)
    marker = worker.corpus / MARKER
    summary, start = Summary(target.name), time.perf_counter()
    for index in [-1 - k for k in range(len(seeds))] + list(range(first, first + count)):
        case = make_case(target, seeds, index)
        outcome, detail, took = worker.run(target.name, write_case(case, worker.workdir / "case" / target.name))
        summary.slowest = max(summary.slowest, (took, index))
        expected = case.seed.expect if index < 0 else None
        if expected is not None and outcome != expected and outcome != "fail":
            outcome, detail = "fail", f"expected {expected} for the seed file as it is, got {outcome}: {detail}"
        if marker.exists():
            marker.unlink()
            outcome, detail = "fail", f"CODE RAN: the payload wrote {MARKER} ({outcome}: {detail})"
        summary.cases += 1
        if outcome == "fail":
            summary.failures.append(f"{case.label}\n  {detail.strip()}")
        else:
            setattr(summary, outcome, getattr(summary, outcome) + 1)
        if log is not None and summary.cases % 100 == 0:
            log(f"{target.name}: {summary.cases} cases, {len(summary.failures)} failures")
    summary.seconds = time.perf_counter() - start
    return summary
