"""In-memory stand-ins for an engine and a router, for fast tests of the use cases, the executor
and the agent. They implement every method of the protocols (mypy checks it) and the contract
tests (tests/contract) hold the fake engine to the Docker provider's behaviour.

They keep the facts the real ones report (container state, labels, an address; images; router
servers with their status, weights and counters) and let a test break things: `kill` an
instance, make one `unhealthy`, make a release's instances crash at start."""

from __future__ import annotations

import hashlib
import itertools
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from kiln import faults
from kiln.errors import BuildError, EngineError, PortInUse, RouterError, UsageError
from kiln.providers.base import (
    AVAILABILITY,
    INSTANCE,
    ROLE_LABEL,
    ROUTER,
    ContainerDetails,
    ContainerFacts,
    ContainerSpec,
    Engine,
    EngineEvent,
    Finished,
    NodeFacts,
    Nodes,
    check_owner,
    network_name,
    selector,
)
from kiln.providers.docker_kind import BAKE_CONTAINER
from kiln.providers.kind import CONTAINER_IMAGE, EngineKind
from kiln.router.base import Router
from kiln.router.haproxy_api import FULL_WEIGHT, ServerStat
from kiln.spec.models import HealthCheck
from kiln.spec.resolve import EnvConfig

if TYPE_CHECKING:
    from kiln.secretref import Lookup
    from kiln.settings import Settings


def _matches(labels: dict[str, str], wanted: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in wanted.items())


def open_fake(settings: Settings, _secrets: Lookup) -> Engine:
    return FakeEngine(settings.extra_labels)


# The fake's own declaration (tests only: kiln/engines.py does not list it). It behaves as one
# host's engine does; with `cluster` and `node_list` set it also stands in for a cluster's.
FAKE = EngineKind(name="fake", description="an engine in memory, for tests", artifact=CONTAINER_IMAGE,
                  builder=BAKE_CONTAINER, provider="kiln.providers.fake:open_fake",
                  logs="what its command's script printed")


