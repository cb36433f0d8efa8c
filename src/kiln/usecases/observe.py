"""kiln status and kiln releases: what runs, and what was released."""

from __future__ import annotations

from typing import Any

from kiln.context import Context
from kiln.errors import RouterError
from kiln.ledger import kinds
from kiln.ledger.db import now
from kiln.providers.base import INSTANCE, selector
from kiln.rollout.lock import lease_name
from kiln.router.haproxy_api import ServerStat
from kiln.spec.resolve import EnvConfig


def status(ctx: Context, cfg: EnvConfig) -> dict[str, Any]:
    release = ctx.ledger.releases.current(cfg.app, cfg.env)
    containers = ctx.engine_for(cfg).containers(selector(cfg.app, cfg.env, INSTANCE))
    router = ctx.router(cfg)
    router_facts = router.facts()
    servers: dict[str, ServerStat] = {}
    if router_facts and router_facts.running:
        try:
            servers = router.servers()
        except RouterError:
            servers = {}
    instances = []
    for c in sorted(containers, key=lambda c: c.name):
        if not c.running:
            health = f"exited ({c.exit_code})" if c.exit_code is not None else c.state
        elif c.name in servers:
            health = "healthy" if servers[c.name].serving else servers[c.name].status.lower()
            if servers[c.name].serving and servers[c.name].weight == 0:
                health = "idle"  # healthy, in the router, no traffic (blue-green before or after a switch)
        else:
            health = c.health or "running"
        instances.append({"id": c.name, "service": c.label("service"), "release": int(c.label("release") or 0),
                          "health": health, "in_router": c.name in servers, "container": c.id[:12], "node": c.node,
                          "weight": servers[c.name].weight if c.name in servers else None})
    served = release.env_config() if release else cfg
    return {
        "app": cfg.app,
        "env": cfg.env,
        "url": served.url,
        "release": {"number": release.number, "image": release.image, "commit": release.commit,
                    "created_at": release.created_at.isoformat() + "Z"} if release else None,
        "preview_url": served.preview_url,
        "engine": served.engine,
        "router": {"state": router_facts.state if router_facts else "absent", "name": router.name},
        "waiting": [{"rollout": r.id, "release": r.to_release, "state": r.state, "phase": r.phase}
                    for r in ctx.ledger.rollouts.unfinished(cfg.app, cfg.env)],
        "instances": instances,
        "relaxations": {s.name: s.relaxations for s in served.services if s.relaxations},
        "limits": {s.name: s.resources.model_dump(mode="json") for s in served.services},  # memory in bytes
        "agent": agent_state(ctx, cfg.app, cfg.env),
    }


def agent_state(ctx: Context, app: str, env: str) -> dict[str, Any]:
    """Which agent watches app/env, and whether its meltdown guard halted self-healing."""
    lease = ctx.ledger.locks.get(app, lease_name(env))
    leader = lease.holder if lease and not lease.expired(now()) else None
    last = ctx.ledger.events.of(app, env, kinds=(kinds.AGENT_HALTED, kinds.AGENT_RESUMED), limit=1)
    halted = bool(last) and last[-1]["kind"] == kinds.AGENT_HALTED
    return {"leader": leader, "healing": "halted" if halted else "active",
            "halted": {"at": last[-1]["at"], "why": last[-1]["message"]} if halted else None}
