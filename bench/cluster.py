"""`bench/run --only cluster`: issue 13's benchmark on a real three-node Docker Swarm
(scripts/cluster.sh: the machine's dockerd is the manager, two dockerds in network namespaces are
workers, a TLS registry on 10.77.0.1:5000), with 6 replicas of examples/hello.

1. kiln on the cluster (`engine: swarm`) under the same wrk load as the other availability
   scenarios: deploy of a new image (3 runs, also timed for 2.), rollback, canary (34% then 67%,
   analysis on), and node loss: with `kiln agent` running, a worker holding instances has its
   dockerd stopped (`scripts/cluster.sh node-stop`); measured: failed requests and the time until
   6 instances serve again (healthy, weighted, in the router), none on the stopped node. The node
   is started again afterwards, under load too.
2. Deploy time and availability against Docker Swarm's own update of the same change, on the same
   cluster: a service of 6 tasks (dnsrr, the same image, limits, hardening and health check) fronted
   by HAProxy with kiln's router configuration, servers found by DNS (server-template + resolvers
   at Docker's 127.0.0.11), updated with `docker service update --update-order start-first
   --update-parallelism 6`.

The whole group holds /tmp/kiln-heavy.lock and then /run/kiln-cluster-session.lock (the order a
test session under `flock /tmp/kiln-heavy.lock` takes them), brings the cluster up at its start and
down at its end, also on failure; everything it creates carries kiln.test=bench or a kilnbench name."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path

import docker

from bench.harness import (
    LABEL_ARG,
    REPO,
    BenchApp,
    Load,
    Wrk,
    engine,
    flocked,
    free_port,
    log,
    median,
    sh,
)
from bench.timing import milestones

SCRIPT = REPO / "scripts" / "cluster.sh"
SESSION_LOCK = Path(os.environ.get("BENCH_CLUSTER_LOCK", "/run/kiln-cluster-session.lock"))
CLUSTER_RUN = Path("/run/kiln-cluster")
REPLICAS = 6
APP = "kbcluster"
SWARM = "kilnbench-swarm"  # the peer's service; its overlay is SWARM-net, its HAProxy SWARM-router
SWARM_REPO = "kilnbench/hello"  # under the cluster's registry
PORT = 8000
USER = "65534"
# python3 from the image, as lean as it can be: one socket, no urllib (whose imports cost 3x the CPU,
# and a check runs twice a second in every task; under an update 12 tasks share 2 cores).
HEALTH_CMD = ("python3 -c \"import socket, sys; s = socket.create_connection(('127.0.0.1', 8000), 2); "
              "s.sendall(b'GET /health HTTP/1.0\\r\\n\\r\\n'); sys.exit(0 if s.recv(12)[9:] == b'200' else 1)\"")
CANARY = [{"weight": 34, "pause": "2s"}, {"weight": 67, "pause": "2s"}]
CAPACITY_BOUND = 90.0  # seconds from the node's dockerd exit: tests/integration/test_swarm.py's bound

# Each change is made `idle` times without load (deploy time, as the one-engine report measures it)
# and `loaded` times under wrk (failed requests, and the time under load).
PROFILES = {"quick": {"idle": 3, "loaded": 3, "node_losses": 1},
            "full": {"idle": 3, "loaded": 3, "node_losses": 2}}

# Slots for servers found by DNS: during a start-first update of 6 replicas, 12 tasks resolve at
# once, and a task that left the answer keeps its slot for `hold obsolete`. With 10 slots (a trial
# run) two of the 6 new tasks found none and joined the router ~10 s after they ran.
TEMPLATE_SLOTS = 20

# HAProxy's resolvers as its documentation writes them for Docker's embedded DNS: re-resolve every
# second, retry a failed query after one second, keep a server whose name stopped resolving (or a
# task that left the answer) for 10 s, while the health checks take a dead one out sooner.
RESOLVERS = """resolvers docker
    nameserver docker 127.0.0.11:53
    accepted_payload_size 8192
    resolve_retries 3
    timeout resolve 1s
    timeout retry 1s
    hold valid 10s
    hold other 10s
    hold refused 10s
    hold nx 10s
    hold timeout 10s
    hold obsolete 10s