class FakeEngine:
    name = FAKE.name
    host_network = FAKE.host_network

    def __init__(self, extra_labels: dict[str, str] | None = None) -> None:
        self.extra_labels = dict(extra_labels or {})
        self.specs: dict[str, ContainerSpec] = {}
        self.state: dict[str, str] = {}
        self.exit_codes: dict[str, int] = {}
        self.unhealthy: set[str] = set()  # instances whose health check fails
        self.crash_on_start: set[int] = set()  # releases whose instances (and hooks) exit at once
        self.networks: dict[str, dict[str, str]] = {}
        self.image_store: dict[str, tuple[set[str], dict[str, str], dict[str, str]]] = {}  # id -> (refs, labels, env)
        self.registry: dict[str, str] = {}  # repository@digest -> image id (what push made)
        self.registries: set[str] = set()  # registry hosts this engine reaches
        self.cluster = False  # True: instances start from images pushed to the registry (as on Swarm)
        self.node_list: list[NodeFacts] = []  # a cluster's hosts: instances are placed on them (as Swarm does)
        self.placed: dict[str, str] = {}  # instance -> node hostname
        self.output: dict[str, list[str]] = {}  # what a container printed
        # What a command does when a container runs it: (exit code, or None to run until stopped; lines)
        self.scripts: dict[tuple[str, ...], tuple[int | None, list[str]]] = {}
        self.written: dict[str, list[str]] = {}  # "docker diff" of a container
        self.execs: list[EngineEvent] = []
        self.history: list[EngineEvent] = []
        self.log: list[tuple[str, str]] = []  # (verb, container) in order
        self.answers: Callable[[ContainerFacts, str], tuple[int, str]] = lambda c, path: (200, "ok")
        self._ips = itertools.count(2)
        self.ips: dict[str, str] = {}

    # --- images -------------------------------------------------------------------------

    def add_image(self, ref: str, labels: dict[str, str] | None = None, env: dict[str, str] | None = None) -> str:
        image = ref if ref.startswith("sha256:") else "sha256:" + hashlib.sha256(ref.encode()).hexdigest()
        refs, _, _ = self.image_store.setdefault(image, (set(), dict(labels or {}), dict(env or {})))
        refs.update({ref, image})
        return image

    def image_id(self, ref: str) -> str | None:
        return next((i for i, (refs, _, _) in self.image_store.items() if ref in refs), None) or self.registry.get(ref)

    def image_env(self, image: str) -> dict[str, str]:
        found = self.image_store.get(self.registry.get(image, image))
        if found is None:
            raise EngineError(f"inspecting image {image[:19]}: no such image")
        return dict(found[2])

    def find_image(self, tag: str, labels: dict[str, str]) -> str | None:
        image = self.image_id(tag)
        return image if image and _matches(self.image_store[image][1], labels) else None

    def images(self, labels: dict[str, str]) -> list[tuple[str, tuple[str, ...]]]:
        return [(i, tuple(sorted(r for r in refs if not r.startswith("sha256:"))))
                for i, (refs, have, _) in self.image_store.items() if _matches(have, labels)]

    def remove_image(self, image: str) -> None:
        self.image_store.pop(image, None)

    def import_rootfs(self, tarball: Path, tag: str, labels: dict[str, str], changes: list[str]) -> str:
        if not tarball.exists():
            raise BuildError(f"the engine did not create {tag} from {tarball}")
        return self.add_image(tag, labels)

    def export_rootfs(self, image: str, dest: Path) -> None:
        """An empty tar: the fake keeps no files."""
        if image not in self.image_store:
            raise EngineError(f"exporting {image[:19]}: no such image")
        with tarfile.open(dest, "w"):
            pass

    def build(self, context: BinaryIO, dockerfile: str, tag: str, args: dict[str, str],
              labels: dict[str, str], on_line: Callable[[str], None]) -> str:
        on_line(f"fake build of {tag}")
        return self.add_image(tag, labels)

    def push(self, image: str, repository: str) -> str:
        if image not in self.image_store:
            raise EngineError(f"pushing {repository}: no such image {image[:19]}")
        if repository.split("/")[0] not in self.registries:
            raise EngineError(f"pushing {repository}: the registry cannot be reached",
                              "Check that the registry is reachable from this engine.")
        ref = f"{repository}@sha256:{hashlib.sha256((repository + image).encode()).hexdigest()}"
        self.registry[ref] = image
        return ref

    def publish(self, image: str, repository: str | None) -> str:
        if not self.cluster or image in self.registry:
            return image
        if repository is None:
            raise EngineError("this engine runs images from a registry, and none is set.")
        return self.push(image, repository)

    def pull(self, ref: str) -> str:
        found = self.image_id(ref) or self.registry.get(ref)
        if found is None:
            raise EngineError(f"pulling {ref}: not found in its registry")
        self.image_store[found][0].add(ref)
        return found

    # --- networks -----------------------------------------------------------------------

    def ensure_network(self, name: str, labels: dict[str, str]) -> None:
        if name in self.networks:
            check_owner("network", name, self.networks[name], labels)
        self.networks.setdefault(name, {**labels, **self.extra_labels})

    def remove_network(self, name: str, labels: dict[str, str] | None = None) -> None:
        if labels and any(self.networks.get(name, {}).get(k) != v for k, v in labels.items()):
            return  # another environment's, by the same name
        if any(s.network == name for s in self.specs.values()):
            raise EngineError(f"removing network {name}: it has active endpoints")
        self.networks.pop(name, None)

    # --- containers ---------------------------------------------------------------------

    def start(self, spec: ContainerSpec) -> ContainerFacts:
        if spec.name in self.specs:
            raise EngineError(f"creating container {spec.name}: the name is already in use")
        if spec.network not in self.networks:
            raise EngineError(f"creating container {spec.name}: network {spec.network} not found")
        if self.image_id(spec.image) is None:
            raise EngineError(f"creating container {spec.name}: no such image {spec.image[:19]}")
        taken = {hp for s in self.specs.values() for hp in s.publish.values()}
        if any(hp in taken for hp in spec.publish.values()):
            raise PortInUse(f"creating container {spec.name}: the port is already taken.")
        if self.node_list and spec.labels.get(ROLE_LABEL) == INSTANCE:
            self.placed[spec.name] = self._place(spec.name)
        self.specs[spec.name] = spec
        release = int(spec.labels.get("kiln.release", "0"))
        code, lines = self.scripts.get(spec.command or (), (None, []))
        crashed = release in self.crash_on_start
        if crashed:
            code, lines = 1, ["fake crash"]
        self.state[spec.name] = "running"
        self.output[spec.name] = list(lines)
        if code is not None:
            self.state[spec.name] = "exited"  # a one-off command ran to its end
            self.exit_codes[spec.name] = code
        self.ips[spec.name] = f"10.0.0.{next(self._ips)}"
        self.log.append(("start", spec.name))
        self._event("start", spec.name)
        if crashed:
            self._event("die", spec.name, exitCode="1")
        return self._facts(spec.name)

    def _place(self, name: str) -> str:
        """On the eligible node running the fewest instances, as Swarm's scheduler spreads them."""
        eligible = [n.hostname for n in self.node_list if n.availability == "active" and n.state == "ready"]
        if not eligible:
            raise EngineError(f"instance {name} did not start: no suitable node")
        running = [node for c, node in self.placed.items() if self.state.get(c) == "running"]
        return min(eligible, key=lambda node: (running.count(node), node))

    def nodes(self) -> list[NodeFacts]:
        return list(self.node_list)

    def set_availability(self, node: str, availability: str) -> None:
        if availability not in AVAILABILITY:
            raise UsageError(f"unknown availability {availability!r}.", f"One of: {', '.join(AVAILABILITY)}.")
        hostname = next((n.hostname for n in self.node_list if node in (n.id, n.hostname)), None)
        if hostname is None:
            raise EngineError(f"setting node {node} to {availability}: the cluster has no such node.")
        self.node_list = [replace(n, availability=availability) if n.hostname == hostname else n
                          for n in self.node_list]
        self.log.append((availability, node))
        if availability == "drain":  # Swarm stops what still runs there
            for name in [c for c, where in self.placed.items() if where == hostname]:
                self.stop(name, 0)

    def containers(self, labels: dict[str, str]) -> list[ContainerFacts]:
        return [self._facts(n) for n, s in self.specs.items() if _matches({**s.labels, **self.extra_labels}, labels)]

    def container(self, name: str) -> ContainerFacts | None:
        return self._facts(name) if name in self.specs else None

    def logs(self, name: str, tail: int = 20) -> str:
        return "\n".join(self.output.get(name, [])[-tail:])

    def stop(self, name: str, grace: float) -> None:
        if self.state.get(name) == "running":
            self.state[name] = "exited"
            self.exit_codes[name] = 0
            self.log.append(("stop", name))
            self._event("die", name, exitCode="0")

    def remove(self, name: str) -> None:
        if self.specs.pop(name, None) is not None:
            self.state.pop(name)
            self.exit_codes.pop(name, None)
            self.log.append(("remove", name))
            self._event("destroy", name)

    def run_once(self, spec: ContainerSpec, timeout: float) -> tuple[int | None, str]:
        finished = self.run_streamed(spec, lambda _line: None, timeout, lambda: False)
        try:
            return finished.code, self.logs(spec.name, tail=200)
        finally:
            self.remove(spec.name)

    def run_streamed(self, spec: ContainerSpec, on_line: Callable[[str], None], timeout: float,
                     cancelled: Callable[[], bool]) -> Finished:
        """Runs the command's script (default: exit 0); one that runs until stopped ends by
        cancel or timeout, as the real engine's watchdog would end it."""
        self.start(spec)
        self.log.append(("run", spec.name))
        for line in self.output[spec.name]:
            on_line(line)
        if self.state[spec.name] == "running" and (spec.command or ()) not in self.scripts:
            self.state[spec.name] = "exited"  # no script: the command succeeds at once
            self.exit_codes[spec.name] = 0
        if self.state[spec.name] == "running":  # runs until stopped
            self.state[spec.name] = "exited"
            self.exit_codes[spec.name] = 137
            return Finished(None, "cancelled" if cancelled() else "timeout")
        return Finished(self.exit_codes[spec.name])

    # --- probes ---------------------------------------------------------------------------

    def probe(self, c: ContainerFacts, check: HealthCheck | None, port: int | None) -> bool:
        if check is None:  # as kiln.probe.instance_ready: without a check, running is ready
            return self.state.get(c.name) == "running"
        return self.healthy(c.name)

    def get(self, c: ContainerFacts, port: int, path: str, timeout: float) -> tuple[int, str]:
        if not self.healthy(c.name):
            raise ConnectionRefusedError(f"{c.name} does not answer")
        return self.answers(c, path)

    # --- observation ----------------------------------------------------------------------

    def enforceable(self, spec: ContainerSpec) -> ContainerSpec:
        return spec

    def details(self, name: str) -> ContainerDetails | None:
        spec = self.specs.get(name)
        if spec is None:
            return None
        image_env = self.image_store.get(spec.image, (set(), {}, {}))[2]
        return ContainerDetails(
            env={**image_env, **spec.environment}, read_only=spec.hardening.read_only, cap_drop=("ALL",),
            cap_add=spec.hardening.cap_add, security_opt=("no-new-privileges:true",) if spec.hardening.no_new_privileges else (),
            user=spec.hardening.user or "", privileged=False, tmpfs=tuple(sorted(spec.hardening.writable)),
            mounts=tuple(f"{host}:{inner}" for host, inner in spec.binds.items()), limits=spec.limits)

    def changes(self, name: str) -> list[str]:
        return list(self.written.get(name, []))

    def events(self, labels: dict[str, str], since: float | None = None,
               until: float | None = None) -> Iterator[EngineEvent]:
        for ev in list(self.history):
            if _matches(ev.labels, labels) and (since is None or ev.at >= since) and (until is None or ev.at <= until):
                yield ev

    # --- what a test does to the world ------------------------------------------------------

    def kill(self, name: str) -> None:
        self.state[name] = "exited"
        self.exit_codes[name] = 137
        self._event("die", name, exitCode="137")

    def exec(self, name: str, command: str) -> None:
        self._event("exec_start", name, detail=command)

    def healthy(self, name: str) -> bool:
        return self.state.get(name) == "running" and name not in self.unhealthy

    def _facts(self, name: str) -> ContainerFacts:
        spec = self.specs[name]
        state = self.state[name]
        image = spec.image if self.cluster else self.image_id(spec.image) or spec.image  # Swarm reports the reference
        return ContainerFacts(id=f"id-{name}", name=name, image=image, node=self.placed.get(name),
                              labels={**spec.labels, **self.extra_labels}, state=state,
                              health=("unhealthy" if name in self.unhealthy else "healthy") if spec.health_command else None,
                              ip=self.ips[name], exit_code=self.exit_codes.get(name) if state == "exited" else None)

    def _event(self, action: str, name: str, detail: str = "", **attrs: str) -> None:
        spec = self.specs.get(name)
        labels = {**(spec.labels if spec else {}), **self.extra_labels, **attrs}
        self.history.append(EngineEvent(action, detail, name, labels, time.time()))


