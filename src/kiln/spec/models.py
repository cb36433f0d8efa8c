"""The kiln.yaml schema. These models are both the validation and the reference documentation
(`kiln init` and docs/spec.md are written from the field descriptions)."""

from __future__ import annotations

import ipaddress
import re
from typing import TYPE_CHECKING, Annotated, Literal, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from kiln import engines
from kiln.errors import UsageError
from kiln.providers.qemu_kind import VM_BOOT_TIMEOUT
from kiln.secretref import Environ
from kiln.spec.durations import Duration
from kiln.spec.hardening import DEFAULT_WRITABLE
from kiln.spec.pipeline import Pipeline
from kiln.spec.sizes import DiskSize, Memory
from kiln.spec.smoke import SmokeCheck, path_problem

NAME = re.compile(r"[a-z][a-z0-9-]*")  # app, service and environment names (they make container names)
NAME_MAX = 31
NAME_RULE = "lowercase letters, digits and '-', starting with a letter"


def valid_name(name: str, longest: int = NAME_MAX) -> bool:
    """Whether `name` may name an app, a service or an environment."""
    return len(name) <= longest and NAME.fullmatch(name) is not None


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_SUITE = re.compile(r"[a-z][a-z0-9.-]{0,63}")
_MIRROR = re.compile(r"https?://[^\s'\"\\]{1,500}")
_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]{0,127}")  # Debian policy 5.6.1


class Base(Model):
    """The OS image kiln bakes from Debian's packages with debootstrap (no registry needed)."""

    suite: str = Field("bookworm", description="Debian release to bootstrap")
    packages: tuple[str, ...] = Field((), description="Debian packages to include, e.g. python3")
    mirror: str = Field("http://deb.debian.org/debian", description="Debian mirror (plain HTTP works)")

    @model_validator(mode="after")
    def _debootstrap_words(self) -> Base:
        # each reaches debootstrap's command line (run as root): none may pass for an option
        if not _SUITE.fullmatch(self.suite):
            raise ValueError(f"suite {self.suite[:80]!r} is not a Debian release name (e.g. bookworm)")
        if not _MIRROR.fullmatch(self.mirror):
            raise ValueError(f"mirror {self.mirror[:80]!r} is not an http:// or https:// URL")
        for package in self.packages:
            if not _PACKAGE.fullmatch(package):
                raise ValueError(f"package {package[:80]!r} is not a Debian package name")
        return self


def inside_problem(path: str) -> str | None:
    """Why `path` (build.context, build.dockerfile) could leave the directory it is relative to,
    or None. Symlinks are checked when the files are read (bake/baker.py)."""
    parts = path.replace("\\", "/").split("/")
    if path.startswith(("/", "\\")) or (len(path) > 1 and path[1] == ":"):
        return f"{path!r} is an absolute path; give one relative to kiln.yaml's directory, inside it"
    if ".." in parts:
        return f"{path!r} leaves kiln.yaml's directory ('..'); the build reads only files inside it"
    if "\x00" in path or not path.strip():
        return f"{path!r} is not a path"
    return None


MIN_VM_SIZE = 1024**3


class VmBuild(Model):
    """A bootable VM disk image baked from the same inputs as the app image (docs/vm.md)."""

    size: DiskSize = Field(2 * 1024**3, description="size of the disk image (the root filesystem fills it), at least 1G")
    formats: tuple[Literal["qcow2", "raw", "gce", "vmdk"], ...] = Field(("qcow2",), description="formats `kiln bake --vm` also writes beside the image: qcow2 (OpenStack), raw, gce (disk.raw in a .tar.gz), vmdk (AWS import)")
    boot_timeout: Duration = Field(VM_BOOT_TIMEOUT, description="time a VM has to boot, added to each service's healthcheck deadline on `engine: qemu`")

    @model_validator(mode="after")
    def _big_enough(self) -> VmBuild:
        if self.size < MIN_VM_SIZE:
            raise ValueError("size: a VM image needs at least 1G (kernel, systemd and the app)")
        return self


