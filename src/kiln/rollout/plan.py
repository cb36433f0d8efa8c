"""Deciding what to do next, as a pure function of the desired state and observed facts.

`plan(desired, facts)` returns the remaining steps; the executor runs only the first one,
observes again and plans again, so every step is decided from fresh facts. Each step is a list
of tasks that may run at the same time; a task is a sequence of actions run in order.
An empty plan means the environment has converged.

The same function both rolls forward and aborts: aborting is converging back to the previous
release, which retires the new instances and keeps (or restarts) the old ones."""

from __future__ import annotations

from dataclasses import dataclass

# --- facts and desired state ---------------------------------------------------------------


@dataclass(frozen=True)
class Instance:
    name: str  # container name, also the router's server name
    service: str
    release: int
    running: bool
    ready: bool  # serving in the router (public service) or passing its health check (others)
    in_router: bool = False


@dataclass(frozen=True)
class Desired:
    release: int
    replicas: dict[str, int]  # service -> instance count
    routed: str | None  # the public service, whose instances go into the router
    surge: int | None = None  # new instances started per batch; None: all at once


# --- actions (commands as data) --------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    service: str
    release: int


@dataclass(frozen=True)
class AwaitHealthy:
    name: str


@dataclass(frozen=True)
class Route:
    name: str


@dataclass(frozen=True)
class Unroute:
    name: str  # drain, wait for in-flight requests, remove from the router


@dataclass(frozen=True)
class Remove:
    name: str  # SIGTERM, grace period, remove the container


Action = Start | AwaitHealthy | Route | Unroute | Remove
Task = tuple[Action, ...]
Step = list[Task]


def plan(desired: Desired, facts: list[Instance]) -> list[Step]:
    services = sorted(set(desired.replicas) | {i.service for i in facts})
    steps: list[Step] = []

    # 1. Dead instances are thrown away (never repaired).
    dead = [i for i in facts if not i.running]
    if dead:
        steps.append([_retire(i, desired) for i in dead])
    live = [i for i in facts if i.running]

    # 2. New instances already started but not yet serving: wait for health, then route.
    pending = [i for i in live if i.release == desired.release and not i.ready]
    if pending:
        steps.append([_bring_in(i, desired) for i in pending])

    # 3. Retire what exceeds the desired count, counting only instances that are ready.
    retire = []
    for svc in services:
        want = desired.replicas.get(svc, 0)
        mine = [i for i in live if i.service == svc]
        ready_new = [i for i in mine if i.release == desired.release and (i.ready or i in pending)]
        others = [i for i in mine if i.release != desired.release]
        # Retire old instances as new ones become ready, never dropping below `want` serving.
        excess = len(ready_new) + len(others) - want
        if excess > 0:
            # Old, not-ready ones go first; then old ready ones; then surplus new ones.
            order = sorted(others, key=lambda i: i.ready) + ready_new[want:]
            retire += order[:excess]
    if retire:
        steps.append([_retire(i, desired) for i in retire])

    # 4. Start what is missing, a batch at a time.
    starts: list[Task] = []
    for svc in services:
        want = desired.replicas.get(svc, 0)
        have = len([i for i in live if i.service == svc and i.release == desired.release])
        missing = max(0, want - have)
        batch = missing if desired.surge is None else min(missing, max(1, desired.surge))
        starts += [(Start(svc, desired.release),)] * batch
    if starts:
        steps.append(starts)
    return steps


def _bring_in(i: Instance, desired: Desired) -> Task:
    if i.service == desired.routed:
        return (AwaitHealthy(i.name), Route(i.name))
    return (AwaitHealthy(i.name),)


def _retire(i: Instance, desired: Desired) -> Task:
    if i.in_router:
        return (Unroute(i.name), Remove(i.name))
    return (Remove(i.name),)