class FakeRouter:
    """An environment's router, held to HaproxyRouter's behaviour by the router contract
    (tests/contract/router.py): two backends (the public service's and, with a preview port, its
    preview) whose servers have an address, a status from the engine's health of the instance of
    the same name, a weight and counters; GETs on the preview port answered by the engine's
    `answers`, round robin over the serving preview servers, and counted on the server that
    answered. As HAProxy's runtime API: adding a name that exists is refused, weights are 0..256,
    a weight request applies every command it can and then fails for the rest, and a router that
    is stopped or was removed answers no request (RouterError). A new router (started again, or
    for a changed config) knows none of the servers added at run time."""

    # HAProxy's own answer when no server of a backend can take a request
    NO_SERVER = ("<html><body><h1>503 Service Unavailable</h1>\n"
                 "No server is available to handle this request.\n</body></html>\n")

    def __init__(self, cfg: EnvConfig, engine: FakeEngine) -> None:
        self.cfg = cfg
        self.runtime = engine
        self.name = f"kiln-{cfg.app}-{cfg.env}-router"
        self.added: dict[str, str] = {}  # public backend: server -> address:port
        self.weights: dict[str, int] = {}
        self.maint: set[str] = set()  # servers left in maintenance (added by a kiln killed before enabling them)
        self.draining: set[str] = set()  # servers a drain began on (seen only when kiln is killed while draining)
        self.counters: dict[str, tuple[int, int, int]] = {}  # server -> (responses, 5xx, mean ms): canary analysis
        self.preview_added: dict[str, str] = {}  # preview backend: server -> address:port
        self.preview_weights: dict[str, int] = {}
        self.preview_counters: dict[str, tuple[int, int, int]] = {}
        self.removed = False  # remove() ran and no ensure() since: no admin socket to talk to
        self.log: list[tuple[str, str]] = []
        self._turn = 0  # round robin over the preview servers

    @property
    def preview(self) -> set[str]:
        """The preview backend's servers."""
        return set(self.preview_added)

    def facts(self) -> ContainerFacts | None:
        found = self.runtime.container(self.name)
        if found is not None:
            check_owner("router", self.name, found.labels, selector(self.cfg.app, self.cfg.env, ROUTER))
        return found

    def _digest(self) -> str:
        """As HaproxyRouter's: the config it would run and the ports it would listen on."""
        from kiln.router.config import render_config

        text = f"{render_config(self.cfg)}{self.cfg.bind}:{self.cfg.port}:{self.cfg.preview_port}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def _publish(self) -> dict[int, tuple[str, int]]:
        publish = {8080: (self.cfg.bind, self.cfg.port)}
        if self.cfg.preview_port:
            publish[8081] = (self.cfg.bind, self.cfg.preview_port)
        return publish

    def ensure(self) -> bool:
        digest = self._digest()
        current = self.facts()
        if current and current.running and current.labels.get("kiln.router.config") == digest:
            return False
        if current:
            self.runtime.remove(self.name)
        self._forget_servers()  # a new HAProxy process knows none of the servers added at run time
        image = self.runtime.image_id("kiln/router") or self.runtime.add_image("kiln/router")
        self.runtime.start(ContainerSpec(name=self.name, image=image, network=network_name(self.cfg.app, self.cfg.env),
                                         labels={**selector(self.cfg.app, self.cfg.env, ROUTER),
                                                 "kiln.router.config": digest},
                                         publish=self._publish(), restart=True))
        self.removed = False
        self.log.append(("ensure", self.name))
        return True

    def check(self) -> None:
        mine = self.facts()
        if mine is not None and mine.running:
            return
        taken = {hp for s in self.runtime.specs.values() if s.name != self.name for hp in s.publish.values()}
        for wanted in self._publish().values():
            if wanted in taken:
                raise PortInUse(f"port {wanted[1]} on {wanted[0]} is already in use by another program.")

    def remove(self) -> bool:
        there = self.facts() is not None
        self.runtime.remove(self.name)
        self._forget_servers()
        self.removed = True
        return there

    def _forget_servers(self) -> None:
        for table in (self.added, self.weights, self.counters, self.preview_added, self.preview_weights,
                      self.preview_counters):
            table.clear()
        for names in (self.maint, self.draining):
            names.clear()

    def _backend(self, preview: bool = False) -> str | None:
        from kiln.router.config import backend_name

        svc = self.cfg.public_service
        if svc is None or (preview and not self.cfg.preview_port):
            return None
        return backend_name(svc.name, preview)

    def _status(self, name: str, preview: bool) -> str:
        """HAProxy's order: maintenance first, then a failing check; drain shows on a server that is up."""
        if not preview and name in self.maint:
            return "MAINT"
        if not self.runtime.healthy(name):
            return "DOWN"
        return "DRAIN" if not preview and name in self.draining else "UP"

    def servers(self, preview: bool = False) -> dict[str, ServerStat]:
        backend = self._backend(preview)
        if backend is None:
            return {}
        self._check_up()
        added, weights, counters = ((self.preview_added, self.preview_weights, self.preview_counters) if preview
                                    else (self.added, self.weights, self.counters))
        out = {}
        for name, address in added.items():
            responses, errors, ms = counters.get(name, (0, 0, 0))
            out[name] = ServerStat(backend, name, self._status(name, preview), 0, 0, responses, weights[name], address,
                                   responses, errors, ms)
        return out

    def add(self, server: str, address: str, port: int, check_interval: float, weight: int = FULL_WEIGHT,
            preview: bool = False) -> None:
        backend = self._backend(preview)
        if backend is None:
            raise RouterError(f"{self.cfg.app}/{self.cfg.env} has no {'preview ' if preview else ''}backend to add {server} to.")
        self._check_up()
        added = self.preview_added if preview else self.added
        if server in added:
            raise RouterError(f"HAProxy refused `add server {backend}/{server}`: "
                              "Already exists a server with the same name in backend.")
        self._check_weight(backend, server, weight)
        added[server] = f"{address}:{port}"
        (self.preview_weights if preview else self.weights)[server] = weight
        self.log.append(("add-preview" if preview else "add", server))

    def set_weights(self, weights: dict[str, int]) -> None:
        """As one request to HAProxy: every command that can be applied is, then the rest fail."""
        backend = self._backend()
        if backend is None:
            raise RouterError(f"{self.cfg.app}/{self.cfg.env} has no public service, so its router has no servers.")
        if not weights:
            return
        self._check_up()
        refused = []
        for name, weight in sorted(weights.items()):
            try:
                if name not in self.added:
                    raise RouterError(f"HAProxy refused `set server {backend}/{name} weight {weight}`: No such server.")
                self._check_weight(backend, name, weight)
            except RouterError as exc:
                refused.append(exc.message)
                continue
            self.weights[name] = weight
            self.log.append(("weight", f"{name}={weight}"))
        if refused:
            raise RouterError("; ".join(refused))

    def drain_and_remove(self, server: str, drain_timeout: float, dead: bool = False) -> float:
        if self._backend() is None:
            raise RouterError(f"{self.cfg.app}/{self.cfg.env} has no public service, so its router has no servers.")
        if server not in self.servers():
            self.remove_preview(server)
            return 0.0
        # As HAProxy's: no new requests (a dead one: maintenance), then the wait, then the delete.
        (self.maint if dead else self.draining).add(server)
        faults.point("draining")
        for table in (self.added, self.weights, self.counters):
            table.pop(server, None)
        self.draining.discard(server)
        self.maint.discard(server)
        self.remove_preview(server)
        self.log.append(("remove", server))
        return 0.0

    def remove_preview(self, server: str) -> None:
        if self._backend(preview=True) is not None and server in self.servers(preview=True):
            for table in (self.preview_added, self.preview_weights, self.preview_counters):
                table.pop(server, None)

    def get(self, path: str, timeout: float) -> tuple[int, str]:
        if not self.cfg.preview_port:
            raise RouterError(f"{self.cfg.app}/{self.cfg.env} has no preview port.")
        facts = self.runtime.container(self.name)
        if facts is None or not facts.running:
            raise ConnectionRefusedError(f"nothing listens on the preview port {self.cfg.preview_port}")
        serving = [n for n in sorted(self.preview_added)
                   if self.preview_weights[n] > 0 and self._status(n, preview=True) == "UP"]
        if not serving:
            return 503, self.NO_SERVER
        name = serving[self._turn % len(serving)]
        self._turn += 1
        status, body = self.runtime.answers(self.runtime._facts(name), path)  # UP: its container runs
        responses, errors, ms = self.preview_counters.get(name, (0, 0, 0))
        self.preview_counters[name] = (responses + 1, errors + (status >= 500), ms)
        return status, body

    @staticmethod
    def _check_weight(backend: str, server: str, weight: int) -> None:
        if not 0 <= weight <= 256:
            raise RouterError(f"HAProxy refused the weight {weight} of {backend}/{server}: "
                              "Absolute weight can only be between 0 and 256 inclusive.")

    def _check_up(self) -> None:
        facts = self.facts()
        if self.removed or (facts is not None and not facts.running):
            raise RouterError(f"the router {self.name} is not running")


def _implements(engine: FakeEngine, router: FakeRouter) -> tuple[Engine, Nodes, Router]:
    """Never called: mypy checks here that the fakes implement every method of the protocols."""
    return engine, engine, router
