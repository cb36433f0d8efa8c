"""A cluster environment (`engine: swarm`) on the fakes: images travel by digest through the
registry, a registry outage changes nothing, and `kiln node drain` moves instances off a node
without a moment with fewer serving instances."""

from __future__ import annotations

from dataclasses import replace

import pytest

from kiln.errors import EngineError, KilnError, UsageError
from kiln.ledger import kinds
from kiln.providers.base import NodeFacts
from kiln.usecases import nodes
from kiln.usecases.deploy import deploy, rollback
from unit.world import World

REGISTRY = "10.77.0.1:5000"


@pytest.fixture
def w(tmp_path) -> World:
    w = World.make(tmp_path)
    w.edit_spec("app: shop\n", f"app: shop\nregistry: {REGISTRY}/kiln\n")
    w.edit_spec("    port: 18080\n", "    port: 18080\n    engine: swarm\n")
    w.engine.cluster = True
    w.engine.registries = {REGISTRY}
    w.engine.node_list = [NodeFacts(f"id{i}", host, "manager" if i == 0 else "worker", "active", "ready",
                                    f"10.77.0.{i + 1}") for i, host in enumerate(("vm", "kiln-n1", "kiln-n2"))]
    return w


def test_a_release_records_the_image_as_pushed_and_instances_start_from_it(w):
    outcome = deploy(w.ctx, w.load(), "production")
    image = outcome.release.image
    assert image.startswith(f"{REGISTRY}/kiln/shop@sha256:")
    assert w.engine.registry[image] == w.engine.image_id(outcome.release.image_tag)  # the baked image itself
    running = w.engine.containers({"kiln.app": "shop", "kiln.env": "production", "kiln.role": "instance"})
    assert {c.image for c in running} == {image}
    assert {c.node for c in running} == {"vm", "kiln-n1", "kiln-n2"}  # 3 instances, spread over 3 nodes
    assert any(m.startswith(f"Pushed {REGISTRY}/kiln/shop@sha256:") for m in w.out.of("step"))
    # a rollback goes back to the digest its release recorded, still in the registry
    w.change_code("print('v2')\n")
    deploy(w.ctx, w.load(), "production")
    back = rollback(w.ctx, w.load().spec, "production", to=None)
    assert back.release.image == image


def test_an_unreachable_registry_fails_the_deploy_before_anything_changes(w):
    first = deploy(w.ctx, w.load(), "production")
    serving = w.serving()
    w.engine.registries = set()
    w.change_code("print('v2')\n")
    with pytest.raises(EngineError) as err:
        deploy(w.ctx, w.load(), "production")
    assert "registry cannot be reached" in err.value.message
    assert w.serving() == serving
    assert w.ctx.ledger.releases.current("shop", "production").number == first.release.number
    assert [r.number for r in w.ctx.ledger.releases.of("shop", "production")] == [first.release.number]


def test_a_rollback_to_an_image_the_registry_lost_is_refused(w):
    first = deploy(w.ctx, w.load(), "production")
    w.change_code("print('v2')\n")
    deploy(w.ctx, w.load(), "production")
    del w.engine.registry[first.release.image]
    w.engine.image_store[w.engine.image_id(first.release.image_tag)][0].discard(first.release.image)
    with pytest.raises(KilnError) as err:
        rollback(w.ctx, w.load().spec, "production", to=None)
    assert "no longer on this engine or in its registry" in err.value.message


def test_node_drain_replaces_the_nodes_instances_elsewhere_before_removing_them(w):
    deploy(w.ctx, w.load(), "production")
    here = [c for c in w.engine.containers({"kiln.role": "instance"}) if c.node == "kiln-n1"]
    on_n1 = sorted(c.name for c in here)
    assert on_n1
    moved = nodes.drain(w.ctx, "kiln-n1")
    assert moved == on_n1
    # The journal, oldest first: each replacement takes traffic before any instance of the node leaves.
    journal = [(e.kind, e.message) for e in w.ctx.ledger.events.of("shop", "production", limit=None)]
    routed = [i for i, (kind, m) in enumerate(journal) if kind == kinds.AGENT_ROUTE and ": done" in m]
    unrouted = [i for i, (kind, m) in enumerate(journal) if kind == kinds.AGENT_UNROUTE and m.split(":")[0] in on_n1]
    removed = [m.split(":")[0] for kind, m in journal if kind == kinds.AGENT_REMOVE]
    assert any(c.label("service") == "web" for c in here)  # a routed instance is among those moved
    assert routed and unrouted and max(routed) < min(unrouted)
    assert sorted(removed) == on_n1
    now = w.engine.containers({"kiln.role": "instance"})
    assert not [c for c in now if c.node == "kiln-n1" and c.running]
    assert len([c for c in now if c.running]) == 3
    assert [(n.hostname, n.availability) for n in w.engine.nodes()] == \
        [("vm", "active"), ("kiln-n1", "drain"), ("kiln-n2", "active")]
    assert w.engine.log.index(("pause", "id1")) < w.engine.log.index(("drain", "id1"))
    events = [e.message for e in w.ctx.ledger.events.of("shop", "production") if e.kind == kinds.NODE_DRAINED]
    assert events and events[0].startswith("kiln-n1 drained: replaced ")
    rows = {r.node.hostname: r.instances for r in nodes.listing(w.ctx)}
    assert rows["kiln-n1"] == 0 and sum(rows.values()) == 3
    nodes.activate(w.ctx, "kiln-n1")
    assert w.engine.nodes()[1].availability == "active"


