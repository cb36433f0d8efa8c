"""The node contract: what every engine with nodes (`EngineKind.has_nodes`: it implements
providers/base.Nodes) must do, held against the fake in cluster mode (tests/unit/test_engine_contract.py)
and Swarm (tests/integration/test_swarm_contract.py, in the cluster suite).

A subclass provides the engine contract's fixtures (`engine`, also a Nodes; `kind`; `image`;
`repository`) on a cluster that is up: every node ready, at least one worker."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from contract.engine import EngineFixtures, Names
from kiln.errors import EngineError, UsageError
from kiln.providers.base import AVAILABILITY, INSTANCE, NodeFacts, Nodes


def _now(nodes: Nodes, node: NodeFacts) -> NodeFacts:
    return next(n for n in nodes.nodes() if n.id == node.id)


def _until(what: str, check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g}s: {what}")
        time.sleep(0.2)


class NodeContract(EngineFixtures):
    @pytest.fixture
    def node(self, engine) -> Iterator[NodeFacts]:
        """A worker; left as available as it was."""
        worker = next(n for n in engine.nodes() if n.role == "worker")
        yield worker
        engine.set_availability(worker.id, worker.availability)

    def test_the_engine_declares_its_nodes(self, engine, kind):
        assert kind.has_nodes and isinstance(engine, Nodes)

    def test_nodes_are_listed_with_their_role_availability_and_state(self, engine):
        nodes = engine.nodes()
        assert len({n.id for n in nodes}) == len({n.hostname for n in nodes}) == len(nodes) > 1
        assert {n.role for n in nodes} == {"manager", "worker"}
        assert [n.role for n in nodes if n.leader] == ["manager"]  # one leader, a manager
        assert all(n.availability in AVAILABILITY and n.state == "ready" and n.address for n in nodes), nodes

    def test_availability_is_set_by_id_or_hostname_and_read_back(self, engine, node):
        engine.set_availability(node.id, "pause")
        assert _now(engine, node).availability == "pause"
        engine.set_availability(node.hostname, "active")
        assert _now(engine, node).availability == "active"

    def test_an_unknown_availability_or_node_is_refused_and_changes_nothing(self, engine, node):
        before = engine.nodes()
        with pytest.raises(UsageError):
            engine.set_availability(node.id, "asleep")
        with pytest.raises(EngineError):
            engine.set_availability("kiln-contract-no-such-node", "pause")
        assert engine.nodes() == before

    def test_new_instances_avoid_a_paused_node(self, engine, node, released, net, names: Names):
        engine.set_availability(node.id, "pause")
        started = [engine.start(self.spec(names("placed"), released, net, self.serve_argv)) for _ in range(2)]
        assert all(c.running and c.node is not None for c in started), started
        assert node.hostname not in {c.node for c in started}

    def test_a_drained_node_runs_no_instance(self, engine, released, net, names: Names):
        name = names("drained")
        where = engine.start(self.spec(name, released, net, self.serve_argv)).node
        node = next(n for n in engine.nodes() if n.hostname == where)
        selector = {"kiln.app": "contract", "kiln.role": INSTANCE, "kiln.env": name}
        try:
            engine.set_availability(node.id, "drain")
            _until(f"no instance running on {where}",
                   lambda: not [c for c in engine.containers(selector) if c.running and c.node == where])
            assert _now(engine, node).availability == "drain"
        finally:
            engine.set_availability(node.id, node.availability)
