"""A slow single-threaded teacher run in several worker processes: dlib's descriptor uses one core (about 12
descriptors per second), so `distill.teacher_workers=N` on an N-core machine caches N times faster.

Each worker process builds its own teacher once (dlib's models are not picklable) and embeds its share of each
call's images; the results come back in order, so the cache's content does not depend on the number of workers
and neither does its key (the fingerprint is the teacher's own).
"""

from __future__ import annotations

import multiprocessing
import weakref
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

from facerec.distillation.protocol import Teacher, TeacherImages

_teacher: Teacher | None = None  # a worker process's own teacher, made once by `_start`


def _start(factory: Callable[[], Teacher]) -> None:
    global _teacher
    _teacher = factory()


def _embed(images: list[str]) -> np.ndarray:
    assert _teacher is not None, "the worker's teacher was not made"
    return _teacher.embed(images)


class ParallelTeacher:
    """`factory()`'s teacher, its `embed` calls shared out over `workers` processes (started on the first call)."""

    def __init__(self, factory: Callable[[], Teacher], workers: int) -> None:
        self.factory, self.workers = factory, workers
        self.local = factory()  # name, width and fingerprint; embeds itself a call too small to share
        self.name, self.embedding_dim = self.local.name, self.local.embedding_dim
        self._pool: ProcessPoolExecutor | None = None

    @property
    def fingerprint(self) -> str:
        return self.local.fingerprint

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            context = multiprocessing.get_context("spawn")  # no fork of a process that runs torch's threads
            self._pool = ProcessPoolExecutor(self.workers, context, initializer=_start, initargs=(self.factory,))
            weakref.finalize(self, self._pool.shutdown, cancel_futures=True)
        return self._pool

    def embed(self, images: TeacherImages) -> np.ndarray:
        """Like the teacher's own `embed`; paths are shared out, decoded tensors embedded here."""
        if self.workers <= 1 or isinstance(images, torch.Tensor) or len(images) < 2:
            return self.local.embed(images)
        shares = [list(s) for s in np.array_split(np.array([str(p) for p in images]), self.workers) if len(s)]
        return np.concatenate(list(self._executor().map(_embed, shares)))
