"""Targets that misbehave on purpose, so tests/test_fuzz.py can show the runner catches each kind of failure:
a hang, a crash of the process, an allocation bomb, an unexpected exception, code run by unpickling."""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path
from typing import Any

from facerec.errors import DataError
from fuzzing.base import Seed, Target, payloads


def _bytes(case: Path) -> bytes:
    (path,) = case.iterdir()
    return path.read_bytes()


def text_corpus(folder: Path) -> list[Seed]:
    return [Seed("hello", {"x.txt": b"hello, fuzzer"}, "x.txt")]


def refused_corpus(folder: Path) -> list[Seed]:
    return [Seed("refused", {"x.txt": b"refuse me"}, "x.txt", expect="clear")]


def pickle_corpus(folder: Path) -> list[Seed]:
    return [Seed("exec payload", {"x.pkl": pickle.dumps(payloads()["exec"])}, "x.pkl", expect="clear")]


def hang(case: Path, context: Any) -> tuple[str, str]:
    time.sleep(3600)
    return "ok", ""


def crash(case: Path, context: Any) -> tuple[str, str]:
    os.abort()  # SIGABRT, as a C extension that fails an assertion


def allocate(case: Path, context: Any) -> tuple[str, str]:
    return "ok", str(len(bytearray(16 << 30)))  # 16 GiB: over the worker's address-space cap


def unexpected(case: Path, context: Any) -> tuple[str, str]:
    raise KeyError(_bytes(case)[:4])


def clear(case: Path, context: Any) -> tuple[str, str]:
    raise DataError("a clear error")


def unpickle(case: Path, context: Any) -> tuple[str, str]:
    pickle.loads(_bytes(case))  # what load_checkpoint must never do
    return "ok", "unpickled"


TARGETS = {
    t.name: t
    for t in [
        Target("hang", "sleeps", text_corpus, hang),
        Target("crash", "aborts", text_corpus, crash),
        Target("allocate", "allocates 16 GiB", text_corpus, allocate),
        Target("unexpected", "raises KeyError", text_corpus, unexpected),
        Target("clear", "raises DataError", refused_corpus, clear),
        Target("unpickle", "unpickles with pickle.loads", pickle_corpus, unpickle),
    ]
}
