"""Resolve a spec for one environment: the shared definition with the environment's overlay
applied. The result is what a release records, so it holds plain values only."""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, ConfigDict

from kiln.engines import DEFAULT_ENGINE, kind
from kiln.errors import UsageError
from kiln.spec.hardening import Hardening
from kiln.spec.models import HealthCheck, Resources, Spec
from kiln.spec.sizes import format_size


def url_host(bind: str) -> str:
    """The host to reach a listener bound to `bind` at: itself, except that "any address"
    (0.0.0.0 or ::, or an empty bind an older kiln recorded) is reached on the loopback address."""
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(bind, bind)


def host_port(host: str, port: int) -> str:
    """host:port as URLs and HAProxy's `bind` write it: an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Resolved(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServiceConfig(Resolved):
    name: str
    command: tuple[str, ...] | None
    port: int | None
    public: bool
    replicas: int
    healthcheck: HealthCheck | None
    environment: dict[str, str]
    writable: tuple[str, ...]
    user: str | None
    read_only: bool
    cap_add: tuple[str, ...]
    no_new_privileges: bool
    stop_grace_period: float
    drain_timeout: float
    # A config recorded before limits existed has none: it reads as the defaults, which are what
    # its digest stands for (EnvConfig.digest leaves default limits out).
    resources: Resources = Resources()

    @property
    def limits(self) -> str:
        """The limits as `kiln status` shows them: memory 512M, cpus 1, pids 512."""
        r = self.resources
        return f"memory {format_size(r.memory)}, cpus {r.cpus:g}, pids {r.pids}"

    @property
    def hardening(self) -> Hardening:
        """How its instances are confined, as one value (spec/hardening.py). The record keeps the
        flat fields (its JSON form, and so the digests of recorded releases, stay as they were);
        this is the one place they become the value."""
        return Hardening(user=self.user, read_only=self.read_only, writable=self.writable, cap_add=self.cap_add,
                         no_new_privileges=self.no_new_privileges)

    def relaxed(self) -> list[tuple[str, str]]:
        """Hardening defaults this service gives up, as the spec asked: (its key, what it says),
        e.g. ("cap_add", "cap_add: NET_RAW"). A pushed kiln.yaml needs a right for each (ci/trust.py)."""
        return self.hardening.relaxed()

    @property
    def relaxations(self) -> list[str]:
        """What `relaxed` says, as `kiln status` and `kiln env diff` show it."""
        return [said for _, said in self.relaxed()]


class EnvConfig(Resolved):
    app: str
    env: str
    port: int
    bind: str
    services: tuple[ServiceConfig, ...]
    preview_port: int | None = None
    engine: str = DEFAULT_ENGINE
    registry: str | None = None  # where the release's image is pushed, on an engine that records it
    constraints: tuple[str, ...] = ()  # a cluster engine's placement constraints

    @property
    def repository(self) -> str | None:
        """Where this environment's images are pushed (`registry/app`), if they travel by registry."""
        return f"{self.registry}/{self.app}" if self.registry else None

    def find(self, name: str) -> ServiceConfig | None:
        return next((svc for svc in self.services if svc.name == name), None)

    def service(self, name: str) -> ServiceConfig:
        svc = self.find(name)
        if svc is not None:
            return svc
        raise UsageError(f"{self.app}/{self.env} has no service {name!r}.",
                         f"Its services: {', '.join(s.name for s in self.services)}.")

    @property
    def public_service(self) -> ServiceConfig | None:
        return next((s for s in self.services if s.public), None)

    @property
    def lead_service(self) -> ServiceConfig:
        """The service a rollout's policy and hooks belong to: the public one, else the first."""
        return self.public_service or self.services[0]

    @property
    def url(self) -> str:
        return self._url(self.port)

    @property
    def preview_url(self) -> str | None:
        return self._url(self.preview_port) if self.preview_port else None

    def _url(self, port: int) -> str:
        return f"http://{host_port(url_host(self.bind), port)}"

    def digest(self) -> str:
        data = self.model_dump(mode="json")
        if data["engine"] == DEFAULT_ENGINE:
            del data["engine"]  # the default: digests of releases recorded before engines existed stay valid
        for key, empty in (("registry", None), ("constraints", [])):
            if data[key] == empty:
                del data[key]  # likewise for releases recorded before clusters existed
        default = Resources().model_dump(mode="json")
        for svc in data["services"]:
            if svc["resources"] == default:
                del svc["resources"]  # likewise for releases recorded before limits existed
        return hashlib.sha256(canonical_json(data).encode()).hexdigest()


def canonical_json(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def pick_env(spec: Spec, env: str | None) -> str:
    """The environment a command works on: the one named, or the only/first declared one."""
    if env is None:
        return next(iter(spec.environments))
    if env not in spec.environments:
        raise UsageError(
            f"unknown environment {env!r}.",
            f"Environments in kiln.yaml: {', '.join(spec.environments)}.",
        )
    return env


def resolve(spec: Spec, env: str) -> EnvConfig:
    overlay = spec.environments[env]
    engine = kind(overlay.engine)
    grace = engine.boot_grace(spec)
    public = spec.public_service
    services = []
    for name, svc in spec.services.items():
        over = overlay.services.get(name)
        resources = svc.resources
        if over and over.resources:
            resources = resources.model_copy(update=over.resources.model_dump(exclude_none=True))
        hc = svc.healthcheck
        if hc is None and svc.port is not None:
            hc = HealthCheck(tcp=True)
        if hc is not None and grace:  # a new instance boots first (a whole machine, on qemu)
            hc = hc.model_copy(update={"deadline": hc.deadline + grace})
        services.append(
            ServiceConfig(
                name=name,
                command=over.command if over and over.command is not None else svc.command,
                port=svc.port,
                public=name == public,
                replicas=over.replicas if over and over.replicas is not None else svc.replicas,
                healthcheck=hc,
                environment={**svc.environment, **(over.environment if over else {})},
                writable=svc.writable,
                user=svc.user,
                read_only=svc.read_only,
                cap_add=svc.cap_add,
                no_new_privileges=svc.no_new_privileges,
                stop_grace_period=svc.stop_grace_period,
                drain_timeout=svc.drain_timeout,
                resources=resources,
            )
        )
    return EnvConfig(app=spec.app, env=env, port=overlay.port, bind=overlay.bind, services=tuple(services),
                     preview_port=overlay.preview_port, engine=overlay.engine,
                     registry=spec.registry if engine.records_registry else None,
                     constraints=tuple(overlay.placement.constraints) if overlay.placement else ())
