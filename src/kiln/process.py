"""The process runner: the one place kiln starts host programs. Commands are argv tuples."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.code == 0


def which(program: str) -> str | None:
    return shutil.which(program)


def run(argv: Sequence[str], cwd: Path | None = None, timeout: float | None = None) -> Result:
    """Run to completion, capturing output. A missing program is code 127, not an exception."""
    try:
        proc = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        return Result(tuple(argv), 127, "", f"{argv[0]}: not found")
    return Result(tuple(argv), proc.returncode, proc.stdout, proc.stderr)


def stream(argv: Sequence[str], on_line: Callable[[str], None], cwd: Path | None = None) -> Result:
    """Run, handing each output line to `on_line` (progress); keeps the tail for error messages."""
    tail: list[str] = []
    try:
        proc = subprocess.Popen(list(argv), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except FileNotFoundError:
        return Result(tuple(argv), 127, "", f"{argv[0]}: not found")
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        on_line(line)
        tail = (tail + [line])[-20:]
    return Result(tuple(argv), proc.wait(), "", "\n".join(tail))