class Build(Model):
    """How the app image is baked."""

    context: str = Field(".", description="build context: a directory inside kiln.yaml's, relative to it (no '..', no absolute path, no symlink out)")
    dockerfile: str | None = Field(None, description="a Dockerfile in the context, relative to it (no '..'); start it with `ARG KILN_BASE` and `FROM ${KILN_BASE}`")
    steps: tuple[str, ...] = Field((), description="Dockerfile instructions run on top of the base, instead of a Dockerfile")
    base: Base = Field(default_factory=Base, description="the base image to bake from")
    args: dict[str, str] = Field(default_factory=dict, description="build arguments")
    allow_secrets: tuple[str, ...] = Field((), description="glob patterns of context files that look like secrets but may be baked")
    vm: VmBuild | None = Field(None, description="also bake a bootable VM image from the same inputs (see build.vm); `engine: qemu` uses the defaults when absent")

    @model_validator(mode="after")
    def _one_recipe(self) -> Build:
        for key, value in (("context", self.context), ("dockerfile", self.dockerfile)):
            problem = inside_problem(value) if value is not None else None
            if problem:
                raise ValueError(f"{key}: {problem}")
        if self.dockerfile and self.steps:
            raise ValueError("give either 'dockerfile' or 'steps', not both")
        if not self.dockerfile and not self.steps:
            raise ValueError("give a 'dockerfile' (a path in the context) or a list of 'steps'")
        return self


class HealthCheck(Model):
    """How kiln decides an instance is ready: one of http, tcp or command."""

    http: str | None = Field(None, description="HTTP path that must answer 2xx, e.g. /health")
    tcp: bool = Field(False, description="the service port accepts a TCP connection")
    command: tuple[str, ...] | None = Field(None, description="command run inside the instance; exit 0 is healthy")
    interval: Duration = Field(1.0, description="time between checks")
    timeout: Duration = Field(2.0, description="time one check may take")
    deadline: Duration = Field(60.0, description="time a new instance has to become healthy before the rollout aborts")

    @model_validator(mode="after")
    def _exactly_one(self) -> HealthCheck:
        kinds = [k for k, v in (("http", self.http), ("tcp", self.tcp), ("command", self.command)) if v]
        if len(kinds) != 1:
            raise ValueError("give exactly one of 'http: /path', 'tcp: true' or 'command: [...]'")
        problem = path_problem(self.http, "http path") if self.http is not None else None
        if problem:
            raise ValueError(problem)
        return self

    @property
    def kind(self) -> Literal["http", "tcp", "command"]:
        return "http" if self.http else "tcp" if self.tcp else "command"


def _count_or_percent(value: object) -> int | str:
    """An instance count (2) or a share of the replicas ("25%")."""
    if isinstance(value, bool):
        raise ValueError("expected a count such as 1 or a percentage such as '25%'")
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str) and value.endswith("%") and value[:-1].isdigit() and int(value[:-1]) <= 100:
        return value
    raise ValueError(f"{value!r} is neither a count (0, 1, 2…) nor a percentage such as '25%'")


CountOrPercent = Annotated[int | str, BeforeValidator(_count_or_percent)]

# HOST[:PORT]/PATH as docker names a repository: lowercase, no scheme, no tag or digest.
_REGISTRY = re.compile(r"[a-z0-9]([a-z0-9.-]{0,252}[a-z0-9])?(:[0-9]{1,5})?(/[a-z0-9]+([._-][a-z0-9]+)*)+")
# node.*, engine.labels.* compared with == or != to a plain value (Swarm's constraint grammar).
_CONSTRAINT = re.compile(r"(node\.[a-z.]+|node\.labels\.[\w.-]+|engine\.labels\.[\w.-]+)\s*(==|!=)\s*[\w.:/-]+")


def _registry(value: object) -> str:
    if not isinstance(value, str) or not _REGISTRY.fullmatch(value) or len(value) > 255:
        raise ValueError(f"{value!r} is not a registry repository path; use HOST[:PORT]/PATH, e.g. 10.77.0.1:5000/kiln")
    return value


def _constraint(value: object) -> str:
    if not isinstance(value, str) or not _CONSTRAINT.fullmatch(value.strip()):
        raise ValueError(f"{value!r} is not a Swarm placement constraint; use e.g. 'node.labels.pool == web' "
                         "or 'node.role != manager'")
    return value.strip()