"""


# --- the cluster ---------------------------------------------------------------------------------


def session_lock(wait: float = 1800) -> contextlib.AbstractContextManager[float]:
    """The lock a test session holds from its cluster's up to its down (tests/integration/cluster.py):
    the machine has one cluster. Yields the seconds waited."""
    return flocked(SESSION_LOCK, "the cluster", wait, every=1)


def script(*args: str, timeout: float = 900) -> float:
    """Run scripts/cluster.sh; the seconds it took."""
    began = time.monotonic()
    proc = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"scripts/cluster.sh {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()[-3000:]}")
    return time.monotonic() - began


def cluster_env() -> dict[str, str]:
    out = subprocess.run([str(SCRIPT), "env"], capture_output=True, text=True, timeout=30, check=True).stdout
    pairs = (shlex.split(line)[0].split("=", 1) for line in out.splitlines() if "=" in line)
    return dict(pairs)


def node_table() -> list[dict]:
    rows = []
    for n in engine().nodes.list():
        a = n.attrs
        rows.append({"hostname": a["Description"]["Hostname"], "role": a["Spec"]["Role"],
                     "state": a["Status"]["State"], "availability": a["Spec"]["Availability"],
                     "address": a["Status"].get("Addr", ""), "engine": a["Description"]["Engine"]["EngineVersion"],
                     "cpus": a["Description"]["Resources"]["NanoCPUs"] / 1e9})
    return sorted(rows, key=lambda r: (r["role"] != "manager", r["hostname"]))


def node_states() -> dict[str, str]:
    return {n.attrs["Description"]["Hostname"]: n.attrs["Status"]["State"] for n in engine().nodes.list()}


def dockerd_pid(node: str) -> int | None:
    """The pid of worker `node`'s dockerd (kiln-n1 -> /run/kiln-cluster/n1/docker.pid)."""
    try:
        return int((CLUSTER_RUN / node.removeprefix("kiln-") / "docker.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def pid_gone(pid: int) -> bool:
    """Exited (or a zombie nobody reaped yet: it has exited all the same)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


# --- load --------------------------------------------------------------------------------------


def loaded(url: str, action: Callable[[], object], after: float = 1.0) -> tuple[Load, object]:
    """harness.under_load with the same wrk settings (2 threads, 16 keep-alive connections, the
    Lua script): from 1 s before `action` until `after` seconds past it."""
    busy0 = cpu_ticks()
    load = Wrk(url)
    time.sleep(1.0)
    try:
        outcome = action()
    finally:
        time.sleep(after)
        result = load.stop()
    busy1 = cpu_ticks()
    result.cpu_busy = round((busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]), 3)  # type: ignore[attr-defined]
    return result, outcome


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine (/proc/stat): every node, router, wrk and kiln."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _row(tool: str, scenario: str, load: Load, seconds: float, note: str, **extra: object) -> dict:
    return {"tool": tool, "scenario": scenario, "change_seconds": round(seconds, 2), "note": note, **load.row(),
            "cpu_busy": getattr(load, "cpu_busy", None), **extra}


def _logrow(row: dict) -> None:
    log(f"{row['tool']} {row['scenario']}: {row['requests']} requests, {row['non_2xx']} non-2xx, "
        f"{row['socket_errors']} socket errors, gap {row['max_gap_ms']} ms, change {row['change_seconds']:.2f} s")


# --- kiln on the cluster -------------------------------------------------------------------------


class KilnCluster:
    """examples/hello with production on the cluster: 6 replicas, images through the registry."""

    def __init__(self, root: Path, registry: str) -> None:
        self.registry = registry
        self.app = BenchApp.make(root, APP, replicas=REPLICAS)
        self.agent_log = root / f"{APP}-agent.log"
        self.agent: subprocess.Popen | None = None

        def change(data: dict) -> None:
            data.insert(1, "registry", f"{registry}/kiln")
            data["environments"]["production"]["engine"] = "swarm"
            del data["environments"]["production"]["preview_port"]  # no blue-green here: the router's config is the peer's
        self.app.edit_spec(change)
        self.app.set_rollout(strategy="rolling", max_surge="100%", max_unavailable=0)

    @property
    def repository(self) -> str:
        return f"{self.registry}/kiln/{APP}"

    def bake_and_push(self, message: str) -> str:
        """Bake the app with `message` and push it where `kiln deploy` pushes it (REPO:ID16), so
        the deploy that follows finds it baked and its layers in the registry; returns the image id."""
        self.app.set_message(message)
        image = json.loads(self.app.kiln("bake", "--json").stdout)["image"]
        tag = image.removeprefix("sha256:")[:16]
        sh("docker", "tag", image, f"{self.repository}:{tag}")
        sh("docker", "push", "-q", f"{self.repository}:{tag}")
        return image

    def status(self) -> dict:
        return json.loads(self.app.kiln("status", "--json").stdout)

    def router_socket(self) -> Path:
        return self.app.home / "routers" / f"{APP}-production" / "admin.sock"

    def serving(self) -> dict[str, str]:
        """instance -> node, of the instances that serve now: healthy in the router with weight,
        their task running. Read straight from HAProxy's admin socket and the manager (kiln status
        would cost a Python start a poll)."""
        from kiln.router.haproxy_api import (
            RuntimeClient,  # kiln's own client of its router's socket
        )
        try:
            stats = RuntimeClient(self.router_socket()).stats()
        except Exception:  # noqa: BLE001 — the router is being restarted: nothing serves
            return {}
        up = {s.name for s in stats if s.backend == "svc-web" and s.serving and s.weight > 0}
        if not up:
            return {}
        client = engine()
        listed = client.nodes.list()
        nodes = {n.id: n.attrs["Description"]["Hostname"] for n in listed}
        states = {n.id: n.attrs["Status"]["State"] for n in listed}
        out = {}
        for svc in client.services.list(filters={"label": [f"kiln.app={APP}", "kiln.role=instance"]}):
            if svc.name not in up:
                continue
            for t in svc.tasks(filters={"desired-state": "running"}):
                if t["Status"]["State"] == "running" and states.get(t.get("NodeID")) == "ready":
                    out[svc.name] = nodes.get(t.get("NodeID"), "?")
        return out

    def start_agent(self) -> None:
        self.agent = subprocess.Popen(self.app.argv("agent"), env=self.app.env(), stdout=subprocess.DEVNULL,
                                      stderr=open(self.agent_log, "a"))
        deadline = time.monotonic() + 60
        while not (self.status().get("agent") or {}).get("leader"):
            if self.agent.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"kiln agent did not lead within 60 s: {self.agent_log.read_text()[-2000:]}")
            time.sleep(0.5)
        time.sleep(2)  # watching the event stream

    def stop_agent(self) -> None:
        if self.agent and self.agent.poll() is None:
            self.agent.send_signal(signal.SIGTERM)
            try:
                self.agent.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.agent.kill()
                self.agent.wait()
        self.agent = None


def kiln_scenarios(k: KilnCluster, p: dict, c: dict, save: Callable[[], None]) -> None:
    app = k.app
    c["kiln_rows"], c["node_loss"] = [], []
    c["kiln_times"] = {"idle": {"command": [], "rollout": [], "milestones": []},
                       "loaded": {"command": [], "rollout": [], "milestones": []}}
    k.bake_and_push("cluster start")
    first = app.kiln("deploy")
    c["first_deploy_seconds"] = round(first.seconds, 2)
    st = k.status()
    c["first_deploy_spread"] = _spread(st)
    log(f"kiln first deploy on the cluster: {first.seconds:.1f} s, instances per node {c['first_deploy_spread']}")

    def change(scenario: str, args: tuple[str, ...], note: str, timed: bool = False, **extra: object) -> dict:
        load, run = loaded(app.url, lambda: app.kiln(*args))
        said = _rollout_seconds(run.stderr)
        if "analysis" in extra:
            extra["analysis"] = [line.strip(" ›") for line in run.stderr.splitlines() if "canary analysis" in line]
        if timed:
            extra["milestones"] = record("loaded", run)
        row = _row("kiln", scenario, load, run.seconds, note, rollout_seconds=said,
                   spread=_spread(k.status()), **extra)
        c["kiln_rows"].append(row)
        _logrow(row)
        save()
        return row

    def record(kind: str, run: object) -> dict[str, float]:
        t = c["kiln_times"][kind]
        t["command"].append(run.seconds)  # type: ignore[attr-defined]
        said = _rollout_seconds(run.stderr)  # type: ignore[attr-defined]
        if said is not None:
            t["rollout"].append(said)
        ms = milestones(app.kiln_json("rollout", "show"))
        t["milestones"].append(ms)
        return ms

    for i in range(p["idle"]):
        k.bake_and_push(f"cluster idle deploy #{i + 1}")
        run = app.kiln("deploy")
        record("idle", run)
        log(f"kiln deploy, no load: {run.seconds:.2f} s (rollout {_rollout_seconds(run.stderr)} s)")
        save()
    for i in range(p["loaded"]):
        k.bake_and_push(f"cluster deploy #{i + 1}")  # baked and pushed before the load starts
        change("deploy (new image)", ("deploy",), "rolling, max_surge 100%: 6 new tasks, then the 6 old drained", timed=True)

    losses = p["node_losses"]
    last_failure = node_loss(k, c, save, 1)
    app.set_rollout(strategy="rolling", max_surge="100%", max_unavailable=0)
    change("rollback", ("rollback",), "to the previous release: 6 new tasks of its image (by digest)")
    app.set_rollout(strategy="canary", steps=CANARY)
    k.bake_and_push("cluster canary")
    change("canary deploy", ("deploy",), "34% for 2 s, 67% for 2 s, analysis on (defaults), then the switch",
           analysis=None)
    app.set_rollout(strategy="rolling", max_surge="100%", max_unavailable=0)
    for i in range(2, losses + 1):
        # The agent's meltdown guard counts failures over 60 s (50% of 6): the runs are kept apart.
        rest = 65 - (time.monotonic() - last_failure)
        if rest > 0:
            log(f"waiting {rest:.0f} s so that the previous node loss is out of the agent's meltdown window")
            time.sleep(rest)
        last_failure = node_loss(k, c, save, i)


def node_loss(k: KilnCluster, c: dict, save: Callable[[], None], run_no: int) -> float:
    """One node loss under load with the agent running, then the node started again (under load too)."""
    app = k.app
    k.start_agent()
    try:
        where = k.serving()
        if len(where) != REPLICAS:
            raise RuntimeError(f"before the node loss only {len(where)} instances serve: {where}")
        per_node: dict[str, int] = {}
        for node in where.values():
            per_node[node] = per_node.get(node, 0) + 1
        workers = {n: per_node.get(n, 0) for n in ("kiln-n1", "kiln-n2")}
        victim = max(workers, key=lambda n: (workers[n], n))
        if workers[victim] == 0:
            raise RuntimeError(f"no worker holds an instance: {per_node}")
        pid = dockerd_pid(victim)
        if pid is None:
            raise RuntimeError(f"no pid file for {victim}'s dockerd under {CLUSTER_RUN}")
        seen = max((e["id"] for e in _events(k)), default=0)
        marks: dict[str, float] = {}
        failed: list[BaseException] = []

        def watch_exit() -> None:
            while not pid_gone(pid):
                time.sleep(0.02)
            marks["exited"] = time.monotonic()

        trace = RouterTrace(k.router_socket(), {i for i, n in where.items() if n == victim})

        def lose() -> float:
            marks["began"] = time.monotonic()
            marks["began_wall"] = time.time()
            watcher = threading.Thread(target=watch_exit, daemon=True)
            watcher.start()

            def stop() -> None:
                try:
                    marks["script"] = script("node-stop", victim, timeout=120)
                except BaseException as exc:  # noqa: BLE001 — raised in the measuring thread below
                    failed.append(exc)
            stopper = threading.Thread(target=stop)
            stopper.start()
            deadline = marks["began"] + 30 + CAPACITY_BOUND + 30
            full_since = None  # the start of the current stretch of full capacity
            while True:
                now = time.monotonic()
                if "down" not in marks and node_states().get(victim) == "down":
                    marks["down"] = now
                serving = k.serving()
                trace.sample(now - marks["began"])
                if victim not in serving.values() and "unrouted" not in marks:
                    marks["unrouted"] = now
                full = len(serving) == REPLICAS and victim not in serving.values()
                full_since = (full_since or now) if full else None
                # Capacity may be back before the node's dockerd has finished exiting: it counts from
                # the start of the stretch that still holds once the dockerd is gone.
                if full_since is not None and "exited" in marks and not stopper.is_alive():
                    marks["capacity"] = full_since
                    break
                if failed:
                    raise failed[0]
                if now > deadline:
                    raise RuntimeError(f"not back to {REPLICAS} serving instances off {victim} within "
                                       f"{deadline - marks['began']:.0f} s: {serving}")
                time.sleep(0.1)
            stopper.join(timeout=120)
            watcher.join(timeout=5)
            return marks["capacity"] - marks["began"]

        load, took = loaded(app.url, lose)
        alive = k.agent.poll() is None if k.agent else False
        st = k.status()
        events = [e for e in _events(k) if e["id"] > seen]
        b = marks["began"]
        result = {
            "run": run_no, "victim": victim, "instances_on_victim": workers[victim], "per_node_before": per_node,
            "dockerd_exit_seconds": round(marks["exited"] - b, 2),
            "node_down_seconds": round(marks["down"] - b, 2) if "down" in marks else None,
            "victim_out_of_router_seconds": round(marks["unrouted"] - b, 2) if "unrouted" in marks else None,
            "capacity_from_stop_seconds": round(marks["capacity"] - b, 2),
            "capacity_from_exit_seconds": round(marks["capacity"] - marks["exited"], 2),
            "agent_alive": alive, "agent_halted": (st.get("agent") or {}).get("healing") == "halted",
            "per_node_after": _spread(st),
            "events": _count(e["kind"] for e in events),
            "event_log": [[round(_wall(e["at"]) - marks["began_wall"], 2), e["kind"], e["message"][:160]] for e in events],
            "router_trace": trace.rows,
        }
        row = _row("kiln", "node loss (worker's dockerd stopped)", load, took,
                   f"kiln agent running; {workers[victim]} of {REPLICAS} instances on the stopped node", **result)
        c["kiln_rows"].append(row)
        c["node_loss"].append(result)
        _logrow(row)
        log(f"node loss {run_no}: {victim} ({workers[victim]} instances): dockerd exited after "
            f"{result['dockerd_exit_seconds']} s, Down after {result['node_down_seconds']} s, full capacity "
            f"{result['capacity_from_stop_seconds']} s after the stop began ({result['capacity_from_exit_seconds']} s "
            f"after the exit)")
        last_failure = time.monotonic()
        save()

        def rejoin() -> float:
            began = time.monotonic()
            script("node-start", victim, timeout=180)
            deadline = began + 90
            while node_states().get(victim) != "ready":
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{victim} not Ready 90 s after node-start")
                time.sleep(0.2)
            return time.monotonic() - began
        load, took = loaded(app.url, rejoin, after=3.0)
        row = _row("kiln", "node back (dockerd started, rejoins)", load, took,
                   "kiln agent running; the node's old tasks are shut down by Swarm as it rejoins", victim=victim)
        c["kiln_rows"].append(row)
        _logrow(row)
        st = k.status()
        serving = [i for i in st["instances"] if i["health"] == "healthy" and i["in_router"]]
        if len(serving) != REPLICAS or len(st["instances"]) != REPLICAS:
            c.setdefault("notes", []).append(f"after node loss {run_no} and rejoin, kiln status lists "
                                             f"{len(st['instances'])} instances, {len(serving)} serving")
        save()
        return last_failure
    finally:
        k.stop_agent()


def _spread(st: dict) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in st.get("instances", []):
        if i["health"] == "healthy" and i["in_router"]:
            out[i["node"]] = out.get(i["node"], 0) + 1
    return dict(sorted(out.items()))


def _rollout_seconds(stderr: str) -> float | None:
    said = re.search(r"is serving at \S+ \(([\d.]+)s\)", stderr)
    return float(said.group(1)) if said else None


class RouterTrace:
    """Changes of the stopped node's servers in kiln's router during a node loss (HAProxy's own
    counters from `show stat`): status, sessions now, connection errors, response errors, retries,
    redispatches, server aborts. Evidence for what a failed request met."""

    FIELDS = ("status", "scur", "econ", "eresp", "wretr", "wredis", "srv_abrt", "check_status")

    def __init__(self, socket: Path, servers: set[str]) -> None:
        self.socket, self.servers = socket, servers
        self.last: dict[str, tuple] = {}
        self.rows: list[list] = []

    def sample(self, t: float) -> None:
        import csv
        import io

        from kiln.router.haproxy_api import RuntimeClient
        try:
            text = RuntimeClient(self.socket, timeout=1.0).ask("show stat")
        except Exception:  # noqa: BLE001 — a trace, never a reason to stop measuring
            return
        seen = set()
        for rec in csv.DictReader(io.StringIO(text.lstrip("# "))):
            name = rec.get("svname")
            if rec.get("pxname") != "svc-web" or name not in self.servers:
                continue
            seen.add(name)
            now = tuple(rec.get(f, "") for f in self.FIELDS)
            if self.last.get(name) != now:
                self.last[name] = now
                self.rows.append([round(t, 2), name, *now])
        for name in self.servers - seen:
            if self.last.get(name) != ("deleted",):
                self.last[name] = ("deleted",)
                self.rows.append([round(t, 2), name, "deleted"])


def _wall(iso: str) -> float:
    from datetime import datetime, timezone
    return datetime.fromisoformat(iso.rstrip("Z")).replace(tzinfo=timezone.utc).timestamp()


def _events(k: KilnCluster) -> list[dict]:
    out = k.app.kiln("events", "--json", "--limit", "500").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def _count(items: Iterator[str] | list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return dict(sorted(out.items()))


# --- Docker Swarm's own update, fronted by HAProxy with kiln's router configuration -------------


def haproxy_config(k: KilnCluster) -> str:
    return dnsrr_haproxy_config(k.app.spec, SWARM)


def dnsrr_haproxy_config(spec: Path, service: str) -> str:
    """kiln's router configuration for this app (router/config.render_config, rendered as
    HaproxyRouter renders it), with the backend's servers found by DNS as Swarm users do, and the
    same server options kiln gives the servers it adds at run time (check interval, fall/rise,
    idle-connection pool)."""
    from kiln.router.config import render_config
    from kiln.router.haproxy import ROUTER_PORT
    from kiln.router.haproxy_api import POOL_MAX_CONN, POOL_PURGE_MS
    from kiln.spec.loader import load_spec
    from kiln.spec.resolve import resolve

    cfg = resolve(load_spec(spec).spec, "production")
    # No preview frontend (the peer has no release awaiting traffic): svc-web is then the last
    # backend, the one the server-template line below is appended to.
    text = render_config(cfg.model_copy(update={"port": ROUTER_PORT, "preview_port": None}))
    interval = int(cfg.public_service.healthcheck.interval * 1000)
    server = (f"    server-template web {TEMPLATE_SLOTS} tasks.{service}:{PORT} check inter {interval} fall 2 rise 1 "
              f"resolvers docker init-addr none resolve-prefer ipv4 "
              f"pool-max-conn {POOL_MAX_CONN} pool-purge-delay {POOL_PURGE_MS}")
    if "backend svc-web\n" not in text or "backend svc-web-preview" in text:
        raise RuntimeError(f"kiln's router config has no backend svc-web:\n{text}")
    return text.rstrip("\n") + "\n" + server + "\n\n" + RESOLVERS


class SwarmPeer:
    def __init__(self, root: Path, registry: str, router_image: str, limits: dict, config: str,
                 service: str = SWARM, replicas: int = REPLICAS) -> None:
        self.service, self.replicas = service, replicas
        self.registry = registry
        self.router_image = router_image
        self.limits = limits
        self.config = config
        self.dir = root / f"{service}-router"
        self.port = free_port()
        self.network = f"{service}-net"
        self.router = f"{service}-router"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def push(self, image: str, n: int) -> str:
        """The kiln-baked image under the peer's own repository; returns repo@sha256:… (what a
        Swarm user deploys to pin every node to the same bytes)."""
        tag = f"{self.registry}/{SWARM_REPO}:u{n}-{os.getpid()}"
        sh("docker", "tag", image, tag)
        sh("docker", "push", "-q", tag)
        digests = engine().images.get(tag).attrs.get("RepoDigests") or []
        ref = next((d for d in digests if d.startswith(f"{self.registry}/{SWARM_REPO}@")), None)
        if ref is None:
            raise RuntimeError(f"no digest for {tag} after the push: {digests}")
        return ref

    def create(self, image: str) -> None:
        sh("docker", "network", "create", "--driver", "overlay", "--attachable", "--label", LABEL_ARG, self.network)
        mem = int(self.limits.get("memory") or 0)
        cpus = float(self.limits.get("cpus") or 0)
        sh("docker", "service", "create", "--detach", "--no-resolve-image", "--name", self.service,
           "--label", LABEL_ARG, "--container-label", LABEL_ARG, "--replicas", str(self.replicas),
           "--network", self.network, "--endpoint-mode", "dnsrr",
           "--update-order", "start-first", "--update-parallelism", str(self.replicas), "--update-delay", "0s",
           "--update-failure-action", "pause", "--restart-condition", "any",
           "--health-cmd", HEALTH_CMD, "--health-interval", "500ms", "--health-timeout", "2s",
           "--health-retries", "3", "--health-start-period", "0s",
           "--user", USER, "--init", "--read-only", "--cap-drop", "ALL",
           "--mount", "type=tmpfs,destination=/tmp,tmpfs-size=67108864",
           "--env", "GREETING=hello", "--stop-grace-period", "10s", "--stop-signal", "SIGTERM",
           *(["--limit-memory", str(mem)] if mem else []), *(["--limit-cpu", f"{cpus:g}"] if cpus else []),
           image, "python3", "/app/app.py")
        self.wait_tasks(image)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "haproxy.cfg").write_text(self.config)
        # As kiln starts its router (HaproxyRouter.ensure, providers/docker.create_args).
        sh("docker", "run", "--detach", "--name", self.router, "--label", LABEL_ARG, "--network", self.network,
           "--publish", f"127.0.0.1:{self.port}:8080", "--volume", f"{self.dir}:/run/kiln",
           "--read-only", "--tmpfs", "/tmp:rw,nosuid,nodev,size=64m", "--tmpfs", "/run/haproxy:rw,nosuid,nodev,size=64m",
           "--cap-drop", "ALL", "--security-opt", "no-new-privileges:true", "--init", "--stop-signal", "SIGTERM",
           "--memory", "512m", "--memory-swap", "512m", "--cpus", "1", "--pids-limit", "256",
           "--restart", "unless-stopped", self.router_image, "haproxy", "-W", "-db", "-f", "/run/kiln/haproxy.cfg")
        self.wait_router(self.task_ips(image), timeout=60)

    def task_ips(self, image: str | None = None) -> dict[str, str]:
        """ip -> image of the tasks running now (or only those of `image`)."""
        svc = engine().services.get(self.service)
        out = {}
        for t in svc.tasks():
            if t["Status"]["State"] != "running":
                continue
            img = t["Spec"]["ContainerSpec"]["Image"]
            if image and img != image:
                continue
            for att in t.get("NetworksAttachments") or []:
                if (att.get("Network") or {}).get("Spec", {}).get("Name") == self.network:
                    for a in att.get("Addresses") or []:
                        out[a.split("/")[0]] = img
        return out

    def wait_tasks(self, image: str, timeout: float = 240) -> float:
        """Until all 6 tasks run (healthy: a task with a health check is `running` only once healthy)
        on `image` and no task of another image runs or starts: Swarm's update is done."""
        began = time.monotonic()
        svc = engine().services.get(self.service)
        while True:
            tasks = svc.tasks()
            new = [t for t in tasks if t["Spec"]["ContainerSpec"]["Image"] == image
                   and t["DesiredState"] == "running" and t["Status"]["State"] == "running"]
            old = [t for t in tasks if t["Spec"]["ContainerSpec"]["Image"] != image
                   and t["Status"]["State"] in ("running", "starting", "preparing", "assigned", "accepted", "ready", "pending")]
            if len(new) == self.replicas and not old:
                return time.monotonic() - began
            if time.monotonic() - began > timeout:
                raise RuntimeError(f"swarm service {self.service} did not converge on {image} within {timeout:.0f}s")
            time.sleep(0.05)

    def routed(self) -> set[str]:
        """Addresses of the servers HAProxy routes to now (UP, weighted)."""
        from kiln.router.haproxy_api import RuntimeClient
        try:
            stats = RuntimeClient(self.dir / "admin.sock").stats()
        except Exception:  # noqa: BLE001 — not up yet
            return set()
        return {s.address.rsplit(":", 1)[0] for s in stats if s.backend == "svc-web" and s.serving and s.weight > 0}

    def wait_router(self, ips: dict[str, str], timeout: float = 60) -> float:
        """Until HAProxy routes to exactly these tasks."""
        began = time.monotonic()
        want = set(ips)
        while self.routed() != want:
            if time.monotonic() - began > timeout:
                logs = subprocess.run(["docker", "logs", "--tail", "30", self.router], capture_output=True, text=True)
                state = sh("docker", "ps", "-a", "--filter", f"name={self.service}", "--format", "{{.Names}} {{.Status}}",
                           check=False)
                raise RuntimeError(f"HAProxy routes {sorted(self.routed())}, not the tasks {sorted(want)}, after "
                                   f"{timeout:.0f}s; containers: {state.strip()}; its log: {(logs.stdout + logs.stderr)[-1500:]}")
            time.sleep(0.05)
        return time.monotonic() - began

    def update(self, image: str, timeout: float = 240) -> dict:
        """`docker service update` to `image`, and seconds from its start until: the CLI returned
        (--detach), 6 new tasks run (healthy), HAProxy routes to exactly those 6, no old task runs
        any more, and Swarm calls the update `completed` (after its --update-monitor, 5 s by
        default). `done`: new set routed and old set gone, the end state `kiln deploy` returns in."""
        began = time.monotonic()
        sh("docker", "service", "update", "--detach", "--no-resolve-image", "--image", image, self.service)
        marks = {"command": time.monotonic() - began}
        svc = engine().services.get(self.service)
        while True:
            now = time.monotonic() - began
            svc.reload()
            status = svc.attrs.get("UpdateStatus") or {}
            if status.get("State") in ("paused", "rollback_started", "rollback_paused", "rollback_completed"):
                raise RuntimeError(f"Swarm's update of {self.service} is {status['State']}: {status.get('Message')}")
            tasks = svc.tasks()
            new = [t for t in tasks if t["Spec"]["ContainerSpec"]["Image"] == image
                   and t["DesiredState"] == "running" and t["Status"]["State"] == "running"]
            old = [t for t in tasks if t["Spec"]["ContainerSpec"]["Image"] != image
                   and t["Status"]["State"] in ("running", "starting", "preparing", "assigned", "accepted", "ready", "pending")]
            if "ready" not in marks and len(new) == self.replicas:
                marks["ready"] = now
            if "ready" in marks and "routed" not in marks and self.routed() == set(self.task_ips(image)):
                marks["routed"] = now
            if "ready" in marks and "old_gone" not in marks and not old:
                marks["old_gone"] = now
            if "completed" not in marks and status.get("State") == "completed":
                marks["completed"] = now
            if all(m in marks for m in ("ready", "routed", "old_gone", "completed")):
                break
            if now > timeout:
                raise RuntimeError(f"Swarm's update of {self.service} to {image} not done within {timeout:.0f}s "
                                   f"(reached: {sorted(marks)}; update state {status.get('State')})")
            time.sleep(0.05)
        marks["done"] = max(marks["routed"], marks["old_gone"])
        return {k: round(v, 3) for k, v in marks.items()}

    def remove(self) -> None:
        sh("docker", "rm", "-f", self.router, check=False)
        sh("docker", "service", "rm", self.service, check=False)
        for _ in range(100):  # the network goes once no task is attached any more
            if sh("docker", "network", "rm", self.network, check=False, timeout=30) or not _network_exists(self.network):
                return
            time.sleep(0.3)


