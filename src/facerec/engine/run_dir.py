"""A run folder's life around the training loop: made writable before any data is decoded, taken away again
when a failed run wrote nothing into it, and a Ctrl-C / SIGTERM that ends the run after the current step.
Training (engine/run.py) and distillation (distillation/run.py) share them."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from facerec.engine.log import Log
from facerec.errors import DataError


def check_writable(run_dir: Path) -> None:
    """Create the run folder and write a probe file into it, so a bad --out fails before the data is decoded."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise DataError(f"cannot write to the output folder {run_dir} ({err}); choose another --out") from None


@contextlib.contextmanager
def removed_if_left_empty(run_dir: Path) -> Iterator[None]:
    """On a failure, take away the run folder (and the parents made for it) when this run created it and wrote
    nothing into it: a bad dataset or pair file must not leave an empty --out folder behind."""
    created = [p for p in (run_dir, *run_dir.parents) if not p.exists()]  # deepest first
    try:
        yield
    except BaseException:
        for folder in created:
            if not folder.is_dir() or any(folder.iterdir()):
                break
            folder.rmdir()
        raise


class StopFlag:
    """SIGINT/SIGTERM finish the current step, save a checkpoint and exit (a second Ctrl-C aborts at once)."""

    def __init__(self, log: Log, install: bool = True) -> None:
        self.stop = False
        self._old: dict[int, Any] = {}
        self._log, self._install = log, install

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM) if self._install else ():
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.stop:
            raise KeyboardInterrupt
        self.stop = True
        self._log("\nstopping after this step (Ctrl-C again to abort)...")

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