Registry = Annotated[str, BeforeValidator(_registry)]
Constraint = Annotated[str, BeforeValidator(_constraint)]


class CanaryStep(Model):
    """One step of a canary: the new release's share of the traffic, held for `pause`."""

    weight: int = Field(..., ge=1, le=100, description="percent of requests sent to the new release")
    pause: Duration = Field(30.0, description="how long the share is held and analysed before the next step")


class Analysis(Model):
    """When a canary counts as worse than the release it replaces (from HAProxy's per-server statistics)."""

    max_error_rate: float = Field(1.0, ge=0, le=100, description="highest share of 5xx responses from the canary, in percent")
    max_latency_ratio: float = Field(2.0, gt=0, description="canary's mean response time may be at most this multiple of the baseline's")
    min_latency: Duration = Field(0.05, description="response times below this never fail the latency test (noise floor)")
    min_requests: int = Field(10, ge=1, description="responses the canary must have served before it can fail the error-rate test")


Strategy = Literal["rolling", "blue-green", "canary"]  # also stored: a rollout records its strategy
STRATEGIES: tuple[str, ...] = get_args(Strategy)


def strategy_of(value: str | None) -> str | None:
    """`value` (a --strategy or an API field) when it names a strategy; None stays None."""
    if value is not None and value not in STRATEGIES:
        raise UsageError(f"unknown strategy {value!r}.", f"Use one of: {', '.join(STRATEGIES)}.")
    return value


class RolloutPolicy(Model):
    """How a new release replaces the one in service."""

    strategy: Strategy = Field("rolling", description="rolling, blue-green or canary (only the public service can use blue-green or canary; others roll)")
    max_surge: CountOrPercent = Field("100%", description="rolling: instances started above `replicas`, a count or a percentage")
    max_unavailable: CountOrPercent = Field(0, description="rolling: instances that may be out of service below `replicas`")
    steps: tuple[CanaryStep, ...] = Field((CanaryStep(weight=10, pause=30.0), CanaryStep(weight=50, pause=30.0)),
                                          description="canary: traffic shares and pauses before the switch to 100%")
    analysis: Analysis = Field(default_factory=Analysis, description="canary: thresholds that abort the rollout")
    smoke: tuple[SmokeCheck, ...] = Field((), description="checks the new release must pass before it gets traffic")
    promote: Literal["auto", "manual"] = Field("auto", description="blue-green: switch after the smoke checks, or wait for `kiln promote`")
    keep_old: Duration = Field(0.0, description="blue-green: keep the old set running but idle this long, so that `kiln rollback` is instant")
    before_traffic: tuple[str, ...] | None = Field(None, description="command run once in a container of the new release before it gets traffic (e.g. migrations); failure aborts")
    after_traffic: tuple[str, ...] | None = Field(None, description="command run once in a container of the new release after it serves all traffic")
    hook_timeout: Duration = Field(300.0, description="longest time a hook may run")

    @model_validator(mode="after")
    def _consistent(self) -> RolloutPolicy:
        if self.max_surge in (0, "0%") and self.max_unavailable in (0, "0%"):
            raise ValueError("max_surge and max_unavailable cannot both be 0: the rollout could never make progress")
        weights = [s.weight for s in self.steps]
        if weights != sorted(set(weights)):
            raise ValueError("canary step weights must increase, e.g. 10, 50")
        return self


DEFAULT_MEMORY = 512 * 1024**2
DEFAULT_CPUS = 1.0
DEFAULT_PIDS = 512


class Resources(Model):
    """Limits on each instance of a service, enforced by the engine (cgroups). A process that
    leaks memory, spins or forks without bound is stopped at its own limit instead of taking the
    host and every other instance with it. The defaults suit a typical web process; raise them
    for heavier ones."""

    memory: Memory = Field(DEFAULT_MEMORY, description="memory limit (swap included): bytes, or a number with K, M or G (powers of 1024), at least 6M; an instance that goes over it is killed (OOM) and replaced. Default 512M: room for a typical web process and its 64M tmpfs mounts, small enough that one leak cannot exhaust the host")
    cpus: float = Field(DEFAULT_CPUS, gt=0, le=1024, description="CPU time, in cores (0.5 = half of one); more than the host has is refused by the engine. Default 1.0: one core, available on every host, so one busy instance cannot starve the others")
    pids: int = Field(DEFAULT_PIDS, ge=16, le=4_194_304, description="most processes and threads at once. Default 512: ample for worker pools and thread pools, and stops a fork bomb")


