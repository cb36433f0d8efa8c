"""The process runner: the one place kiln starts host programs (commands are argv tuples) and
asks whether a process is still there."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kiln.private import private_file


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


def run(argv: Sequence[str], cwd: Path | None = None, timeout: float | None = None,
        stdin: str | None = None) -> Result:
    """Run to completion, capturing output (with `stdin` as its input). A missing program is code 127, not an exception."""
    try:
        proc = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False,
                              input=stdin)
    except FileNotFoundError:
        return Result(tuple(argv), 127, "", f"{argv[0]}: not found")
    return Result(tuple(argv), proc.returncode, proc.stdout, proc.stderr)


def run_bounded(argv: Sequence[str], timeout: float) -> Result:
    """`run`, but a program still running after `timeout` seconds is killed and gives code 124 (as timeout(1) does)."""
    try:
        return run(argv, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        return Result(tuple(argv), 124, out, "")


def stream(argv: Sequence[str], on_line: Callable[[str], None], cwd: Path | None = None) -> Result:
    """Run, handing each output line to `on_line` (progress); keeps the tail for error messages."""
    tail: list[str] = []
    try:
        proc = subprocess.Popen(list(argv), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except FileNotFoundError:
        return Result(tuple(argv), 127, "", f"{argv[0]}: not found")
    for line in proc.stdout or ():  # always a pipe here
        line = line.rstrip()
        on_line(line)
        tail = (tail + [line])[-20:]
    return Result(tuple(argv), proc.wait(), "", "\n".join(tail))


def spawn_detached(argv: Sequence[str], log_file: Path) -> int:
    """Start `argv` without waiting for it, in a session of its own (so it outlives the caller: a
    git hook, a webhook request, a terminal), with no stdin and its stdout and stderr appended to
    `log_file` (made 0600, with its parent directory 0700, if missing). Returns its pid. A missing program
    raises FileNotFoundError: unlike `run`, nothing would ever report the failure otherwise."""
    private_file(log_file)  # 0600 in a 0700 directory: a run's output may say more than it should
    with open(log_file, "ab") as sink:
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)
    return proc.pid


def alive(pid: int) -> bool:
    """Whether process `pid` of this host may still run: False only when no such process exists.
    One owned by another user is alive; so is a pid that names no single process (<= 0 would
    signal a process group), since it cannot be checked. Sends nothing (signal 0)."""
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)  # signal 0: only existence and permission are checked
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, but belongs to another user
        return True
    return True
