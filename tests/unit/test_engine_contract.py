"""The engine contract (tests/contract/engine.py) held against the in-memory fake engine, and the
node contract (tests/contract/nodes.py) against the fake as a cluster."""

from __future__ import annotations

import pytest
from contract.engine import PORT, EngineContract
from contract.nodes import NodeContract

from kiln.providers.base import NodeFacts
from kiln.providers.fake import FAKE, FakeEngine
from kiln.providers.kind import EngineKind
from kiln.providers.swarm_kind import SWARM

REGISTRY = "10.77.0.1:5000"


class FakeFixtures:
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


class TestFakeEngine(FakeFixtures, EngineContract):
    @pytest.fixture
    def kind(self) -> EngineKind:
        return FAKE


class TestFakeNodes(FakeFixtures, NodeContract):
    """The fake as the cluster it stands in for in the use case tests: three nodes, images pushed
    to a registry."""

    @pytest.fixture
    def engine(self) -> FakeEngine:
        engine = FakeEngine({"kiln.test": "contract"})
        engine.cluster = True
        engine.registries = {REGISTRY}
        engine.node_list = [NodeFacts(f"id{i}", host, "manager" if i == 0 else "worker", "active", "ready",
                                      f"10.77.0.{i + 1}", leader=i == 0)
                            for i, host in enumerate(("manager", "kiln-n1", "kiln-n2"))]
        return engine

    @pytest.fixture
    def kind(self) -> EngineKind:
        return SWARM  # the engine it stands in for

    @pytest.fixture
    def repository(self) -> str:
        return f"{REGISTRY}/kiln-contract"
