"""A step's log: every line masked, stored in the ledger (in small batches) and echoed to the
terminal. `StepOutput` is an Output that writes into a step's log, so that a deploy or a bake
run inside a pipeline logs what it would print."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.markup import escape

from kiln.ledger.ci_store import CiStore
from kiln.output import Output

MAX_LINE = 64 * 1024  # characters of one stored log line; the rest is cut, with a marker


def cut(line: str, limit: int = MAX_LINE) -> str:
    """`line`, or its first `limit` characters and a marker saying how many more there were."""
    if len(line) <= limit:
        return line
    return f"{line[:limit]} … [line cut: {len(line) - limit} more characters]"


class StepLog:
    FLUSH_LINES, FLUSH_SECONDS = 50, 0.5

    def __init__(self, store: CiStore, run_id: int, step_id: int | None, mask: Callable[[str], str],
                 echo: Output | None, label: str) -> None:
        self.store, self.run_id, self.step_id, self.mask = store, run_id, step_id, mask
        self.echo, self.label = echo, label
        self._pending: list[str] = []
        self._flushed = time.monotonic()
        self._lock = threading.Lock()
        self.tail: list[str] = []  # the last lines, for an error message

    def write(self, text: str) -> None:
        # masked before cut, so a secret straddling the cut is masked whole
        lines = [cut(self.mask(line.rstrip("\r"))) for line in text.splitlines()] or [""]
        with self._lock:
            self._pending += lines
            self.tail = (self.tail + lines)[-10:]
            due = len(self._pending) >= self.FLUSH_LINES or time.monotonic() - self._flushed >= self.FLUSH_SECONDS
        if self.echo is not None and not self.echo.quiet:
            for line in lines:
                self.echo.err.print(f"[dim]{escape(self.label)} │[/] {escape(line)}")
        if due:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
            self._flushed = time.monotonic()
        self.store.log(self.run_id, self.step_id, pending)


class StepOutput(Output):
    """Progress of a use case (deploy, promote, bake) written into a step's log."""

    def __init__(self, log: StepLog) -> None:
        super().__init__(quiet=True)
        self.log = log

    def step(self, message: str) -> None:
        self.log.write(f"› {message}")

    def done(self, message: str) -> None:
        self.log.write(f"✓ {message}")

    def warn(self, message: str) -> None:
        self.log.write(f"! {message}")

    def error(self, message: str, hint: str | None = None) -> None:
        self.log.write(f"error: {message}" + (f"\n  {hint}" if hint else ""))

    @contextmanager
    def working(self, message: str) -> Iterator[Any]:
        self.step(message)
        yield lambda detail: self.log.write(f"  {detail}")

    def print(self, renderable: Any = "") -> None:
        self.log.write(str(renderable))

    def json(self, value: Any) -> None:
        self.log.write(str(value))
