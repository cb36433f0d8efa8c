"""Checks that span several parts of a spec; each problem carries the key path it is about."""

from __future__ import annotations

from collections.abc import Iterator

from kiln import engines
from kiln.providers.kind import EngineKind
from kiln.spec.models import NAME_MAX, NAME_RULE, ServiceOverride, Spec, valid_name
from kiln.spec.pipeline import pipeline_problems

Path = tuple[str | int, ...]
_NAME_HINT = f"use {NAME_RULE}, at most {NAME_MAX} characters"
_NONE = ServiceOverride()


def spec_problems(spec: Spec) -> Iterator[tuple[Path, str]]:
    if not valid_name(spec.app):
        yield ("app",), f"{spec.app!r} is not a valid name; {_NAME_HINT}"
    for name in spec.services:
        if not valid_name(name):
            yield ("services", name), f"service name {name!r} is not valid; {_NAME_HINT}"
    for name, env in spec.environments.items():
        if not valid_name(name):
            yield ("environments", name), f"environment name {name!r} is not valid; {_NAME_HINT}"
        for svc in env.services:
            if svc not in spec.services:
                known = ", ".join(spec.services)
                yield ("environments", name, "services", svc), f"no such service; services are: {known}"

    public = [n for n, s in spec.services.items() if s.public]
    with_port = [n for n, s in spec.services.items() if s.port is not None]
    if len(public) > 1:
        yield ("services", public[1], "public"), f"only one service can be public ({', '.join(public)} are)"
    elif public and spec.services[public[0]].port is None:
        yield ("services", public[0], "port"), "a public service needs a 'port'"
    elif not public and len(with_port) > 1:
        yield ("services",), f"several services have a port ({', '.join(with_port)}); mark one 'public: true'"

    for name, env in spec.environments.items():
        engine = engines.kind(env.engine)
        if engine.needs_registry and spec.registry is None:
            yield (("environments", name, "engine"),
                   f"engine {engine.name} needs a top-level 'registry: HOST[:PORT]/PATH', where its nodes pull images from")
        if env.placement is not None and not engine.has_nodes:
            yield (("environments", name, "placement"),
                   f"placement applies to a cluster engine only; set 'engine: {engines.clustered().name}'")
        yield from _engine_problems(spec, name, engine)

    seen: dict[tuple[str, int], str] = {}
    for name, env in spec.environments.items():
        for key_name, port in (("port", env.port), ("preview_port", env.preview_port)):
            if port is None:
                continue
            if (env.bind, port) in seen:
                yield ("environments", name, key_name), f"port {port} is already used by {seen[env.bind, port]}"
            seen[env.bind, port] = f"environment {name} ({key_name})"

    if spec.pipeline is not None:
        yield from pipeline_problems(spec.pipeline, spec.environments)

    for svc_name, service in spec.services.items():
        if service.rollout.strategy != "rolling" and svc_name != spec.public_service:
            yield (("services", svc_name, "rollout", "strategy"),
                   f"{service.rollout.strategy} moves public traffic, but {svc_name} is not the public service; use rolling")


_HEALTH_HINTS = {"http": "'http: /path'", "tcp": "'tcp: true'", "command": "'command: [...]'"}


def _engine_problems(spec: Spec, env: str, engine: EngineKind) -> Iterator[tuple[Path, str]]:
    """What the environment's engine cannot run, as it declares (on qemu: a VM runs each service's
    argv from its systemd unit, kiln reaches a VM through its port, no `exec` into it)."""
    on = f"environment {env} runs on engine {engine.name}"
    for svc_name, service in spec.services.items():
        if engine.needs_command and not service.command:
            yield (("services", svc_name, "command"), f"{on}, which needs each service's argv to run it; set 'command: [...]'")
        hc = service.healthcheck
        if hc is not None and hc.kind not in engine.health_kinds:
            how = ("through its port" if "command" not in engine.health_kinds
                   else f"by {', '.join(sorted(engine.health_kinds))}")
            hints = " or ".join(_HEALTH_HINTS[k] for k in sorted(engine.health_kinds))
            yield (("services", svc_name, "healthcheck", hc.kind), f"{on}, where kiln checks an instance {how}; use {hints}")
        if not engine.one_line_env:
            continue
        for key, value in [*service.environment.items(), *spec.environments[env].services.get(svc_name, _NONE).environment.items()]:
            if "\n" in value or "\x00" in value:
                yield (("services", svc_name, "environment", key),
                       f"{on}, whose instances take one-line environment values; put the value on one line")