class ResourcesOverride(Model):
    """What an environment may change of a service's limits; what it leaves out stays the service's."""

    memory: Memory | None = Field(None, description="memory limit in this environment (as services.NAME.resources.memory)")
    cpus: float | None = Field(None, gt=0, le=1024, description="CPU limit in this environment, in cores")
    pids: int | None = Field(None, ge=16, le=4_194_304, description="process and thread limit in this environment")


# Linux capabilities a service may keep: Docker's default set (what a container gets when nobody
# drops anything), which Docker judges safe for ordinary containers. The rest (SYS_ADMIN,
# NET_ADMIN, SYS_PTRACE, SYS_MODULE, DAC_READ_SEARCH, ALL, …) reach past the container and are
# refused: an app needing one is not run by kiln hardened, and must not look as if it were.
CAPABILITIES = frozenset({"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                          "NET_BIND_SERVICE", "NET_RAW", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"})


def _capability(value: object) -> str:
    """A capability as Docker names it (NET_BIND_SERVICE), from any case, with or without CAP_."""
    name = value.upper().removeprefix("CAP_") if isinstance(value, str) else ""
    if name not in CAPABILITIES:
        raise ValueError(f"{str(value)[:40]!r} is not a capability kiln lets a service keep; allowed: "
                         f"{', '.join(sorted(CAPABILITIES))} (docs/security.md: Hardening a pushed kiln.yaml may not relax)")
    return name


Capability = Annotated[str, BeforeValidator(_capability)]


def _ip_literal(value: object) -> str:
    """An address to listen on: an IPv4 or IPv6 literal, never a name (it is written into
    haproxy.cfg and given to the engine as is)."""
    try:
        if not isinstance(value, str) or "%" in value:  # no IPv6 scope (%eth0): not one word HAProxy reads
            raise ValueError
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"{str(value)[:80]!r} is not an IP address; give one such as 127.0.0.1 (this host only, "
                         "the default), 0.0.0.0 (every address) or ::1") from None


IpLiteral = Annotated[str, BeforeValidator(_ip_literal)]


class Service(Model):
    """One process type of the app; every instance runs the same image."""

    command: tuple[str, ...] | None = Field(None, description="argv to run; default: the image's CMD")
    port: int | None = Field(None, ge=1, le=65535, description="port the service listens on inside the instance")
    public: bool = Field(False, description="receives the environment's public traffic (needed only with several ports)")
    replicas: int = Field(1, ge=0, le=256, description="number of instances")
    healthcheck: HealthCheck | None = Field(None, description="readiness check; default: tcp when a port is set")
    environment: Environ = Field(default_factory=dict, description="environment variables; a value `secret:NAME` is looked up when an instance starts (KILN_SECRET_NAME) and never recorded")
    writable: tuple[str, ...] = Field(DEFAULT_WRITABLE, description="paths mounted as tmpfs; the rest of the filesystem is read-only")
    user: str | None = Field(None, description="user to run as, e.g. 65534 (nobody)")
    read_only: bool = Field(True, description="read-only root filesystem (relaxation: false)")
    cap_add: tuple[Capability, ...] = Field((), description="Linux capabilities to keep (all are dropped by default); only those of Docker's default set, e.g. NET_BIND_SERVICE")
    no_new_privileges: bool = Field(True, description="forbid privilege escalation (relaxation: false)")
    stop_grace_period: Duration = Field(10.0, description="time between SIGTERM and SIGKILL")
    drain_timeout: Duration = Field(5.0, description="longest wait for in-flight requests when an instance leaves the router")
    resources: Resources = Field(default_factory=Resources, description="memory, CPU and process limits of each instance (see services.NAME.resources)")
    rollout: RolloutPolicy = Field(default_factory=RolloutPolicy, description="how new releases replace old ones (see services.NAME.rollout)")

    @model_validator(mode="after")
    def _health_needs_port(self) -> Service:
        hc = self.healthcheck
        if hc is not None and hc.kind in ("http", "tcp") and self.port is None:
            raise ValueError(f"a {hc.kind} healthcheck needs 'port' to be set")
        for path in self.writable:
            if not path.startswith("/"):
                raise ValueError(f"writable path {path!r} must be absolute, e.g. /{path}")
        return self


