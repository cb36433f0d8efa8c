"""Failed requests while the app changes, through each tool's own entry point (kiln's router,
compose's published port, Swarm's routing mesh), under one of two loads: wrk (closed loop: 16
keep-alive connections, each waiting for its answer; for throughput) or bench.openloop (open
loop: a fixed schedule of requests whatever the answers, each with a client timeout; latency
during the change next to the steady state before it)."""

from __future__ import annotations

import time
from pathlib import Path

from bench.harness import BenchApp, Load, engine, free_port, log, timed, under_load
from bench.openloop import under_open_load
from bench.peers import Compose, Swarm

V1, V2 = "kiln-bench/hello:v1", "kiln-bench/hello:v2"
OPEN_RATE = 400  # requests a second, well under what one instance answers (wrk: thousands a second)
OPEN_TIMEOUT = 2.0  # seconds, as wrk's default request timeout
NO_RETRIES = "kiln, router retries off"  # bench.kiln_noretries: what HAProxy's retries and redispatch buy


def _row(tool: str, scenario: str, load: Load | dict, seconds: float, note: str = "") -> dict:
    fields = load.row() if isinstance(load, Load) else {"load": "open", **load}
    return {"tool": tool, "scenario": scenario, "change_seconds": round(seconds, 2), "note": note, **fields}


def measure(kind: str, url: str, action):  # type: ignore[no-untyped-def]
    """(load figures, the action's outcome) under `kind` of load: "wrk" or "open"."""
    if kind == "open":
        return under_open_load(url, action, rate=OPEN_RATE, timeout=OPEN_TIMEOUT)
    return under_load(url, action)


def _said(load: Load | dict) -> str:
    if isinstance(load, Load):
        return f"{load.requests} requests, {load.failed} failed, gap {load.max_gap_ms} ms"
    c = load["change"]
    return (f"{c['sent']} sent during the change, {c['failed']} failed {c['failures'] or ''}, p99 {c['p99_ms']} ms, "
            f"max {c['max_ms']} ms (steady p99 {load['steady']['p99_ms']} ms)")


def kiln_scenarios(app: BenchApp, round_no: int, load: str = "wrk", tool: str = "kiln") -> list[dict]:
    """One round of kiln's changes, each under its own load run: rolling, blue-green (smoke on the
    preview port), canary (20% then 50%), rollback, and `docker kill` of one serving instance."""
    rows = []

    def change(scenario: str, *args: str, prepare=None, note: str = "") -> None:
        if prepare:
            prepare()
        app.set_message(f"{scenario} round {round_no}")
        app.image_tag()  # bake before the load starts: the scenario measures the rollout, not the build
        figures, run = measure(load, app.url, lambda: app.kiln(*args))
        rows.append(_row(tool, scenario, figures, run.seconds, note))
        log(f"{tool} {scenario} ({load}): {_said(figures)}")

    change("rolling deploy", "deploy", prepare=lambda: app.set_rollout(strategy="rolling", max_surge="100%", max_unavailable=0),
           note="max_surge 100%")
    change("rolling deploy, batches of 1", "deploy", prepare=lambda: app.set_rollout(strategy="rolling", max_surge=1, max_unavailable=0),
           note="max_surge 1")
    change("blue-green deploy", "deploy",
           prepare=lambda: app.set_rollout(strategy="blue-green", smoke=[{"path": "/health", "status": 200, "body": "ok"}]),
           note="smoke check on the preview port, then one switch")
    change("canary deploy", "deploy",
           prepare=lambda: app.set_rollout(strategy="canary", steps=[{"weight": 20, "pause": "2s"}, {"weight": 50, "pause": "2s"}]),
           note="20% for 2 s, 50% for 2 s, analysis on")
    app.set_rollout(strategy="rolling", max_surge="100%", max_unavailable=0)
    figures, run = measure(load, app.url, lambda: app.kiln("rollback"))
    rows.append(_row(tool, "rollback", figures, run.seconds, "to the previous release (new instances of it)"))
    log(f"{tool} rollback ({load}): {_said(figures)}")

    def kill_one() -> float:
        victim = next(c for c in app.containers() if c.labels.get("kiln.role") == "instance" and c.status == "running")
        began = time.monotonic()
        victim.kill()
        _await_replaced(app, victim.name)
        return time.monotonic() - began
    with app.agent():  # self-healing as in production (`kiln agent install`): the agent replaces it
        figures, took = measure(load, app.url, kill_one)
    rows.append(_row(tool, "docker kill of one instance", figures, took,
                     "SIGKILL one of 2 serving instances; `kiln agent` replaces it (change: until the dead one is removed)"))
    log(f"{tool} docker kill ({load}): {_said(figures)}")
    return rows


