"""kiln destroy: remove an environment's instances, router and network; the ledger stays."""

from __future__ import annotations

import shutil

from kiln.context import Context
from kiln.ledger import kinds
from kiln.router.haproxy import network_name


def destroy(ctx: Context, app: str, env: str) -> int:
    containers = ctx.docker.containers({"kiln.app": app, "kiln.env": env})
    # Instances first, the router last: nothing is routed to a container that is gone.
    for c in sorted(containers, key=lambda c: c.label("role") == "router"):
        ctx.docker.remove(c.name)
        ctx.out.step(f"removed {c.name}")
    ctx.docker.remove_network(network_name(app, env))
    shutil.rmtree(ctx.settings.router_dir(app, env), ignore_errors=True)
    ctx.ledger.environments.forget(app, env)  # an environment kiln made (recreated, preview) is gone
    ctx.ledger.events.record(app, env, kinds.DESTROYED, f"removed {len(containers)} containers and the network")
    return len(containers)