class ServiceOverride(Model):
    """What an environment may change for one service."""

    replicas: int | None = Field(None, ge=0, le=256, description="number of instances in this environment")
    environment: Environ = Field(default_factory=dict, description="variables added to (or replacing) the service's (`secret:NAME` as for services)")
    command: tuple[str, ...] | None = Field(None, description="argv to run in this environment")
    resources: ResourcesOverride | None = Field(None, description="limits changed in this environment, e.g. {memory: 1G}; the rest stay the service's")


class Meltdown(Model):
    """When the agent stops replacing failed instances (as BOSH's resurrector does): too many
    failures at once point at something replacing cannot fix, and churning would make it worse."""

    max_failures: CountOrPercent = Field("50%", description="failures within `window` the agent still heals, a count or a share of the instances; one more halts healing")
    window: Duration = Field(60.0, description="how far back failures are counted; healing resumes once they fall within the limit again")


class AgentPolicy(Model):
    """How `kiln agent` keeps this environment at its current release."""

    drift: Literal["replace", "report"] = Field("replace", description="a tainted instance (changed files, `docker exec`, wrong image/env/labels) is replaced, or only reported")
    interval: Duration = Field(5.0, description="time between full reconcile passes (engine events trigger one at once)")
    meltdown: Meltdown = Field(default_factory=Meltdown, description="when to stop replacing failed instances")


class Placement(Model):
    """Where a cluster engine (`engine: swarm`) may run the environment's instances."""

    spread: Literal["node"] = Field("node", description="how instances are placed: each new one goes to the eligible node running the fewest tasks at that moment (Swarm's scheduler); one release is not guaranteed an even spread (uneven ones such as 3/2/1 were seen after rollouts that start the new set beside the old)")
    constraints: tuple[Constraint, ...] = Field((), description="Swarm placement constraints every instance must satisfy, e.g. `node.labels.pool == web`, `node.role != manager`")


if TYPE_CHECKING:
    EngineName = str
else:
    EngineName = Literal[engines.NAMES]  # the names kiln/engines.py lists


class Environment(Model):
    """One environment: only what differs from the shared definition."""

    port: int = Field(..., ge=1, le=65535, description="public port of the environment's router")
    engine: EngineName = Field(engines.DEFAULT_ENGINE, description=engines.description())
    placement: Placement | None = Field(None, description="where instances may run on a cluster engine (`engine: swarm` only)")
    bind: IpLiteral = Field("127.0.0.1", description="IP address the router listens on (loopback unless told otherwise; 0.0.0.0 for every address)")
    preview_port: int | None = Field(None, ge=1, le=65535, description="port where a blue-green release is reachable before it gets public traffic")
    services: dict[str, ServiceOverride] = Field(default_factory=dict, description="per-service overrides")
    agent: AgentPolicy = Field(default_factory=AgentPolicy, description="self-healing and drift policy of `kiln agent` (see environments.NAME.agent)")


class Spec(Model):
    """A whole kiln.yaml."""

    app: str = Field(..., description="application name: lowercase letters, digits and '-'")
    registry: Registry | None = Field(None, description="where baked images are pushed for a cluster engine, `HOST[:PORT]/PATH` (e.g. `10.77.0.1:5000/kiln`); its nodes pull them by digest. Needed by `engine: swarm`")
    build: Build = Field(..., description="how the app image is baked (see build)")
    services: dict[str, Service] = Field(..., min_length=1, description="process types of the app, by name (see services.NAME)")
    environments: dict[str, Environment] = Field(..., min_length=1, description="where it runs, by name; the first is the default (see environments.NAME)")
    pipeline: Pipeline | None = Field(None, description="continuous delivery: the steps `kiln ci run` runs for each commit (see pipeline)")

    @property
    def public_service(self) -> str | None:
        for name, svc in self.services.items():
            if svc.public:
                return name
        ports = [n for n, s in self.services.items() if s.port is not None]
        return ports[0] if ports else None
