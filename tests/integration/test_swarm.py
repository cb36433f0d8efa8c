"""`engine: swarm` on a real three-node cluster (scripts/cluster.sh: the machine's dockerd is the
manager, two dockerds in network namespaces are workers, Debian's docker-registry serves images
over TLS): examples/hello spread over the nodes, redeployed, rolled back and canaried under load,
a node's dockerd stopped under load, a node drained, kill -9 in the middle of the switch, and a
registry outage. Each test deploys its own app; the cluster is brought up once per run."""

from __future__ import annotations

import json
import signal
import time

import docker
import pytest
from cluster import Cluster
from conftest import App, Wrk, free_port

pytestmark = pytest.mark.cluster
REPLICAS = 3


@pytest.fixture
def swarm_app(app: App, cluster: Cluster, engine: docker.DockerClient) -> App:
    """A fresh examples/hello with production on the cluster: 3 replicas, images through the registry."""
    def change(data: dict) -> None:
        data.insert(1, "registry", f"{cluster.registry}/kiln")
        data["services"]["web"]["replicas"] = REPLICAS
        data["environments"]["production"]["engine"] = "swarm"
    app.edit_spec(change)
    yield app
    cluster.remove_services({"kiln.app": app.name})


def nodes_of(app: App) -> dict[str, str]:
    """instance -> node of the production instances that are healthy and in the router."""
    st = app.kiln_json("status")
    return {i["id"]: i["node"] for i in st["instances"] if i["health"] == "healthy" and i["in_router"]}


def await_capacity(app: App, avoid: str | None = None, timeout: float = 90) -> tuple[float, dict[str, str]]:
    """Until REPLICAS instances serve (none on `avoid`); returns the wait and where they run."""
    start = time.monotonic()
    while True:
        where = nodes_of(app)
        if len(where) == REPLICAS and avoid not in where.values():
            return time.monotonic() - start, where
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not back to {REPLICAS} serving instances within {timeout}s: {app.kiln_json('status')}")
        time.sleep(0.5)


def no_failures(load, what: str, least: int = 2000) -> None:
    print(f"\n{what}: {load.requests} requests, {load.rps:.0f}/s, {load.non_2xx} non-2xx, "
          f"{load.socket_errors} socket errors")
    assert load.requests >= least, load.text
    assert load.non_2xx == 0 and load.socket_errors == 0, load.text


def test_deploy_spreads_over_nodes_then_redeploy_rollback_and_canary_fail_no_request(swarm_app: App) -> None:
    app = swarm_app
    first = app.kiln("deploy")
    assert "Pushed " in first.stderr and "@sha256:" in first.stderr, first.stderr
    st = app.kiln_json("status")
    assert st["engine"] == "swarm"
    image = st["release"]["image"]
    assert "@sha256:" in image and image.split("@")[0].endswith(f"/kiln/{app.name}"), image
    where = nodes_of(app)
    assert len(where) == REPLICAS and len(set(where.values())) >= 2, st  # spread over at least 2 nodes
    text = app.kiln("status").stdout
    assert "node" in text and all(node in text for node in set(where.values())), text

    load = Wrk(app.url(), seconds=45)
    time.sleep(1)
    app.set_message("second")
    app.kiln("deploy")
    app.kiln("rollback")
    app.set_rollout(strategy="canary", steps=[{"weight": 34, "pause": "2s"}],
                    analysis={"max_error_rate": 1, "max_latency_ratio": 5})
    app.set_message("canary")
    canary = app.kiln("deploy")
    assert "canary analysis passed: 34%" in canary.stderr, canary.stderr
    no_failures(load.result(), "swarm: deploy, rollback, canary under load")
    numbers = [r["number"] for r in app.releases()]
    assert numbers[:4] == [4, 3, 2, 1]
    assert app.releases()[1]["image"] == image  # the rollback went back to v1's digest
    assert app.serving()["number"] == 4


def test_a_node_whose_dockerd_stops_costs_no_request_and_capacity_returns(swarm_app: App, cluster: Cluster) -> None:
    app = swarm_app
    app.kiln("deploy")
    agent = app.popen("agent")
    try:
        time.sleep(3)  # the agent leads and watches
        victim = next(n for n in nodes_of(app).values() if n != cluster.manager)
        load = Wrk(app.url(), seconds=40)
        time.sleep(2)
        stopping = time.monotonic()
        cluster.node_stop(victim)  # returns once that dockerd has exited
        stopped = time.monotonic()
        assert agent.poll() is None, agent.communicate()
        took, where = await_capacity(app, avoid=victim)
        print(f"\nnode {victim} stopped (its dockerd took {stopped - stopping:.1f}s to exit): {REPLICAS} instances "
              f"serving again {took:.1f}s later, {stopped + took - stopping:.1f}s after the stop began, on "
              f"{sorted(set(where.values()))}")
        no_failures(load.result(), f"swarm: node {victim} lost under load")
        assert time.monotonic() - stopped < 90
        events = [json.loads(line) for line in app.kiln("events", "--json").stdout.splitlines()]
        assert any(e["kind"] == "instance.replaced" for e in events), events
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=30)
        cluster.node_start(victim)


