"""What kiln asks of an engine (a place that runs instances), as plain values and small protocols.

Capabilities, not one fat interface: `Images` bakes, finds, pushes and pulls images;
`Networks` makes the networks instances meet on; `Runtime` starts, lists, stops and removes
containers; `Observer` reads what drift detection and the agent need (configuration, changed
files, the engine's event stream). An `Engine` has all four: the Docker provider is one, the
in-memory fake another, and the contract tests hold both to the same behaviour."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from kiln.errors import NameTaken
from kiln.spec.hardening import Hardening
from kiln.spec.models import DEFAULT_CPUS, DEFAULT_MEMORY, DEFAULT_PIDS, HealthCheck

LABEL_PREFIX = "kiln."
ROLE_LABEL = "kiln.role"


class Role(StrEnum):
    """The part a container plays, in its `kiln.role` label. Stored on the engine (and selected
    by): the values are what running containers carry, and never change (tests/unit/test_vocab.py)."""

    INSTANCE = "instance"  # one instance of a release
    ROUTER = "router"  # an environment's HAProxy
    HOOK = "hook"  # a rollout's before_traffic / after_traffic hook, run once
    CI = "ci"  # a pipeline step, its sidecars and its network


INSTANCE, ROUTER, HOOK, CI = Role.INSTANCE, Role.ROUTER, Role.HOOK, Role.CI  # the members by their short names


def network_name(app: str, env: str) -> str:
    """The network an environment's instances and router meet on."""
    return f"kiln-{app}-{env}"


def short_image(ref: str) -> str:
    """An image as people read it: `sha256:` and 12 digits, or `repository@sha256:` and 12."""
    repo, at, digest = ref.rpartition("@")
    return f"{repo}{at}{digest[:19]}" if at else ref[:19]


def router_name(app: str, env: str) -> str:
    """The container of an environment's router."""
    return f"kiln-{app}-{env}-router"


def check_owner(what: str, name: str, have: dict[str, str], want: dict[str, str]) -> None:
    """NameTaken when the object called `name` (labelled `have`) belongs to another kiln
    environment than the one `want` selects."""
    owner = (have.get("kiln.app"), have.get("kiln.env"))
    mine = (want.get("kiln.app"), want.get("kiln.env"))
    if owner[0] is not None and owner != mine:
        raise NameTaken(f"the {what} {name} belongs to kiln environment {owner[0]}/{owner[1]}, not "
                        f"{mine[0]}/{mine[1]}: their names run together.",
                        f"Rename the app or the environment {mine[1]!r} in kiln.yaml (kiln leaves the other one alone).")


def selector(app: str, env: str | None = None, role: Role | None = None) -> dict[str, str]:
    """The labels that select an app's containers (of one environment, of one role)."""
    labels = {"kiln.app": app}
    if env is not None:
        labels["kiln.env"] = env
    if role is not None:
        labels[ROLE_LABEL] = Role(role).value  # checked: "instance" is Role.INSTANCE, a typo is an error
    return labels


@dataclass(frozen=True)
class Limits:
    """What one container may use: memory in bytes (swap included), CPU in cores, processes and
    threads. The defaults are an instance's (spec/models.Resources); 0 in ContainerDetails means
    the engine enforces no limit."""

    memory: int = DEFAULT_MEMORY
    cpus: float = DEFAULT_CPUS
    pids: int = DEFAULT_PIDS


# CI containers (ci/steps.py): a step compiles and runs test suites, so it gets more memory and
# processes than an instance; a sidecar (a database, a cache) as much as a generous instance.
# One core each: every host has one, and the engine refuses more CPUs than the host has.
STEP_LIMITS = Limits(memory=2 * 1024**3, cpus=1.0, pids=1024)
SIDECAR_LIMITS = Limits(memory=1024**3, cpus=1.0, pids=512)


@dataclass(frozen=True)
class ContainerSpec:
    """Everything needed to start one container. Built by pure code, run by a provider."""

    name: str
    image: str
    network: str
    labels: dict[str, str]
    command: tuple[str, ...] | None = None
    environment: dict[str, str] = field(default_factory=dict)
    hardening: Hardening = Hardening()  # user, read-only root, tmpfs mounts, capabilities kept, no-new-privileges
    stop_grace_period: float = 10.0
    health_command: tuple[str, ...] | None = None  # run by the engine for command healthchecks
    health_interval: float = 1.0
    health_timeout: float = 2.0
    publish: dict[int, tuple[str, int]] = field(default_factory=dict)  # container port -> (host ip, port)
    binds: dict[str, str] = field(default_factory=dict)  # host path -> container path
    ro_binds: dict[str, str] = field(default_factory=dict)  # the same, read-only
    devices: tuple[str, ...] = ()  # host devices passed in (the QEMU launcher's /dev/kvm)
    restart: bool = False  # restart with the engine (the router); instances are replaced instead
    aliases: tuple[str, ...] = ()  # other names the container answers to on its network (CI sidecars)
    limits: Limits = Limits()  # every container kiln starts has them
    constraints: tuple[str, ...] = ()  # placement on a cluster engine ("node.labels.pool == web")


