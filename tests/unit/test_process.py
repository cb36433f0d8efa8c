"""The process boundary: detached starts with their output in a log, and liveness of a pid."""

from __future__ import annotations

import os
import socket
import sys
import time

from kiln import process
from kiln.ci.runner import _dead


def _wait_for(predicate, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_alive_is_true_for_a_live_pid_and_false_for_a_reaped_one():
    assert process.alive(os.getpid())
    done = process.run((sys.executable, "-c", "import os; print(os.getpid())"))
    assert done.ok
    assert not process.alive(int(done.stdout))  # exited and reaped: its pid names no process


def test_alive_counts_what_cannot_be_checked_as_alive():
    assert process.alive(1)  # init: alive, or EPERM for an unprivileged user: alive either way
    assert process.alive(0) and process.alive(-1)  # would signal process groups: not checked


def test_spawn_detached_appends_output_to_its_log_and_runs_in_its_own_session(tmp_path):
    log = tmp_path / "sub" / "run-1.out"
    log.parent.mkdir()
    log.write_text("earlier\n")
    code = "import os, sys; print('out', os.getsid(0) == os.getpid()); print('err', file=sys.stderr); print(sys.stdin.read() == '')"
    pid = process.spawn_detached((sys.executable, "-c", code), log)
    assert pid != os.getpid()
    assert _wait_for(lambda: log.read_text().count("\n") >= 4), log.read_text()
    lines = log.read_text().splitlines()
    assert lines[0] == "earlier" and sorted(lines[1:]) == sorted(["out True", "err", "True"])


def test_spawn_detached_makes_the_log_directory(tmp_path):
    log = tmp_path / "ci" / "deeper" / "run-2.out"
    process.spawn_detached((sys.executable, "-c", "print('hi')"), log)
    assert _wait_for(lambda: log.exists() and log.read_text() == "hi\n")


def test_a_missing_program_is_code_127_not_an_exception():
    assert process.run(("kiln-no-such-program",)).code == 127


def test_a_ci_worker_is_dead_only_when_its_pid_is_gone_on_this_host():
    here = socket.gethostname()
    done = process.run((sys.executable, "-c", "import os; print(os.getpid())"))
    gone = int(done.stdout)
    assert not _dead(f"{here}:{os.getpid()}")
    assert _dead(f"{here}:{gone}")
    assert not _dead(f"{here}-elsewhere:{gone}")  # another host: cannot be checked
    assert not _dead(f"{here}:not-a-pid")