def test_node_drain_moves_instances_off_with_no_failed_request(swarm_app: App, cluster: Cluster) -> None:
    app = swarm_app
    app.kiln("deploy")
    node = next(n for n in nodes_of(app).values() if n != cluster.manager)
    load = Wrk(app.url(), seconds=20)
    time.sleep(1)
    try:
        out = app.kiln("node", "drain", node, spec=False)
        assert "drained" in out.stderr, out.stderr
        no_failures(load.result(), f"swarm: kiln node drain {node} under load")
        where = nodes_of(app)
        assert len(where) == REPLICAS and node not in where.values(), where
        listed = {n["hostname"]: n for n in json.loads(app.kiln("node", "list", "--json", spec=False).stdout)}
        assert listed[node]["availability"] == "drain" and listed[node]["instances"] == 0, listed
    finally:
        app.kiln("node", "activate", node, spec=False)
    listed = json.loads(app.kiln("node", "list", "--json", spec=False).stdout)
    assert {n["hostname"]: n["availability"] for n in listed}[node] == "active"


def test_kill_9_in_the_middle_of_the_switch_resumes_to_one_release_on_the_router(swarm_app: App) -> None:
    app = swarm_app
    app.kiln("deploy")
    before = app.serving()["number"]
    app.set_rollout(strategy="canary", steps=[{"weight": 50, "pause": "1s"}])
    app.set_message("switched")
    load = Wrk(app.url(), seconds=25)
    proc = app.popen("deploy", extra_env={"KILN_FAULT": "switched"})
    proc.wait(timeout=180)
    assert proc.returncode == -signal.SIGKILL, proc.communicate()
    settled = app.kiln_json("rollout", "resume")
    assert [r["state"] for r in settled] == ["succeeded"]  # past the switch: completed, never undone
    st = app.kiln_json("status")
    releases = {i["release"] for i in st["instances"]}
    routed = {i["release"] for i in st["instances"] if i["in_router"] and i["weight"]}
    assert releases == routed == {before + 1}, st  # one release on the router, nothing else running
    assert len(st["instances"]) == REPLICAS and not st["waiting"], st
    no_failures(load.result(), "swarm: kill -9 at the switch, then resume", least=1000)


def test_a_registry_outage_aborts_before_traffic_moves_and_the_old_release_serves(swarm_app: App, cluster: Cluster) -> None:
    app = swarm_app
    app.kiln("deploy")
    serving = app.serving()
    app.set_message("unpushable")
    load = Wrk(app.url(), seconds=15)
    try:
        cluster.registry_stop()
        failed = app.kiln("deploy", check=False)
    finally:
        cluster.registry_start()
    assert failed.returncode != 0
    assert "push" in failed.stderr and cluster.registry in failed.stderr, failed.stderr
    assert "Traceback" not in failed.stderr
    assert app.serving() == serving
    assert [r["number"] for r in app.releases()] == [serving["number"]]  # nothing recorded
    assert len(nodes_of(app)) == REPLICAS
    no_failures(load.result(), "swarm: registry outage during a deploy", least=1000)


def test_blue_green_promotion_recreate_and_promotion_between_engines(swarm_app: App) -> None:
    """Blue-green with a preview and `kiln promote`, a past release recreated in a new environment
    on the cluster, and the cluster's digest promoted to staging, a one-host environment."""
    app = swarm_app
    preview = free_port()
    app.edit_spec(lambda data: data["environments"]["production"].update(preview_port=preview))
    app.kiln("deploy")
    first = app.serving()
    app.set_rollout(strategy="blue-green", promote="manual", smoke=[{"path": "/health", "status": 200}])
    app.set_message("blue-green")
    assert app.kiln_json("deploy")["state"] == "paused"
    assert "message=blue-green" in _get(f"http://127.0.0.1:{preview}/")
    assert "message=blue-green" not in _get(app.url())
    load = Wrk(app.url(), seconds=10)
    time.sleep(1)
    app.kiln("promote")
    no_failures(load.result(), "swarm: blue-green promote under load", least=1000)
    assert "message=blue-green" in _get(app.url())

    made = app.kiln_json("recreate", "--release", str(first["number"]), "--from-env", "production", "--env", "old")
    old = app.kiln_json("status", "-e", "old")
    assert made["release"]["image"] == first["image"] == old["release"]["image"]  # the same digest
    assert old["engine"] == "swarm" and all(i["node"] for i in old["instances"]), old
    assert "message=hello, world" in _get(old["url"])

    promoted = app.kiln_json("promote", "--from", "production", "--to", "staging")
    staging = app.kiln_json("status", "-e", "staging")
    assert staging["engine"] == "docker" and promoted["release"]["image"] == app.serving()["image"]
    assert {i["node"] for i in staging["instances"]} == {None}  # one host: containers, not tasks
    assert "message=blue-green" in _get(app.url("staging"))
    app.kiln("destroy", "-e", "old")
    app.kiln("destroy", "-e", "staging")


def _get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()
