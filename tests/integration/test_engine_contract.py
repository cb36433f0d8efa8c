"""The engine contract (tests/contract/engine.py) held against the Docker provider on a real
dockerd. Swarm's runs in the cluster suite (test_swarm_contract.py), QEMU's in the VM suite (test_vm.py)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from conftest import SESSION
from contract.engine import PORT, EngineContract

from kiln.bake.base import ensure_base
from kiln.output import Output
from kiln.providers.docker import DockerProvider
from kiln.providers.docker_kind import DOCKER
from kiln.providers.kind import EngineKind
from kiln.spec.models import Base


def shell_script(code: int | None, lines: list[str]) -> tuple[str, ...]:
    """A command that prints `lines` and exits with `code` (None: runs until stopped)."""
    if code is None:
        return ("sleep", "300")
    return ("sh", "-c", "; ".join([*(f"echo {shlex.quote(line)}" for line in lines), f"exit {code}"]))


def quickstart_base(engine: DockerProvider, scratch: Path) -> str:
    """The quickstart's base (Debian + python3), baked once by scripts/test.sh and cached."""
    return ensure_base(engine, Base(packages=("python3",)), Output(quiet=True), scratch).tag


class TestDockerEngine(EngineContract):
    serve_argv = ("python3", "-m", "http.server", str(PORT))

    @pytest.fixture
    def engine(self, engine) -> DockerProvider:  # the session's dockerd check (conftest), then the provider
        return DockerProvider({"kiln.test": SESSION})

    @pytest.fixture
    def kind(self) -> EngineKind:
        return DOCKER

    @pytest.fixture
    def image(self, engine: DockerProvider, tmp_path: Path) -> str:
        return quickstart_base(engine, tmp_path)

    @pytest.fixture
    def script(self):
        return shell_script