@dataclass(frozen=True)
class ContainerFacts:
    """One container as observed."""

    id: str
    name: str
    image: str  # image id, sha256:…
    labels: dict[str, str]
    state: str  # created, running, exited, dead…
    health: str | None  # engine health status, when the container has a healthcheck
    ip: str | None  # address on the container's kiln network
    exit_code: int | None
    node: str | None = None  # the host it runs on, on an engine of several (Swarm)

    @property
    def running(self) -> bool:
        return self.state == "running"

    def label(self, key: str) -> str | None:
        return self.labels.get(LABEL_PREFIX + key)


@dataclass(frozen=True)
class ContainerDetails:
    """What drift detection and the hardening checks read from one container's configuration."""

    env: dict[str, str]
    read_only: bool
    cap_drop: tuple[str, ...]
    cap_add: tuple[str, ...]
    security_opt: tuple[str, ...]
    user: str
    privileged: bool
    tmpfs: tuple[str, ...]  # paths mounted as tmpfs
    mounts: tuple[str, ...]  # other mounts, as "source:destination"
    limits: Limits  # as the engine enforces them; 0: none


@dataclass(frozen=True)
class EngineEvent:
    """One container event from the engine: die, oom, exec_start, health_status…"""

    action: str  # the verb without its detail: "exec_start: sh -c x" is exec_start
    detail: str  # "sh -c x" for exec_start, "healthy" for health_status
    name: str
    labels: dict[str, str]
    at: float  # epoch seconds

    def label(self, key: str) -> str | None:
        return self.labels.get(LABEL_PREFIX + key)


@dataclass(frozen=True)
class Finished:
    """How a container run to its end finished: its exit code, or None with why it was stopped."""

    code: int | None
    stopped: str = ""  # "timeout" or "cancelled" when kiln stopped it


class Images(Protocol):
    def image_id(self, ref: str) -> str | None: ...
    def image_env(self, image: str) -> dict[str, str]: ...
    def find_image(self, tag: str, labels: dict[str, str]) -> str | None: ...
    def images(self, labels: dict[str, str]) -> list[tuple[str, tuple[str, ...]]]: ...
    def remove_image(self, image: str) -> None: ...
    def import_rootfs(self, tarball: Path, tag: str, labels: dict[str, str], changes: list[str]) -> str: ...
    def export_rootfs(self, image: str, dest: Path) -> None: ...
    def build(self, context: BinaryIO, dockerfile: str, tag: str, args: dict[str, str],
              labels: dict[str, str], on_line: Callable[[str], None]) -> str: ...
    def push(self, image: str, repository: str) -> str: ...
    def pull(self, ref: str) -> str: ...
    def publish(self, image: str, repository: str | None) -> str: ...


class Networks(Protocol):
    def ensure_network(self, name: str, labels: dict[str, str]) -> None: ...  # NameTaken: another's
    def remove_network(self, name: str, labels: dict[str, str] | None = None) -> None: ...  # only if it has `labels`


class Runtime(Protocol):
    def start(self, spec: ContainerSpec) -> ContainerFacts: ...
    def containers(self, labels: dict[str, str]) -> list[ContainerFacts]: ...
    def container(self, name: str) -> ContainerFacts | None: ...
    def logs(self, name: str, tail: int = 20) -> str: ...
    def stop(self, name: str, grace: float) -> None: ...
    def remove(self, name: str) -> None: ...
    def run_once(self, spec: ContainerSpec, timeout: float) -> tuple[int | None, str]: ...
    def run_streamed(self, spec: ContainerSpec, on_line: Callable[[str], None], timeout: float,
                     cancelled: Callable[[], bool]) -> Finished: ...


class Prober(Protocol):
    """kiln's own requests to an instance: its readiness check, and a smoke check's GET."""

    def probe(self, c: ContainerFacts, check: HealthCheck | None, port: int | None) -> bool: ...
    def get(self, c: ContainerFacts, port: int, path: str, timeout: float) -> tuple[int, str]: ...


class Observer(Protocol):
    def enforceable(self, spec: ContainerSpec) -> ContainerSpec: ...
    def details(self, name: str) -> ContainerDetails | None: ...
    def changes(self, name: str) -> list[str]: ...
    def events(self, labels: dict[str, str], since: float | None = None,
               until: float | None = None) -> Iterator[EngineEvent]: ...


@dataclass(frozen=True)
class NodeFacts:
    """One host of a cluster engine."""

    id: str
    hostname: str
    role: str  # manager or worker
    availability: str  # active, pause (no new instances) or drain (none at all)
    state: str  # ready, down, unknown…
    address: str
    labels: dict[str, str] = field(default_factory=dict)
    leader: bool = False


AVAILABILITY = ("active", "pause", "drain")  # what Nodes.set_availability may set


@runtime_checkable
class Nodes(Protocol):
    """The hosts of a cluster engine (Swarm), and whether new instances may land on each."""

    def nodes(self) -> list[NodeFacts]: ...
    def set_availability(self, node: str, availability: str) -> None: ...


class Engine(Images, Networks, Runtime, Prober, Observer, Protocol):
    """Everything a rollout, the agent and a pipeline need from one engine."""

    name: str
    # A container on the host's network reaches instances at their addresses (one host's bridges):
    # the router then listens on the host itself, without Docker's userland proxy in the way.
    host_network: bool