def test_a_drain_that_cannot_place_replacements_leaves_the_node_paused_and_its_instances_serving(w):
    deploy(w.ctx, w.load(), "production")
    serving = w.serving()
    w.engine.node_list = [n if n.hostname == "kiln-n1" else NodeFacts(n.id, n.hostname, n.role, "active", "down", n.address)
                          for n in w.engine.node_list]
    with pytest.raises(KilnError) as err:
        nodes.drain(w.ctx, "kiln-n1")
    assert "draining kiln-n1 stopped" in err.value.message and "no suitable node" in err.value.message
    assert "kiln node activate kiln-n1" in (err.value.hint or "")
    assert w.serving() == serving
    assert w.engine.nodes()[1].availability == "pause"


def test_nodes_are_found_by_hostname_or_unique_id_prefix(w):
    listed = w.engine.nodes()
    assert nodes.find(listed, "kiln-n2").id == "id2"
    assert nodes.find(listed, "id0").hostname == "vm"
    with pytest.raises(UsageError) as err:
        nodes.find(listed, "id")
    assert "more than one node" in err.value.message
    with pytest.raises(UsageError) as err:
        nodes.find(listed, "nope")
    assert "vm, kiln-n1, kiln-n2" in (err.value.hint or "")


def test_gc_keeps_the_local_image_of_a_release_that_serves_by_digest(w):
    from kiln.usecases.releases import collect

    first = deploy(w.ctx, w.load(), "production")
    local = w.engine.image_id(first.release.image_tag)
    w.change_code("print('v2')\n")
    deploy(w.ctx, w.load(), "production")
    w.change_code("print('v3')\n")
    third = deploy(w.ctx, w.load(), "production")
    out = collect(w.ctx, "shop", keep=1, dry_run=True)
    assert w.engine.image_id(third.release.image_tag) not in [i.image for i in out.images]
    assert local in [i.image for i in out.images]  # v1: neither serving nor among the last 1
    back = rollback(w.ctx, w.load().spec, "production", to=1)  # v1's digest serves again
    out = collect(w.ctx, "shop", keep=1, dry_run=True)
    assert back.release.image == first.release.image
    assert local not in [i.image for i in out.images]


def test_a_pipeline_deploy_step_accepts_the_tested_image_as_pushed_and_refuses_another(w):
    from types import SimpleNamespace

    from kiln.bake.baker import bake
    from kiln.ci import steps
    from kiln.errors import PipelineError

    loaded = w.load()
    image = bake(w.engine, loaded, w.out, w.root / "tmp")
    sc = SimpleNamespace(ctx=w.ctx, loaded=loaded, image=image)
    said = steps.deploy(sc, "production")  # the release records repository@sha256:…, the tested bytes
    assert said.startswith("production v1 serving")
    assert w.ctx.ledger.releases.current("shop", "production").image.startswith(f"{REGISTRY}/kiln/shop@sha256:")
    w.change_code("print('v2')\n")  # the same step, told it tested another image than it deploys
    other = replace(image, id=w.engine.add_image("kiln/shop:other"))
    with pytest.raises(PipelineError) as err:
        steps.deploy(SimpleNamespace(ctx=w.ctx, loaded=w.load(), image=other), "production")
    assert "not the tested" in err.value.message


def test_kiln_node_list_json_is_the_node_view(w, monkeypatch):
    import json

    from kiln import cli_nodes
    from unit.cli_inproc import run_kiln

    deploy(w.ctx, w.load(), "production")
    monkeypatch.setattr(cli_nodes, "_ctx", lambda quiet=False: w.ctx)
    done = run_kiln(["node", "list", "--json"], cwd=w.root, env={"NO_COLOR": "1"})
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    assert [(n["hostname"], n["role"], n["availability"]) for n in listed] == [
        ("vm", "manager", "active"), ("kiln-n1", "worker", "active"), ("kiln-n2", "worker", "active")]
    assert set(listed[0]) == {"id", "hostname", "role", "leader", "availability", "state", "address", "labels",
                              "instances"} and sum(n["instances"] for n in listed) == 3
