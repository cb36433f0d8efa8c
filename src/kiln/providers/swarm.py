"""The Swarm provider: an environment's instances as Swarm tasks spread over a cluster, through a
manager's Engine API (DOCKER_HOST, as docker reaches it: the local socket, tcp:// with TLS, ssh://).

kiln stays the release manager. Each instance is a Swarm service of one task (replicas 1, restart
none, endpoint mode dnsrr) labelled like a container, so kiln alone decides which instance starts,
takes traffic, drains and goes, and a dead one is replaced by kiln as on one host; Swarm decides
where it runs (constraints; each new task goes to the eligible node running the fewest), pulls its
image by digest from the registry and attaches it to the environment's overlay network.
`docker service update` is never used: a replicated service scales down by removing a task of
its own choosing, which may be one that serves.

Everything else kiln starts (the router, hooks, CI steps) is a plain container on the manager,
attached to the same overlay (it is attachable): the router reaches every task at its overlay
address, kiln reaches the router's admin socket as on one host, and kiln's own requests to a task
(readiness checks, smoke GETs) go from inside the router, which is on the overlay.

The manager sees every task's state, node and address, but a node's containers (their files, execs,
configuration) only through that node's own engine: for tasks on the manager they are read as on
one host; docs/fleet.md says what is and is not seen elsewhere."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from docker.errors import NotFound
from docker.types import (
    ContainerSpec as SwarmContainerSpec,
)
from docker.types import (
    EndpointSpec,
    Healthcheck,
    Mount,
    NetworkAttachmentConfig,
    Placement,
    Resources,
    RestartPolicy,
    ServiceMode,
    TaskTemplate,
)

from kiln.errors import EngineError, UsageError
from kiln.providers.base import (
    AVAILABILITY,
    INSTANCE,
    ContainerDetails,
    ContainerFacts,
    ContainerSpec,
    Engine,
    EngineEvent,
    Finished,
    NodeFacts,
    Nodes,
    router_name,
)
from kiln.providers.docker_api import DockerApi, engine_call
from kiln.providers.swarm_kind import SWARM
from kiln.secretref import Lookup, resolve
from kiln.settings import Settings
from kiln.spec.models import HealthCheck

_NS = 1_000_000_000
SERVICE_LABEL = "com.docker.swarm.service.name"  # on a task's container: the service (kiln's instance)
TASK_WAIT = 120.0  # how long a new task may take to be placed, pull its image and start
POLL = 0.1
FOLLOW_EVERY = 0.5  # how often the event stream compares task states (Swarm has no task events)
TMPFS_SIZE = 64 * 1024**2
# Task states before "running"; the others are final (complete, failed, shutdown, rejected, orphaned, remove).
STARTING = frozenset({"new", "allocated", "pending", "assigned", "accepted", "preparing", "ready", "starting"})


class SwarmProvider:
    """A Swarm manager: instances are services of one task; every other container is a plain one
    on the manager, through its `DockerApi`."""

    name = SWARM.name
    host_network = SWARM.host_network  # tasks sit on an overlay that only its members reach: the router joins it

    def __init__(self, extra_labels: dict[str, str] | None = None, secrets: Lookup | None = None) -> None:
        self.docker = DockerApi(extra_labels, secrets)
        self.api = self.docker.api
        with engine_call("reading the engine's Swarm state"):
            swarm = self.docker.client.info().get("Swarm") or {}
        if swarm.get("LocalNodeState") != "active" or not swarm.get("ControlAvailable"):
            where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
            raise EngineError(f"the Docker engine at {where} is not a Swarm manager (engine: swarm needs one).",
                              "Make it one (`docker swarm init`, docs/fleet.md), or point DOCKER_HOST at a manager.")
        self.node_id = swarm.get("NodeID") or ""

    # --- images: by digest, from the registry ------------------------------------------------

    def image_id(self, ref: str) -> str | None:
        """A local image id, or for `repo@sha256:…` the digest, when the registry has it."""
        if "@sha256:" not in ref:
            return self.docker.image_id(ref)
        try:
            with engine_call(f"looking up {ref} in its registry"):
                return str(self.docker.client.images.get_registry_data(ref).id)
        except NotFound:
            return None
        except EngineError as exc:
            if "manifest unknown" in exc.message or "not found" in exc.message:
                return None
            raise

    def image_env(self, image: str) -> dict[str, str]:
        if "@sha256:" in image:
            self.pull(image)  # released from another manager: this one may not have got it yet
        return self.docker.image_env(image)

    def find_image(self, tag: str, labels: dict[str, str]) -> str | None:
        return self.docker.find_image(tag, labels)

    def images(self, labels: dict[str, str]) -> list[tuple[str, tuple[str, ...]]]:
        return self.docker.images(labels)

    def remove_image(self, image: str) -> None:
        self.docker.remove_image(image)

    def import_rootfs(self, tarball: Path, tag: str, labels: dict[str, str], changes: list[str]) -> str:
        return self.docker.import_rootfs(tarball, tag, labels, changes)

    def export_rootfs(self, image: str, dest: Path) -> None:
        self.docker.export_rootfs(image, dest)

    def build(self, context: BinaryIO, dockerfile: str, tag: str, args: dict[str, str],
              labels: dict[str, str], on_line: Callable[[str], None]) -> str:
        return self.docker.build(context, dockerfile, tag, args, labels, on_line)

    def push(self, image: str, repository: str) -> str:
        return self.docker.push(image, repository)

    def pull(self, ref: str) -> str:
        """Pull `ref` onto the manager unless it has it (a release's image, for a hook)."""
        return self.docker.pull(ref)

    def publish(self, image: str, repository: str | None) -> str:
        """Push the baked image; instances start from `repository@sha256:…`, so every node runs the
        very same bytes. A release already published (a rollback, a recreation) must still be there."""
        if "@sha256:" in image:
            if self.image_id(image) is None:
                raise EngineError(f"{image} is no longer in its registry.",
                                  "Check out its commit and run `kiln deploy` to bake and push it again.")
            return image
        if repository is None:
            raise UsageError("engine: swarm starts instances from images its nodes pull from a registry, and "
                             "kiln.yaml names none.", "Add `registry: HOST:PORT/PATH` at the top of kiln.yaml "
                             "(docs/fleet.md).")
        return self.push(image, repository)

    # --- networks: one overlay per environment ---------------------------------------------

    def ensure_network(self, name: str, labels: dict[str, str]) -> None:
        found = self.docker.ensure_network(name, labels, overlay=True)
        if found is not None and found.get("Driver") != "overlay":
            raise EngineError(f"network {name} exists as a {found.get('Driver')} network, left by this environment on another "
                              "engine.", f"Remove the environment's old instances and router, then the network "
                              f"(`docker network rm {name}`), and deploy again.")

    def remove_network(self, name: str, labels: dict[str, str] | None = None) -> None:
        self.docker.remove_network(name, labels)

    # --- instances: services of one task ----------------------------------------------------

    def start(self, spec: ContainerSpec) -> ContainerFacts:
        if spec.labels.get("kiln.role") != INSTANCE:
            return self.docker.start(self._on_manager(spec))
        # The only place a secret's value is used: handed to the manager as the service is created.
        args = service_args(spec, self.docker.extra_labels, resolve(spec.environment, self.docker.secrets))
        try:
            with engine_call(f"creating service {spec.name}"):
                self.api.create_service(**args)
        except NotFound as exc:  # its network
            raise EngineError(f"creating service {spec.name}: {exc.explanation or exc}") from None
        return self._await_running(spec.name)

    def _on_manager(self, spec: ContainerSpec) -> ContainerSpec:
        """A plain container's spec (a router, a hook, a CI step), its image pulled onto the manager."""
        if "@sha256:" in spec.image:
            self.pull(spec.image)  # a hook of a release: on the manager, which may not hold it any more
        return spec

    def _await_running(self, name: str) -> ContainerFacts:
        """Until the task runs (and, with a command healthcheck, is healthy). A task that is
        rejected, fails or is never placed takes its service with it, and says why."""
        deadline = time.monotonic() + TASK_WAIT
        while True:
            facts, task = self._inspect(name)
            if facts is None:
                raise EngineError(f"service {name} vanished right after it was created.",
                                  "Something else removes services on this cluster; run the command again.")
            if facts.running:
                return facts
            late = time.monotonic() > deadline
            if facts.state not in STARTING and facts.state != "created" or late:
                why = _task_error(task) or facts.state
                where = f" on node {facts.node}" if facts.node else ""
                self.remove(name)
                raise EngineError(f"instance {name} did not start{where}: {why}"
                                  + (f" (still {facts.state} after {TASK_WAIT:g}s)" if late else ""),
                                  _hint(why))
            time.sleep(POLL)

    def containers(self, labels: dict[str, str]) -> list[ContainerFacts]:
        plain = [c for c in self.docker.containers(labels) if SERVICE_LABEL not in c.labels]
        if labels.get("kiln.role", INSTANCE) != INSTANCE:
            return plain
        with engine_call("listing services"):
            services = self.api.services(filters={"label": [f"{k}={v}" for k, v in labels.items()]})
            if not services:
                return plain
            tasks = self._tasks([s["ID"] for s in services])
            nodes = self._node_names()
        return plain + [service_facts(s, tasks[s["ID"]], nodes) for s in services if s["ID"] in tasks]

    def _tasks(self, services: list[str]) -> dict[str, list[dict[str, Any]]]:
        """The tasks of each service still there (one that is removed meanwhile is left out)."""
        out: dict[str, list[dict[str, Any]]] = {sid: [] for sid in services}
        try:
            found = self.api.tasks(filters={"service": services})
        except NotFound:  # one of them went away between the two calls: ask for each
            found = []
            for sid in services:
                try:
                    found += self.api.tasks(filters={"service": sid})
                except NotFound:
                    del out[sid]
        for t in found:
            out.setdefault(t.get("ServiceID", ""), []).append(t)
        return out

    def container(self, name: str) -> ContainerFacts | None:
        facts, _ = self._inspect(name)
        return facts

    def _inspect(self, name: str) -> tuple[ContainerFacts | None, dict[str, Any] | None]:
        service = self._service(name)
        if service is None:
            return self.docker.container(name), None
        with engine_call(f"listing the tasks of {name}"):
            found = self._tasks([service["ID"]])
            nodes = self._node_names()
        if service["ID"] not in found:
            return None, None  # removed meanwhile
        tasks = found[service["ID"]]
        return service_facts(service, tasks, nodes), current_task(tasks)

    def _service(self, name: str) -> dict[str, Any] | None:
        try:
            with engine_call(f"inspecting service {name}"):
                found: dict[str, Any] = self.api.inspect_service(name)
        except NotFound:
            return None
        return found if found.get("Spec", {}).get("Name") == name else None

    def _node_names(self) -> dict[str, tuple[str, str]]:
        """node id -> (hostname, state: ready, down, unknown…)"""
        return {n["ID"]: ((n.get("Description") or {}).get("Hostname", n["ID"][:12]),
                          (n.get("Status") or {}).get("State", "unknown")) for n in self.api.nodes()}

    def logs(self, name: str, tail: int = 20) -> str:
        facts, task = self._inspect(name)
        if facts is None or facts.node is None:
            return self.docker.logs(name, tail)
        error = _task_error(task)
        text = ""
        with contextlib.suppress(EngineError, NotFound):
            with engine_call(f"reading the logs of {name}"):
                raw = self.api.service_logs(name, stdout=True, stderr=True, tail=tail)
                text = b"".join(raw).decode(errors="replace").strip()
        return "\n".join(x for x in (f"(task: {error})" if error else "", text) if x)

    def stop(self, name: str, grace: float) -> None:
        """Remove the service: Swarm stops its task with the grace period it was created with.
        Waits (bounded) until the manager no longer lists the task as running. The tasks are asked
        for by id: once its service is gone, the manager lists none of them by service."""
        service = self._service(name)
        if service is None:
            self.docker.stop(name, grace)
            return
        with engine_call(f"listing the tasks of {name}"):
            ids = [t["ID"] for t in self._tasks([service["ID"]]).get(service["ID"], [])]
        self._remove_service(name)
        deadline = time.monotonic() + grace + 5
        while ids and time.monotonic() < deadline:
            with engine_call(f"waiting for {name} to stop"):
                tasks = self.api.tasks(filters={"id": ids})
            if not any((t.get("Status") or {}).get("State") in STARTING | {"running"} for t in tasks):
                return
            time.sleep(POLL)

    def remove(self, name: str) -> None:
        if self._service(name) is None:
            self.docker.remove(name)
        else:
            self._remove_service(name)

    def run_once(self, spec: ContainerSpec, timeout: float) -> tuple[int | None, str]:
        """A one-off container (a hook, a CI step) on the manager."""
        return self.docker.run_once(self._on_manager(spec), timeout)

    def run_streamed(self, spec: ContainerSpec, on_line: Callable[[str], None], timeout: float,
                     cancelled: Callable[[], bool]) -> Finished:
        return self.docker.run_streamed(self._on_manager(spec), on_line, timeout, cancelled)

    def _remove_service(self, name: str) -> None:
        with contextlib.suppress(NotFound), engine_call(f"removing service {name}"):
            self.api.remove_service(name)

    # --- kiln's own requests to a task: from inside the router, which is on the overlay -------

    def probe(self, c: ContainerFacts, check: HealthCheck | None, port: int | None) -> bool:
        if c.node is None:  # a plain container on the manager
            return self.docker.probe(c, check, port)
        if not c.running:
            return False
        if check is None:
            return True
        if check.kind == "command":
            return c.health == "healthy"
        if not c.ip or port is None:
            return False
        if check.kind == "http":
            try:
                status, _ = self.get(c, port, check.http or "/", check.timeout)
            except OSError:
                return False
            return 200 <= status < 400
        return self._from_router(c, tcp_argv(c.ip, port, check.timeout))[0] == 0

    def get(self, c: ContainerFacts, port: int, path: str, timeout: float) -> tuple[int, str]:
        if c.node is None:
            return self.docker.get(c, port, path, timeout)
        if not c.ip:
            raise OSError(f"{c.name} has no address")
        code, out = self._from_router(c, http_argv(c.ip, port, path, timeout))
        if code != 0:
            raise OSError(f"no answer from {c.name} ({'timed out' if code == 124 else f'exit {code}'})")
        return parse_http(out)

    def _from_router(self, c: ContainerFacts, argv: tuple[str, ...]) -> tuple[int, bytes]:
        router = router_name(c.label("app") or "", c.label("env") or "")
        try:
            with engine_call(f"running a check in {router}"):
                run = self.api.exec_create(router, list(argv), stdout=True, stderr=False)
                out = self.api.exec_start(run["Id"])
                code = self.api.exec_inspect(run["Id"]).get("ExitCode")
        except (EngineError, NotFound) as exc:
            raise OSError(f"cannot reach {c.name} from the router {router}: {exc}") from None
        return (code if isinstance(code, int) else 1), (out if isinstance(out, bytes) else b"")

    # --- observation ------------------------------------------------------------------------

    def enforceable(self, spec: ContainerSpec) -> ContainerSpec:
        """What a Swarm service can set (API 1.41, Debian's docker 20.10): no pids limit and no
        no-new-privileges per service. Each node's dockerd sets no-new-privileges for all its
        containers (`"no-new-privileges": true` in daemon.json, docs/fleet.md)."""
        if spec.labels.get("kiln.role") != INSTANCE:
            return spec
        return dataclasses.replace(spec, limits=dataclasses.replace(spec.limits, pids=0),
                                   hardening=dataclasses.replace(spec.hardening, no_new_privileges=False))

    def details(self, name: str) -> ContainerDetails | None:
        container = self._here(name)
        return self.docker.details(container) if container else None

    def changes(self, name: str) -> list[str]:
        container = self._here(name)
        return self.docker.changes(container) if container else []

    def _here(self, name: str) -> str | None:
        """The container on this engine's own node behind `name`: an instance's task container
        when its task runs here (None when it runs on another node), else the plain container."""
        with engine_call(f"looking for {name}'s task here"):
            found = self.api.containers(all=True, filters={"label": f"{SERVICE_LABEL}={name}"})
        if found:
            return str(found[0]["Id"])
        return None if self._service(name) else name

    def events(self, labels: dict[str, str], since: float | None = None,
               until: float | None = None) -> Iterator[EngineEvent]:
        """Container events of this node (a task's carry its instance's name), and, as a stream,
        a `die` for every instance whose task stops running anywhere in the cluster: the manager
        knows task states but sends no events for them, so they are compared every 0.5 s."""
        if until is not None:
            yield from (as_instance(ev) for ev in self.docker.events(labels, since, until))
            return
        last = time.time() if since is None else since
        running = {c.name for c in self.containers(labels) if c.running}
        while True:
            time.sleep(FOLLOW_EVERY)
            now = time.time()
            yield from (as_instance(ev) for ev in self.docker.events(labels, last, now))
            last = now
            current = self.containers(labels)
            for c in current:
                if c.name in running and not c.running and c.node is not None:
                    code = str(c.exit_code) if c.exit_code is not None else ""
                    yield EngineEvent("die", c.state, c.name, {**c.labels, "exitCode": code}, now)
            running = {c.name for c in current if c.running}

    # --- nodes ------------------------------------------------------------------------------

    def nodes(self) -> list[NodeFacts]:
        with engine_call("listing nodes"):
            return sorted((node_facts(n) for n in self.api.nodes()), key=lambda n: (n.role != "manager", n.hostname))

    def set_availability(self, node: str, availability: str) -> None:
        if availability not in AVAILABILITY:
            raise UsageError(f"unknown availability {availability!r}.", f"One of: {', '.join(AVAILABILITY)}.")
        try:
            with engine_call(f"setting node {node} to {availability}"):
                found = self.api.inspect_node(node)
                spec = dict(found["Spec"], Availability=availability)
                self.api.update_node(found["ID"], found["Version"]["Index"], spec)
        except NotFound:
            raise EngineError(f"setting node {node} to {availability}: the swarm has no such node.",
                              "`kiln node list` lists its nodes.") from None


# --- pure: services, tasks and nodes as kiln sees them ------------------------------------------


def service_args(spec: ContainerSpec, extra_labels: dict[str, str], environment: dict[str, str]) -> dict[str, Any]:
    """The keyword arguments of `APIClient.create_service` for instance `spec`: one task, never
    restarted by Swarm (kiln replaces instances), dnsrr (kiln's router balances, not Swarm's
    mesh), the hardening and limits a service can carry. Pure; `environment` is resolved."""
    labels = {**spec.labels, **extra_labels}
    health = None
    if spec.health_command:
        health = Healthcheck(test=["CMD", *spec.health_command], interval=int(spec.health_interval * _NS),
                             timeout=int(spec.health_timeout * _NS), retries=1)
    container = SwarmContainerSpec(
        image=spec.image,
        command=list(spec.command) if spec.command else None,
        env=environment,
        user=spec.hardening.user,
        labels=labels,
        mounts=[Mount(target=path, source="", type="tmpfs", tmpfs_size=TMPFS_SIZE) for path in spec.hardening.writable],
        stop_grace_period=int(spec.stop_grace_period * _NS),
        stop_signal="SIGTERM",
        read_only=spec.hardening.read_only,
        healthcheck=health,
        init=True,
        cap_drop=["ALL"],
        cap_add=list(spec.hardening.cap_add) or None,
    )
    task = TaskTemplate(
        container,
        resources=Resources(cpu_limit=round(spec.limits.cpus * _NS), mem_limit=spec.limits.memory),
        restart_policy=RestartPolicy(condition="none"),
        placement=Placement(constraints=list(spec.constraints)) if spec.constraints else None,
        networks=[NetworkAttachmentConfig(spec.network, aliases=list(spec.aliases) or None)],
    )
    return {"task_template": task, "name": spec.name, "labels": labels,
            "mode": ServiceMode("replicated", replicas=1), "endpoint_spec": EndpointSpec(mode="dnsrr")}


def current_task(tasks: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The task Swarm wants running, else the newest."""
    wanted = [t for t in tasks if t.get("DesiredState") == "running"]
    return max(wanted or tasks, key=lambda t: ((t.get("Version") or {}).get("Index", 0)), default=None)


def service_facts(service: dict[str, Any], tasks: list[dict[str, Any]], nodes: dict[str, tuple[str, str]]) -> ContainerFacts:
    """One instance (a service of one task) as a container: its task's state, address and node.
    A task on a node the manager sees down is `lost`; one Swarm is shutting down has `exited`, or
    `shutdown` if it never ran (placed on a node that went down before it started)."""
    spec = service.get("Spec") or {}
    template = spec.get("TaskTemplate") or {}
    cspec = template.get("ContainerSpec") or {}
    labels = spec.get("Labels") or {}
    task = current_task(tasks)
    status = (task or {}).get("Status") or {}
    state = status.get("State") or "created"
    hostname, node_state = nodes.get((task or {}).get("NodeID", ""), (None, "unknown"))
    if task is not None and task.get("DesiredState") != "running" and state in STARTING | {"running"}:
        state = "exited" if state == "running" else "shutdown"  # Swarm gave up on it (its node went down)
    elif state == "running" and node_state != "ready":
        state = "lost"
    code = ((status.get("ContainerStatus") or {}).get("ExitCode")) if state not in STARTING | {"running"} else None
    networks = spec.get("TaskTemplate", {}).get("Networks") or []
    wanted = {n.get("Target") for n in networks}
    ip = None
    for attachment in (task or {}).get("NetworksAttachments") or []:
        net = attachment.get("Network") or {}
        if net.get("ID") in wanted or (net.get("Spec") or {}).get("Name") in wanted:
            ip = next((a.split("/")[0] for a in attachment.get("Addresses") or []), None)
    return ContainerFacts(
        id=(task or service).get("ID", ""),
        name=spec.get("Name", ""),
        image=cspec.get("Image", ""),
        labels=labels,
        state=state,
        health="healthy" if state == "running" and cspec.get("Healthcheck") else None,
        ip=ip,
        exit_code=code,
        node=hostname,
    )


def node_facts(raw: dict[str, Any]) -> NodeFacts:
    spec, desc, status = raw.get("Spec") or {}, raw.get("Description") or {}, raw.get("Status") or {}
    return NodeFacts(id=raw.get("ID", ""), hostname=desc.get("Hostname", ""), role=spec.get("Role", ""),
                     availability=spec.get("Availability", ""), state=status.get("State", ""),
                     address=status.get("Addr", ""), labels=dict(spec.get("Labels") or {}),
                     leader=bool((raw.get("ManagerStatus") or {}).get("Leader")))


def as_instance(ev: EngineEvent) -> EngineEvent:
    """A task container's event under its instance's (its service's) name."""
    name = ev.labels.get(SERVICE_LABEL)
    return dataclasses.replace(ev, name=name) if name else ev


def http_argv(address: str, port: int, path: str, timeout: float) -> tuple[str, ...]:
    """A GET from inside the router (bash's /dev/tcp; the router image has no HTTP client). The
    values are arguments, never part of the script."""
    script = ('exec 3<>"/dev/tcp/$1/$2" || exit 7; '
              'printf "GET %s HTTP/1.0\\r\\nHost: %s\\r\\nUser-Agent: kiln-healthcheck\\r\\n'
              'Connection: close\\r\\n\\r\\n" "$3" "$1" >&3; head -c 65536 <&3')
    return ("timeout", f"{timeout:g}", "bash", "-c", script, "kiln", address, str(port), path)


def tcp_argv(address: str, port: int, timeout: float) -> tuple[str, ...]:
    return ("timeout", f"{timeout:g}", "bash", "-c", 'exec 3<>"/dev/tcp/$1/$2"', "kiln", address, str(port))


def parse_http(raw: bytes) -> tuple[int, str]:
    """(status, body) of a raw HTTP/1.x answer; OSError when it is none."""
    head, _, body = raw.partition(b"\r\n\r\n")
    parts = head.split(b"\r\n", 1)[0].split()
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise OSError("no HTTP answer")
    return int(parts[1]), body.decode(errors="replace")


def _task_error(task: dict[str, Any] | None) -> str:
    status = (task or {}).get("Status") or {}
    return str(status.get("Err") or "").strip()


def _hint(why: str) -> str:
    if "No such image" in why or "manifest" in why or "pull" in why:
        return "A node could not pull the image: check that every node reaches the registry and trusts its certificate (docs/fleet.md)."
    if "no suitable node" in why:
        return "No node satisfies the environment's placement constraints and resources: `kiln node list` shows them."
    return "`docker service ps --no-trunc` on the manager shows the task's history."


def _implements(provider: SwarmProvider) -> tuple[Engine, Nodes]:
    """Never called: mypy checks here that the provider implements Engine and Nodes."""
    return provider, provider


def open_provider(settings: Settings, secrets: Lookup) -> SwarmProvider:
    """The `swarm` engine's provider (its declaration's entry point, providers/swarm_kind.py)."""
    return SwarmProvider(settings.extra_labels, secrets=secrets)
