"""kiln drift: which instances of an environment are tainted, and why.

The facts come from the engine (each instance's configuration, `docker diff`, the exec events
it still remembers) and from the ledger (taints the agent recorded, e.g. an exec seen live that
the engine has since forgotten). The rules are agent/drift.py's."""

from __future__ import annotations

import time
from dataclasses import replace

from kiln import secretref, views
from kiln.agent.drift import exec_detail, taints
from kiln.bake.vm import is_vm_ref
from kiln.context import Context
from kiln.ledger import kinds
from kiln.ledger.releases import Release
from kiln.providers.base import INSTANCE, ContainerFacts, Engine, selector
from kiln.rollout.instances import instance_spec
from kiln.spec.resolve import EnvConfig

EXEC_MEMORY = 24 * 3600.0  # how far back engine events are asked for (the engine keeps only its last 256)


def recent_execs(engine: Engine, app: str, env: str) -> dict[str, list[tuple[str, float]]]:
    """`docker exec`s into the environment's instances that the engine still remembers."""
    now = time.time()
    found: dict[str, list[tuple[str, float]]] = {}
    for ev in engine.events(selector(app, env, INSTANCE), since=int(now - EXEC_MEMORY), until=int(now) + 1):
        if ev.action == "exec_start":
            found.setdefault(ev.name, []).append((ev.detail, ev.at))
    return found


def inspect(ctx: Context, engine: Engine, app: str, env: str, containers: list[ContainerFacts],
            execs: dict[str, list[tuple[str, float]]]) -> dict[str, list[str]]:
    """Taint reasons of each running instance in `containers` (untainted ones are left out)."""
    releases: dict[int, Release | None] = {}
    image_envs: dict[str, dict[str, str]] = {}
    out: dict[str, list[str]] = {}
    for c in containers:
        if not c.running:
            continue
        number = int(c.label("release") or 0)
        if number not in releases:
            releases[number] = ctx.ledger.releases.get(app, env, number)
        release = releases[number]
        if release is None:
            out[c.name] = [f"claims release v{number}, which {app}/{env} does not have"]
            continue
        cfg = release.env_config()
        svc = cfg.find(c.label("service") or "")
        if svc is None:
            out[c.name] = [f"claims service {c.label('service')!r}, which release v{number} does not have"]
            continue
        details = engine.details(c.name)
        if details is None:  # removed since it was listed
            continue
        if release.image not in image_envs:
            image_envs[release.image] = engine.image_env(release.image)
        own = exec_detail(svc.healthcheck.command) if svc.healthcheck and svc.healthcheck.kind == "command" else None
        seen = [f"{cmd} at {time.strftime('%H:%M:%S', time.gmtime(at))} UTC"
                for cmd, at in execs.get(c.name, []) if cmd != own]
        expected = engine.enforceable(instance_spec(cfg, svc, number, release.image, c.name))
        expected = replace(expected, environment=_with_secrets(ctx, expected.environment, details.env))
        # A read-only root filesystem cannot be written (not even by `docker cp`): no `docker diff`
        # needed. A VM's disk is another matter: its guest could remount it.
        vm = is_vm_ref(release.image)
        changes = [] if details.read_only and expected.hardening.read_only and not vm else engine.changes(c.name)
        reasons = taints(expected, image_envs[release.image], c, details, changes, seen)
        if reasons:
            out[c.name] = reasons
    return out


def _with_secrets(ctx: Context, environment: dict[str, str], actual: dict[str, str]) -> dict[str, str]:
    """Secret references replaced by their values; one that cannot be looked up here cannot be
    checked, and is taken as it is (secret values appear in no reason, only variable names)."""
    out = {}
    for key, value in environment.items():
        name = secretref.reference(value)
        found = ctx.secret(name) if name else value
        out[key] = found if found is not None else actual.get(key, value)
    return out


def recorded(ctx: Context, app: str, env: str) -> dict[str, list[str]]:
    """Taints the agent recorded in the ledger, by instance."""
    out: dict[str, list[str]] = {}
    for e in ctx.ledger.events.of(app, env, kinds=(kinds.INSTANCE_TAINTED,), limit=1000):
        name, _, reasons = e.message.partition(": ")
        out.setdefault(name, [])
        out[name] += [r for r in reasons.split("; ") if r not in out[name]]
    return out


def report(ctx: Context, cfg: EnvConfig) -> list[views.Taint]:
    """`kiln drift`: every tainted instance of the environment with its reasons."""
    app, env, engine = cfg.app, cfg.env, ctx.engine_for(cfg)
    containers = engine.containers(selector(app, env, INSTANCE))
    found = inspect(ctx, engine, app, env, containers, recent_execs(engine, app, env))
    for name, reasons in recorded(ctx, app, env).items():
        if name in found or any(c.name == name and c.running for c in containers):
            found[name] = found.get(name, []) + [r for r in reasons if r not in found.get(name, [])]
    by_name = {c.name: c for c in containers}
    return [views.Taint(instance=name, service=by_name[name].label("service") or "",
                        release=int(by_name[name].label("release") or 0), reasons=reasons)
            for name, reasons in sorted(found.items()) if name in by_name]
