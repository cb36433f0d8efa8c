"""The engine contract (tests/contract/engine.py) held against the in-memory fake engine."""

from __future__ import annotations

import pytest
from contract.engine import PORT, EngineContract

from kiln.providers.fake import FakeEngine


class TestFakeEngine(EngineContract):
    serve_argv = ("serve", str(PORT))

    @pytest.fixture
    def engine(self) -> FakeEngine:
        return FakeEngine({"kiln.test": "contract"})

    @pytest.fixture
    def image(self, engine: FakeEngine) -> str:
        engine.add_image("kiln/contract:1", env={"PATH": "/usr/bin:/bin"})
        return "kiln/contract:1"

    @pytest.fixture
    def script(self, engine: FakeEngine):
        def make(code: int | None, lines: list[str]) -> tuple[str, ...]:
            argv = ("script", str(len(engine.scripts)))
            engine.scripts[argv] = (code, lines)
            return argv
        return make
