"""Unit-suite fixtures, and a check that the suite imports every use case and agent module."""

from __future__ import annotations

import pkgutil
import sys

import pytest

from unit.world import World

# Packages whose every module the unit suite must import (a module no test imports is untested).
COVERED = ("kiln.usecases", "kiln.agent")


@pytest.fixture
def w(tmp_path):
    """A kiln world in memory: see unit/world.py."""
    return World.make(tmp_path)


def missing_modules() -> list[str]:
    """Modules of the COVERED packages that are not imported (now, in this process)."""
    import importlib

    out = []
    for package in COVERED:
        path = importlib.import_module(package).__path__
        out += [f"{package}.{m.name}" for m in pkgutil.iter_modules(path) if f"{package}.{m.name}" not in sys.modules]
    return out


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A whole unit run (not a selection of tests) must have imported every covered module."""
    if session.config.option.keyword or session.config.option.markexpr or exitstatus != 0:
        return
    args = [str(a) for a in session.config.args]
    whole = all(a.rstrip("/").endswith("tests/unit") or a.rstrip("/").endswith("tests") for a in args)
    if not whole:
        return
    missing = missing_modules()
    if missing:
        session.config.pluginmanager.get_plugin("terminalreporter").write_line(
            f"modules no unit test imports: {', '.join(missing)}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