def _await_replaced(app: BenchApp, victim: str, timeout: float = 60.0) -> None:
    """Until the agent has removed the killed instance and two instances run again."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        instances = [c for c in app.containers() if c.labels.get("kiln.role") == "instance"]
        if victim not in {c.name for c in instances} and sum(c.status == "running" for c in instances) >= 2:
            return
        time.sleep(0.1)
    raise RuntimeError(f"kiln agent did not replace {victim} within {timeout:.0f}s")


def compose_scenario(root: Path, rounds: int, load: str = "wrk") -> list[dict]:
    compose = Compose(root, free_port())
    url = f"http://127.0.0.1:{compose.port}/"
    rows = []
    try:
        compose.up(V1)
        _wait_answers(url)
        for i in range(rounds):
            target = V2 if i % 2 == 0 else V1
            figures, took = measure(load, url, lambda t=target: timed(lambda: compose.up(t)))
            rows.append(_row("docker-compose", "up -d to a new image", figures, took,
                             "one container publishing the port (compose cannot publish one host port from two)"))
            log(f"compose up -d ({load}): {_said(figures)}")
            _wait_answers(url)
    finally:
        compose.down()
    return rows


def swarm_scenario(swarm: Swarm, rounds: int, replicas: int = 2) -> list[dict]:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    name = "kilnbench-mesh"
    swarm.create(name, V1, replicas, port)
    try:
        if not _wait_answers(url, timeout=15):
            reason = ("the routing mesh never answered on the published port: " + mesh_diagnosis())
            log(f"swarm: {reason}")
            return [{"tool": "Docker Swarm", "scenario": "service update --update-order start-first",
                     "unavailable": reason}]
        rows = []
        for i in range(rounds):
            target = V2 if i % 2 == 0 else V1
            load, took = under_load(url, lambda t=target: swarm.update(name, t, replicas))
            rows.append(_row("Docker Swarm", "service update --update-order start-first", load, took,
                             f"{replicas} replicas, health check every 500 ms, routing mesh"))
            log(f"swarm update: {load.requests} requests, {load.failed} failed, gap {load.max_gap_ms} ms")
        return rows
    finally:
        swarm.remove(name)


DNSRR = "kilnbench-dnsrr"
DNSRR_TOOL = "Docker Swarm (dnsrr) + HAProxy"


def swarm_dnsrr_scenario(root: Path, rounds: int, router_image: str, spec: Path, load: str = "wrk",
                         replicas: int = 2) -> list[dict]:
    """Swarm as its users run their own load balancer where the routing mesh is not wanted (or, as
    here, cannot work): a service with `--endpoint-mode dnsrr`, `service update --update-order
    start-first` to the other image, behind HAProxy in kiln's router image with kiln's own router
    configuration (the same retries and redispatch) and servers from Docker's DNS (server-template +
    resolvers, re-resolved every second), checked every 500 ms as kiln checks its servers; the
    tasks' health check runs every 500 ms as kiln's probe (bench/cluster.py's SwarmPeer, on this
    one-node swarm: local images, no registry)."""
    from bench.cluster import SwarmPeer, dnsrr_haproxy_config

    name = f"{DNSRR}-{load}"  # a name per run: a removed overlay network may linger a moment
    peer = SwarmPeer(root, "", router_image, {}, dnsrr_haproxy_config(spec, name), service=name, replicas=replicas)
    rows = []
    try:
        peer.create(V1)
        for i in range(rounds):
            target = V2 if i % 2 == 0 else V1
            figures, t = measure(load, peer.url, lambda t=target: peer.update(t))
            rows.append(_row(DNSRR_TOOL, "service update --update-order start-first", figures, t["done"],
                             f"{replicas} replicas, --endpoint-mode dnsrr; HAProxy with kiln's router config, "
                             "server-template via 127.0.0.11; change = until HAProxy routes only new tasks and no old "
                             "one runs (Swarm's `completed` comes later)"))
            log(f"swarm dnsrr update ({load}): {_said(figures)}; {t}")
    finally:
        peer.remove()
    return rows


def mesh_diagnosis() -> str:
    if not Path("/proc/sys/net/ipv4/vs").exists():
        return ("this kernel has no IPVS (/proc/sys/net/ipv4/vs is missing, no loadable modules), "
                "which Swarm's ingress load balancing needs; dockerd logs 'error reading the kernel "
                "parameter net.ipv4.vs.…'")
    return f"unknown cause (engine {engine().version()['Version']}); see dockerd's log"


def _wait_answers(url: str, timeout: float = 30) -> bool:
    import urllib.request
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False
