"""Everything kiln prints. Progress and messages go to stderr; results (tables, JSON) to stdout,
so `kiln status --json | jq` works while progress stays visible."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.status import Status


class Output:
    def __init__(self, quiet: bool = False) -> None:
        self.out = Console(highlight=False, soft_wrap=True)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)
        self.quiet = quiet
        self._status: Status | None = None

    def step(self, message: str) -> None:
        if not self.quiet:
            self.err.print(f"[bold cyan]›[/] {escape(message)}")

    def done(self, message: str) -> None:
        if not self.quiet:
            self.err.print(f"[bold green]✓[/] {escape(message)}")

    def warn(self, message: str) -> None:
        self.err.print(f"[bold yellow]![/] {escape(message)}")

    def error(self, message: str, hint: str | None = None) -> None:
        self.err.print(f"[bold red]error:[/] {escape(message)}")
        if hint:
            self.err.print(f"  {hint}", markup=False)

    @contextmanager
    def working(self, message: str) -> Iterator[Any]:
        """A spinner with a live detail line; yields a function that updates the detail."""
        if self.quiet or not self.err.is_terminal:
            self.step(message)
            yield lambda _detail: None
            return
        with self.err.status(message) as status:
            def update(detail: str) -> None:
                status.update(f"{escape(message)} [dim]{escape(detail[:100])}[/]")
            yield update

    def print(self, renderable: Any = "") -> None:
        self.out.print(renderable)

    def json(self, value: Any) -> None:
        """`value` as JSON; a view (kiln/views.py) in its one JSON form."""
        sys.stdout.write(json.dumps(value, indent=2, default=_plain) + "\n")
        sys.stdout.flush()


def _plain(value: Any) -> Any:
    to_json = getattr(value, "to_json", None)
    return to_json() if callable(to_json) else str(value)