def _network_exists(name: str) -> bool:
    return any(n.name == name for n in engine().networks.list(names=[name]))


def swarm_scenarios(k: KilnCluster, images: list[str], idle: int, c: dict, save: Callable[[], None], root: Path) -> None:
    st = k.status()
    router = next(x for x in k.app.containers() if x.labels.get("kiln.role") == "router")
    router_image = router.image.id
    config = haproxy_config(k)
    c["swarm_haproxy_cfg"] = config
    written = (k.app.home / "routers" / f"{APP}-production" / "haproxy.cfg").read_text()
    c["kiln_haproxy_cfg"] = written
    c["swarm_haproxy_cfg_extends_kilns"] = config.startswith(written)
    if not config.startswith(written):
        c["notes"].append("The peer's HAProxy configuration does not start with the file kiln's router runs: "
                          "compare swarm_haproxy_cfg and kiln_haproxy_cfg in the JSON.")
    peer = SwarmPeer(root, k.registry, router_image, st["limits"].get("web", {}), config)
    refs = [peer.push(img, i) for i, img in enumerate(images)]
    c["swarm_rows"], c["swarm_times"] = [], {"idle": [], "loaded": []}
    log(f"swarm peer: kiln's app destroyed first ({k.app.kiln('destroy', '--env', 'production').seconds:.1f} s); "
        f"service {SWARM} of {REPLICAS} tasks")
    try:
        peer.create(refs[0])
        c["swarm_spread"] = _swarm_spread()
        for i, ref in enumerate(refs[1:1 + idle]):
            t = peer.update(ref)
            c["swarm_times"]["idle"].append(t)
            log(f"swarm update, no load #{i + 1}: {t}")
            save()
        for i, ref in enumerate(refs[1 + idle:]):
            load, t = loaded(peer.url, lambda r=ref: peer.update(r))
            row = _row("Docker Swarm + HAProxy (DNS)", "service update (new image)", load, t["done"],
                       "--update-order start-first --update-parallelism 6; HAProxy server-template via 127.0.0.11",
                       **t, spread=_swarm_spread())
            c["swarm_rows"].append(row)
            c["swarm_times"]["loaded"].append(t)
            _logrow(row)
            log(f"swarm update #{i + 1}: {t}")
            save()
    finally:
        peer.remove()


