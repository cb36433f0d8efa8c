"""The router contract (tests/contract/router.py) held against the in-memory FakeRouter."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from contract.router import RouterContract, instance_spec

from kiln.providers.base import ContainerFacts, ContainerSpec
from kiln.providers.fake import FakeEngine, FakeRouter
from kiln.spec.resolve import EnvConfig

IMAGE = "kiln/contract:1"


class TestFakeRouter(RouterContract):
    @pytest.fixture
    def engine(self) -> FakeEngine:
        engine = FakeEngine({"kiln.test": "contract"})
        engine.add_image(IMAGE)
        # What the contract's instances answer: their name, with a 500 for /fail.
        engine.answers = lambda c, path: (500 if path == "/fail" else 200, c.name)
        return engine

    @pytest.fixture
    def make_router(self, engine: FakeEngine):
        """One FakeRouter per environment, kept across calls as a router container is (tests/unit/world.py)."""
        routers: dict[tuple[str, str], FakeRouter] = {}

        def make(cfg: EnvConfig) -> FakeRouter:
            router = routers.setdefault((cfg.app, cfg.env), FakeRouter(cfg, engine))
            router.cfg = cfg
            return router
        return make

    @pytest.fixture
    def instance(self, engine: FakeEngine):
        def start(cfg: EnvConfig, name: str, answers: bool = True,
                  labels: dict[str, str] | None = None) -> ContainerFacts:
            facts = engine.start(instance_spec(cfg, name, IMAGE, ("serve", name), labels))
            if not answers:
                engine.unhealthy.add(name)
            return facts
        return start

    @pytest.fixture
    def occupy(self, engine: FakeEngine):
        """Another program on bind:port: a container the engine publishes it for."""
        @contextmanager
        def hold(bind: str, port: int) -> Iterator[None]:
            engine.ensure_network("elsewhere", {})
            name = f"elsewhere-{port}"
            engine.start(ContainerSpec(name=name, image=IMAGE, network="elsewhere", labels={},
                                       publish={80: (bind, port)}))
            try:
                yield
            finally:
                engine.remove(name)
        return hold
