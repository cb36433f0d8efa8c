"""Run the `kiln` CLI in this process (its real `main`, exit codes and streams), for unit tests
that would otherwise pay a Python start and kiln's imports per command. Tests that must see a
separate process (no traceback reaches the terminal, --follow) keep using a subprocess."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path


@contextlib.contextmanager
def _environment(env: Mapping[str, str], cwd: Path) -> Iterator[None]:
    saved_env, saved_cwd, saved_argv = dict(os.environ), os.getcwd(), sys.argv
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)
        sys.argv = saved_argv


def run_kiln(args: tuple[str, ...] | list[str], *, cwd: Path, env: Mapping[str, str]) -> subprocess.CompletedProcess:
    """`kiln ARGS` as `python -m kiln ARGS` would run it, with `env` as its whole environment."""
    from kiln.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with _environment(env, cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        sys.argv = ["kiln", *args]
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return subprocess.CompletedProcess(["kiln", *args], code, out.getvalue(), err.getvalue())