def _swarm_spread() -> dict[str, int]:
    client = engine()
    names = {n.id: n.attrs["Description"]["Hostname"] for n in client.nodes.list()}
    out: dict[str, int] = {}
    for t in client.services.get(SWARM).tasks(filters={"desired-state": "running"}):
        if t["Status"]["State"] == "running":
            node = names.get(t.get("NodeID"), "?")
            out[node] = out.get(node, 0) + 1
    return dict(sorted(out.items()))


# --- the group -----------------------------------------------------------------------------------


def run(mode: str, root: Path, c: dict, save: Callable[[], None], facts: Callable[[str | None], dict]) -> None:
    """Up, measure, down (also on failure: a failure to clean up is recorded in c["errors"]). `c` is
    filled as figures arrive; save() writes them."""
    p = PROFILES[mode]
    registry = cluster_env()["KILN_CLUSTER_REGISTRY"]
    k = KilnCluster(root, registry)
    k.app.kiln("base", "build")  # cached; `up` checks the overlay with this base's python3
    try:
        up = script("up")
        c["cluster"] = {"up_seconds": round(up, 1), "registry": registry, "nodes": node_table(),
                        "dispatcher_heartbeat": f"{engine().swarm.attrs['Spec']['Dispatcher']['HeartbeatPeriod'] / 1e9:g} s"}
        log(f"cluster up in {up:.0f} s: {[(n['hostname'], n['role'], n['state']) for n in c['cluster']['nodes']]}")
        save()
        kiln_scenarios(k, p, c, save)
        router = next(x for x in k.app.containers() if x.labels.get("kiln.role") == "router")
        c["facts"] = facts(router.image.tags[0] if router.image.tags else router.image.id)
        save()
        # The peer's images: baked the same way, pushed, on no node yet (each update pulls, as kiln's deploys do).
        images = [k.bake_and_push(f"swarm peer #{i}") for i in range(1 + p["idle"] + p["loaded"])]
        swarm_scenarios(k, images, p["idle"], c, save, root)
    finally:
        k.stop_agent()
        try:
            with suppress(Exception):
                k.app.kiln("destroy", "--env", "production", check=False)
            began = time.monotonic()
            cleanup(registry)
            c.setdefault("cluster", {})["down_seconds"] = round(time.monotonic() - began, 1)
            c["cluster"]["manager_swarm_state_after"] = engine().info()["Swarm"]["LocalNodeState"]
        except Exception as exc:  # noqa: BLE001 — recorded; the measurement's own error (if any) propagates
            c["errors"]["cleanup"] = f"{type(exc).__name__}: {str(exc)[:600]}"
        save()


