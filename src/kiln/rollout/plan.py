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

FULL = 100  # router weight of an instance taking its full share (router.haproxy_api.FULL_WEIGHT)


@dataclass(frozen=True)
class Instance:
    name: str  # container name, also the router's server name
    service: str
    release: int
    running: bool
    ready: bool  # serving in the router (public service) or passing its health check (others)
    in_router: bool = False
    weight: int | None = None  # router weight, when in the router
    in_preview: bool = False  # also in the preview backend (blue-green)
    tainted: bool = False  # changed since it started (drift): replaced like an instance of another release


@dataclass(frozen=True)
class Desired:
    release: int
    replicas: dict[str, int]  # service -> instance count
    routed: str | None  # the public service, whose instances go into the router
    surge: int | None = None  # instances started above the desired count; None: all at once
    unavailable: int = 0  # instances that may be out of service below the desired count
    weight: int = FULL  # router weight of the desired release's routed instances
    preview: bool = False  # routed instances of the desired release also answer on the preview port
    hold: bool = False  # leave other releases' instances alone (blue-green, canary before the switch)
    keep: frozenset[str] = frozenset()  # instances left alone (blue-green's idle old set)


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
    name: str  # into the router (or, if there, to this weight), and wait for the router's check
    weight: int = FULL
    preview: bool = False


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
    facts = [i for i in facts if i.name not in desired.keep]
    services = sorted(set(desired.replicas) | {i.service for i in facts})
    steps: list[Step] = []

    # 1. Dead instances (and router entries whose container is gone) are thrown away, never repaired;
    # their replacements start in the same step (step 4 computes them), so healing costs one round.
    dead = [i for i in facts if not i.running]
    live = [i for i in facts if i.running]

    # 2. Instances of the desired release not yet serving as desired: wait for health, then route.
    pending = [i for i in live if _current(i, desired) and _off_target(i, desired)]
    if pending:
        steps.append([_bring_in(i, desired) for i in pending])

    # 3. Retire what exceeds the desired count, never dropping below want - unavailable serving.
    retire = []
    for svc in services:
        want = desired.replicas.get(svc, 0)
        mine = [i for i in live if i.service == svc]
        new = [i for i in mine if _current(i, desired)]
        others = [i for i in mine if not _current(i, desired) and not (desired.hold and not i.tainted)]
        # Pending instances count as new: step 2 runs first, and this step is planned again after it.
        old_out = min(len(others), max(0, len(new) + len(others) - max(0, want - desired.unavailable)))
        # Old instances not serving (idle, draining) go first.
        retire += sorted(others, key=lambda i: i.ready and i.weight != 0)[:old_out]
        retire += new[want:]
    if retire:
        steps.append([_retire(i) for i in retire])

    # 4. Start what is missing, within the surge allowance.
    starts: list[Task] = []
    retiring = {i.name for i in retire}  # a set: a list of dataclasses made this quadratic
    for svc in services:
        want = desired.replicas.get(svc, 0)
        mine = [i for i in live if i.service == svc and i.name not in retiring]
        missing = max(0, want - len([i for i in mine if _current(i, desired)]))
        room = missing if desired.surge is None or desired.hold else max(0, want + desired.surge - len(mine))
        starts += [(Start(svc, desired.release),)] * min(missing, room)
    if dead:
        return [[_retire(i) for i in dead] + starts] + steps
    if starts:
        steps.append(starts)
    return steps


def _current(i: Instance, desired: Desired) -> bool:
    """An untainted instance of the desired release."""
    return i.release == desired.release and not i.tainted


def _off_target(i: Instance, desired: Desired) -> bool:
    if not i.ready:
        return True
    if i.service != desired.routed:
        return False
    return i.weight != desired.weight or (desired.preview and not i.in_preview)


def _bring_in(i: Instance, desired: Desired) -> Task:
    if i.service != desired.routed:
        return (AwaitHealthy(i.name),)
    route = Route(i.name, desired.weight, desired.preview)
    return (AwaitHealthy(i.name), route) if not i.ready else (route,)


def _retire(i: Instance) -> Task:
    if i.in_router:
        return (Unroute(i.name), Remove(i.name))
    return (Remove(i.name),)
