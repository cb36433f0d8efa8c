"""kiln node list / drain / activate: the hosts of a cluster engine, and taking one out of service
without a failed request.

Draining a node first pauses it (Swarm places no new task there), then, environment by environment
under its lock, replaces the instances on it as the agent replaces tainted ones: replacements start
on the other nodes and take traffic before the node's instances are drained and removed. Only then
is the node set to drain in Swarm, which stops whatever else still runs there."""

from __future__ import annotations

from dataclasses import dataclass

from kiln import engines
from kiln.context import Context
from kiln.errors import KilnError, UsageError
from kiln.ledger import kinds
from kiln.providers.base import INSTANCE, ContainerFacts, Engine, NodeFacts, Nodes
from kiln.rollout.executor import Executor, ExecutorOptions, Target, events_journal
from kiln.usecases.deploy import kept, locked, settle


@dataclass(frozen=True)
class NodeRow:
    node: NodeFacts
    instances: int  # kiln instances running there


def cluster(ctx: Context) -> tuple[Engine, Nodes]:
    """The cluster engine (the one that declares nodes), as an engine and as a set of nodes."""
    engine = ctx.engine(engines.clustered().name)
    if not isinstance(engine, Nodes):
        raise UsageError(f"engine {engine.name} has no nodes.")
    return engine, engine


def listing(ctx: Context) -> list[NodeRow]:
    engine, nodes = cluster(ctx)
    running = [c for c in engine.containers({"kiln.role": INSTANCE}) if c.running]
    return [NodeRow(n, sum(1 for c in running if c.node == n.hostname)) for n in nodes.nodes()]


def find(nodes: list[NodeFacts], name: str) -> NodeFacts:
    """A node by hostname, or by id or an unambiguous prefix of it."""
    exact = [n for n in nodes if name in (n.hostname, n.id)]
    found = exact or [n for n in nodes if n.id.startswith(name)]
    if len(found) != 1:
        known = ", ".join(n.hostname for n in nodes)
        raise UsageError(f"{'no' if not found else 'more than one'} node matches {name!r}.", f"Nodes: {known}.")
    return found[0]


def activate(ctx: Context, name: str) -> NodeFacts:
    _, nodes = cluster(ctx)
    node = find(nodes.nodes(), name)
    nodes.set_availability(node.id, "active")
    ctx.out.done(f"{node.hostname} is active: new instances may run there")
    return node


def drain(ctx: Context, name: str) -> list[str]:
    """Move every kiln instance off `name`, then drain it in Swarm. Returns what was replaced."""
    engine, nodes = cluster(ctx)
    node = find(nodes.nodes(), name)
    if node.availability == "drain":
        ctx.out.done(f"{node.hostname} is already drained")
        return []
    nodes.set_availability(node.id, "pause")
    ctx.out.step(f"{node.hostname} paused: no new instance lands there")
    moved: list[str] = []
    try:
        here = [c for c in engine.containers({"kiln.role": INSTANCE}) if c.node == node.hostname]
        groups: dict[tuple[str, str], list[ContainerFacts]] = {}
        for c in here:
            groups.setdefault((c.label("app") or "", c.label("env") or ""), []).append(c)
        for (app, env), instances in sorted(groups.items()):
            moved += _move(ctx, engine, app, env, {c.name for c in instances}, node.hostname)
    except KilnError as exc:
        raise KilnError(f"draining {node.hostname} stopped: {exc.message}",
                        f"Its instances that were not replaced still serve and the node stays paused; fix the "
                        f"cause and run `kiln node drain {node.hostname}` again, or `kiln node activate "
                        f"{node.hostname}`.") from None
    nodes.set_availability(node.id, "drain")
    ctx.out.done(f"{node.hostname} drained: {len(moved)} instance(s) replaced on other nodes")
    return moved


def _move(ctx: Context, engine: Engine, app: str, env: str, names: set[str], node: str) -> list[str]:
    release = ctx.ledger.releases.current(app, env)
    if release is None:
        return []  # not kiln's to move (its environment has no release in this ledger)
    cfg = release.env_config()
    with locked(ctx, app, env, f"node drain {node}") as lease:
        router = ctx.router(cfg)
        settle(ctx, lease, router, drop_paused=False)
        target = Target.of(release)
        keep = kept(ctx, app, env)
        # The node's instances count as tainted: replaced first, then retired (the agent's way).
        executor = Executor(engine, router, ctx.ledger, ctx.out, ExecutorOptions(
            tainted=frozenset(names - keep), lease=lease, journal=events_journal(ctx.ledger, app, env),
            secrets=ctx.secret))
        ctx.out.step(f"{app}/{env}: replacing {len(executor.tainted)} instance(s) on {node}")
        executor.converge(target, target.desired(keep=keep), strict=True)
        moved = sorted(executor.tainted)
        ctx.ledger.events.record(app, env, kinds.NODE_DRAINED,
                                 f"{node} drained: replaced {', '.join(moved) or 'nothing'} with "
                                 f"{', '.join(sorted(executor.started)) or 'nothing'}")
        return moved