def cleanup(registry: str) -> None:
    """What the group made on the manager, then the cluster itself. Registry content stays (it goes
    with `scripts/cluster.sh down`, which deletes the registry's data)."""
    sh("docker", "rm", "-f", f"{SWARM}-router", check=False)
    sh("docker", "service", "rm", SWARM, check=False)
    client = engine()
    with suppress(docker.errors.APIError):
        for svc in client.services.list(filters={"label": LABEL_ARG}):
            svc.remove()
    for cont in client.containers.list(all=True, sparse=True, filters={"label": LABEL_ARG}):
        with suppress(docker.errors.NotFound):
            cont.remove(force=True, v=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        nets = client.networks.list(filters={"label": LABEL_ARG})
        if not nets:
            break
        for n in nets:
            with suppress(docker.errors.APIError):
                n.remove()
        time.sleep(0.5)
    remove_images([f"kiln/{APP}", f"{registry}/kiln/{APP}", f"{registry}/{SWARM_REPO}"])
    script("down")
    state = engine().info()["Swarm"]["LocalNodeState"]
    if state != "inactive":
        raise RuntimeError(f"after scripts/cluster.sh down the machine's dockerd is still in a swarm ({state})")
    log("cluster down; the machine's dockerd is in no swarm")


def remove_images(repositories: list[str]) -> None:
    """Every image with a tag or digest in these repositories (pulled by digest too), by id."""
    client = engine()
    for image in client.images.list(all=True):
        refs = (image.attrs.get("RepoTags") or []) + (image.attrs.get("RepoDigests") or [])
        if any(r.rsplit("@", 1)[0].rsplit(":", 1)[0] in repositories or r.split("@")[0] in repositories for r in refs):
            with suppress(docker.errors.APIError):
                client.images.remove(image.id, force=True)


def summary(c: dict) -> dict:
    """Medians, extremes and kiln/Swarm ratios of the deploy-time comparison, without load and under it."""
    def stats(v: list[float]) -> dict | None:
        return {"median": round(median(v), 3), "min": round(min(v), 3), "max": round(max(v), 3), "runs": len(v)} if v else None
    out: dict = {}
    for kind in ("idle", "loaded"):
        kt = (c.get("kiln_times") or {}).get(kind) or {}
        st = (c.get("swarm_times") or {}).get(kind) or []
        o = {"kiln_command": stats(kt.get("command", [])), "kiln_rollout": stats(kt.get("rollout", []))}
        for key in ("ready", "routed", "old_gone", "done", "completed"):
            o[f"swarm_{key}"] = stats([t[key] for t in st if key in t])
        k, sw = o["kiln_command"], o["swarm_done"]
        if k and sw:
            o["ratio_kiln_to_swarm"] = {"median": round(k["median"] / sw["median"], 3),
                                        "min": round(k["min"] / sw["min"], 3), "max": round(k["max"] / sw["max"], 3)}
        if k and o["swarm_routed"]:
            o["ratio_kiln_to_swarm_routed"] = round(k["median"] / o["swarm_routed"]["median"], 3)
        if k and o["swarm_completed"]:
            o["ratio_kiln_to_swarm_completed"] = round(k["median"] / o["swarm_completed"]["median"], 3)
        out[kind] = o
    return out
