"""Checks that span several parts of a spec; each problem carries the key path it is about."""

from __future__ import annotations

from collections.abc import Iterator

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
        if env.engine == "swarm" and spec.registry is None:
            yield (("environments", name, "engine"),
                   "engine swarm needs a top-level 'registry: HOST[:PORT]/PATH', where its nodes pull images from")
        if env.placement is not None and env.engine != "swarm":
            yield ("environments", name, "placement"), "placement applies to a cluster engine only; set 'engine: swarm'"
        if env.engine == "qemu":
            yield from _vm_problems(spec, name)

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


def _vm_problems(spec: Spec, env: str) -> Iterator[tuple[Path, str]]:
    """What a VM cannot run: kiln's checks reach a VM through its port (no `exec` into it)."""
    for svc_name, service in spec.services.items():
        if not service.command:
            yield (("services", svc_name, "command"),
                   f"environment {env} runs on engine qemu, whose systemd unit needs the argv to run; set 'command: [...]'")
        hc = service.healthcheck
        if hc is not None and hc.kind == "command":
            yield (("services", svc_name, "healthcheck", "command"),
                   f"environment {env} runs on engine qemu, where kiln checks an instance through its port; use 'http: /path' or 'tcp: true'")
        for key, value in [*service.environment.items(), *spec.environments[env].services.get(svc_name, _NONE).environment.items()]:
            if "\n" in value or "\x00" in value:
                yield (("services", svc_name, "environment", key),
                       f"environment {env} runs on engine qemu, whose systemd units take one-line values; put the value on one line")
