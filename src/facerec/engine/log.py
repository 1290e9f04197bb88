"""The one way the training engine reports: `Logger`, a line for the user and/or an event for RUN/metrics.jsonl.

Every function of the engine that has something to say takes a `log` (any `Log`: a `Logger`, `print`, a list's
`append`, a function that drops the message) and calls it with one line; `fit` and `train` call their `Logger`
with an `event=` too, which becomes a record of the run's metrics log. Only rank 0 of a distributed job talks;
the other ranks get `quiet`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from facerec.engine.progress import MetricsLog

Log = Callable[[str], None]  # takes one line of text for the user


def echo(message: str) -> None:
    """Print a line to stdout at once: progress lines must show while the run is still working."""
    print(message, flush=True)


def quiet(message: str) -> None:
    """The log of ranks other than 0, and of callers that want no output."""


class Logger:
    """A line for the user (`echo`: stdout by default) and, with `event=`, a record in `metrics` (RUN/metrics.jsonl
    and TensorBoard; none on ranks other than 0 or before the run folder exists).

    `logger("text")` only prints, `logger(event="start", **fields)` only records, and
    `logger("text", event="interrupted", **fields)` does both, so a message and its record cannot drift apart.
    """

    def __init__(self, echo: Log = echo, metrics: MetricsLog | None = None) -> None:
        self.echo, self.metrics = echo, metrics

    def __call__(self, message: str | None = None, /, *, event: str | None = None, **fields: Any) -> None:
        if fields and event is None:
            raise TypeError(f"log fields {sorted(fields)} need an event= to be recorded under")
        if event is not None and self.metrics is not None:
            self.metrics.write(event, **fields)
        if message is not None:
            self.echo(message)

    def close(self) -> None:
        """Close the metrics log (flushes TensorBoard); the logger still prints afterwards."""
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
