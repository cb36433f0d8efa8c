"""kiln destroy: remove an environment's instances, router and network; the ledger stays."""

from __future__ import annotations

from kiln.context import Context
from kiln.ledger import kinds
from kiln.providers.base import ROUTER, network_name, selector
from kiln.spec.resolve import EnvConfig


def destroy(ctx: Context, cfg: EnvConfig) -> int:
    app, env = cfg.app, cfg.env
    engine = ctx.engine_for(cfg)
    containers = [c for c in engine.containers(selector(app, env)) if c.label("role") != ROUTER]
    # Instances first, the router last: nothing is routed to a container that is gone.
    for c in containers:
        engine.remove(c.name)
        ctx.out.step(f"removed {c.name}")
    router = ctx.router(cfg)
    removed = router.remove()
    if removed:
        ctx.out.step(f"removed {router.name}")
    engine.remove_network(network_name(app, env), selector(app, env))
    ctx.ledger.environments.forget(app, env)  # an environment kiln made (recreated, preview) is gone
    count = len(containers) + (1 if removed else 0)
    ctx.ledger.events.record(app, env, kinds.DESTROYED, f"removed {count} containers and the network")
    return count
