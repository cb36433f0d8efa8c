"""The engine contract (tests/contract/engine.py) held against the Docker provider on a real dockerd."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from conftest import SESSION
from contract.engine import PORT, EngineContract

from kiln.bake.base import ensure_base
from kiln.output import Output
from kiln.providers.docker import DockerProvider
from kiln.spec.models import Base


class TestDockerEngine(EngineContract):
    serve_argv = ("python3", "-m", "http.server", str(PORT))

    @pytest.fixture
    def engine(self, engine) -> DockerProvider:  # the session's dockerd check (conftest), then the provider
        return DockerProvider({"kiln.test": SESSION})

    @pytest.fixture
    def image(self, engine: DockerProvider, tmp_path: Path) -> str:
        # The quickstart's base (Debian + python3), baked once by scripts/test.sh and cached.
        return ensure_base(engine, Base(packages=("python3",)), Output(quiet=True), tmp_path).tag

    @pytest.fixture
    def script(self):
        def make(code: int | None, lines: list[str]) -> tuple[str, ...]:
            if code is None:
                return ("sleep", "300")
            return ("sh", "-c", "; ".join([*(f"echo {shlex.quote(line)}" for line in lines), f"exit {code}"]))
        return make
