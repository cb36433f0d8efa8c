"""What an instance of a release looks like to the engine. Pure: ContainerSpec values.

Hardened by default: read-only root filesystem with tmpfs only at declared writable paths,
no-new-privileges, every capability dropped, an init process as PID 1, no published port and
no Docker socket; memory, CPU and pids limits (services.NAME.resources). Each relaxation comes from the spec and is visible in `kiln status`."""

from __future__ import annotations

import secrets

from kiln.providers.base import ROLE_LABEL, ContainerSpec, Limits, Role, network_name
from kiln.spec.resolve import EnvConfig, ServiceConfig


def instance_labels(cfg: EnvConfig, service: str, release: int, instance: str) -> dict[str, str]:
    return {
        "kiln.app": cfg.app,
        "kiln.env": cfg.env,
        ROLE_LABEL: Role.INSTANCE.value,
        "kiln.service": service,
        "kiln.release": str(release),
        "kiln.instance": instance,
        "kiln.config": cfg.digest(),
    }


def new_instance_name(cfg: EnvConfig, service: str, release: int) -> str:
    return f"kiln-{cfg.app}-{cfg.env}-{service}-v{release}-{secrets.token_hex(3)}"


def instance_spec(cfg: EnvConfig, svc: ServiceConfig, release: int, image: str, name: str) -> ContainerSpec:
    hc = svc.healthcheck
    env = {**svc.environment, "KILN_APP": cfg.app, "KILN_ENV": cfg.env, "KILN_SERVICE": svc.name,
           "KILN_RELEASE": str(release), "KILN_INSTANCE": name}
    if svc.port is not None:
        env.setdefault("PORT", str(svc.port))
    return ContainerSpec(
        name=name,
        image=image,
        network=network_name(cfg.app, cfg.env),
        labels=instance_labels(cfg, svc.name, release, name),
        command=svc.command,
        environment=env,
        hardening=svc.hardening,
        stop_grace_period=svc.stop_grace_period,
        health_command=hc.command if hc and hc.kind == "command" else None,
        health_interval=hc.interval if hc else 1.0,
        health_timeout=hc.timeout if hc else 2.0,
        limits=Limits(memory=svc.resources.memory, cpus=svc.resources.cpus, pids=svc.resources.pids),
        constraints=cfg.constraints,
    )
