"""What a fuzz target is: seed files, an entry point, the accepted errors; and the payload of malicious seeds."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facerec.errors import FacerecError
from fuzzing.mutate import Op

MARKER = "CODE_RAN"  # the file a malicious seed's payload writes into the corpus folder when it runs


@dataclass
class Seed:
    """One valid (or deliberately malicious) input: `files` by name, `mutable` the one mutations change, `extra`
    the format's own mutations (mutate.py), `expect` what the file as it is must give ("ok", or "clear" for a
    file that must be refused)."""

    name: str
    files: dict[str, bytes]
    mutable: str
    extra: tuple[Op, ...] = ()
    expect: str = "ok"


@dataclass
class Target:
    """An input type: `corpus(folder)` writes what the entry point needs there (in the parent) and returns the
    seeds; `prepare(folder)` builds the worker's context once (a model, a web client); `run(case, context)`
    feeds the case folder to the public entry point and returns ("ok" | "clear", detail), raising on anything
    else. An exception of `accepted` types counts as a clear error."""

    name: str
    about: str
    corpus: Callable[[Path], list[Seed]]
    run: Callable[[Path, Any], tuple[str, str]]
    prepare: Callable[[Path], Any] | None = None
    accepted: tuple[type[BaseException], ...] = field(default=(FacerecError,))


class Payload:
    """Unpickling this calls `call(*args)`: the code a malicious checkpoint or .npz file carries."""

    def __init__(self, call: Callable[..., Any], *args: Any) -> None:
        self.call, self.args = call, args

    def __reduce__(self) -> tuple[Any, ...]:
        return self.call, self.args


def payloads() -> dict[str, Payload]:
    """Three ways to run code on unpickling, each writing the file MARKER into the working folder: the runner's
    worker works in the corpus folder, and the runner looks for the marker there after every case. (A relative
    path keeps the malicious files, and so every case made from them, the same in every run.)"""
    return {
        "os.system": Payload(os.system, f"touch {MARKER}"),
        "exec": Payload(exec, f"open({MARKER!r}, 'w').close()"),
        "eval": Payload(eval, f"__import__('pathlib').Path({MARKER!r}).touch()"),
    }
