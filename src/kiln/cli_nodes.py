"""Typer commands `kiln node …`: the hosts of a Swarm cluster (`engine: swarm`), through the
manager DOCKER_HOST reaches."""

from __future__ import annotations

from typing import Annotated

import typer

from kiln.cli_common import JsonOpt
from kiln.cli_common import ctx_of as _ctx

node_app = typer.Typer(help="The nodes of the Swarm cluster that `engine: swarm` environments run on.",
                       no_args_is_help=True)
NodeArg = Annotated[str, typer.Argument(help="Node hostname, or its id (a unique prefix will do).")]


@node_app.command("list")
def node_list(json: JsonOpt = False) -> None:
    """List the cluster's nodes: role, availability, state, address and kiln instances running there."""
    from rich.table import Table

    from kiln.usecases import nodes
    from kiln.views import Node

    ctx = _ctx()
    rows = [Node.of(r) for r in nodes.listing(ctx)]
    if json:
        ctx.out.json(rows)
        return
    table = Table("node", "role", "availability", "state", "address", "instances", "labels")
    for n in rows:
        colour = "green" if n.state == "ready" and n.availability == "active" else "yellow"
        table.add_row(n.hostname, n.role + (" (leader)" if n.leader else ""), f"[{colour}]{n.availability}[/]",
                      f"[{colour}]{n.state}[/]", n.address, str(n.instances),
                      ", ".join(f"{k}={v}" for k, v in sorted(n.labels.items())))
    ctx.out.print(table)


@node_app.command("drain")
def node_drain(node: NodeArg, json: JsonOpt = False) -> None:
    """Take a node out of service with no failed request.

    The node is paused (no new instance lands there); in each environment with instances on it,
    replacements start on the other nodes and take traffic, then the node's instances are drained
    and removed; finally the node is set to drain in Swarm. `kiln node activate` brings it back."""
    from kiln.usecases import nodes

    ctx = _ctx(quiet=json)
    moved = nodes.drain(ctx, node)
    if json:
        ctx.out.json({"node": node, "replaced": moved})


@node_app.command("activate")
def node_activate(node: NodeArg) -> None:
    """Let new instances run on a drained or paused node again (existing ones stay where they are)."""
    from kiln.usecases import nodes

    nodes.activate(_ctx(), node)
