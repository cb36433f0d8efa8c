"""The engine contract (tests/contract/engine.py) and the node contract (tests/contract/nodes.py)
held against the Swarm provider on the three-node cluster of scripts/cluster.sh (the cluster suite)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from cluster import Cluster
from conftest import SESSION
from contract.engine import PORT, EngineContract
from contract.nodes import NodeContract
from test_engine_contract import quickstart_base, shell_script

from kiln.providers.kind import EngineKind
from kiln.providers.swarm import SwarmProvider
from kiln.providers.swarm_kind import SWARM

pytestmark = pytest.mark.cluster


class SwarmFixtures:
    serve_argv = ("python3", "-m", "http.server", str(PORT))

    @pytest.fixture
    def engine(self, engine: docker.DockerClient, cluster: Cluster) -> SwarmProvider:
        return SwarmProvider({"kiln.test": SESSION})  # on the manager, the machine's dockerd

    @pytest.fixture
    def kind(self) -> EngineKind:
        return SWARM

    @pytest.fixture
    def repository(self, engine: SwarmProvider, cluster: Cluster) -> Iterator[str]:
        repository = f"{cluster.registry}/kiln-contract"
        yield repository
        images = engine.docker.client.images  # the tags a push left here (the registry goes with the cluster)
        for tag in {t for image in images.list(name=repository) for t in image.tags if t.startswith(repository + ":")}:
            images.remove(tag)

    @pytest.fixture
    def image(self, engine: SwarmProvider, tmp_path: Path) -> str:
        return quickstart_base(engine, tmp_path)

    @pytest.fixture
    def script(self):
        return shell_script


class TestSwarmEngine(SwarmFixtures, EngineContract):
    # The manager's engine shows the configuration, files and events of the tasks on its own node
    # only (docs/fleet.md), so the contract's instances run there; test_swarm.py spreads them.
    constraints = ("node.role == manager",)


class TestSwarmNodes(SwarmFixtures, NodeContract):
    pass
