"""The figures `kiln serve`'s /metrics exposes (server/metrics.py writes them in Prometheus'
format), read from the ledger, the engines and the routers at each scrape: nothing is kept in
the process, so several servers agree."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from kiln.agent.sampling import release_of
from kiln.context import Context
from kiln.errors import KilnError
from kiln.ledger import kinds
from kiln.ledger.ci_store import CiStore
from kiln.router.haproxy_api import ServerStat
from kiln.usecases import catalog, traffic
from kiln.usecases.catalog import Specs
from kiln.usecases.observe import status

_TOOK = re.compile(r" in (\d+(?:\.\d+)?)s\b")


@dataclass(frozen=True)
class Served:
    """What a release's servers answered (HAProxy's counters; servers removed take theirs along)."""

    app: str
    env: str
    release: int
    responses: int
    errors: int  # 5xx


@dataclass(frozen=True)
class Figures:
    releases: list[tuple[str, str, int]] = field(default_factory=list)  # (app, env, release in service)
    instances: dict[str, int] = field(default_factory=dict)  # by health: healthy, idle, down, exited (N)…
    served: list[Served] = field(default_factory=list)
    rollouts: dict[str, int] = field(default_factory=dict)  # by state
    rollout_seconds: list[float] = field(default_factory=list)  # of each finished rollout
    heal_seconds: list[float] = field(default_factory=list)  # of each replacement by the agent
    tainted: int = 0  # instances found tainted, ever
    ci_runs: dict[str, int] = field(default_factory=dict)  # by state


def heal_seconds(messages: Iterable[str]) -> list[float]:
    """The times of the agent's `instance.replaced` events ("replaced X with Y in 1.23s …")."""
    return [float(m.group(1)) for m in (_TOOK.search(msg) for msg in messages) if m]


def fleet(ctx: Context, specs: Specs) -> Figures:
    """Every app's environments with a release in service, and the ledger's counts."""
    releases: list[tuple[str, str, int]] = []
    states: Counter[str] = Counter()
    served: list[Served] = []
    for app in catalog.apps(ctx, specs):
        for env in catalog.envs(ctx, app, specs.get(app)):
            release = ctx.ledger.releases.current(app, env)
            if release is None:
                continue
            releases.append((app, env, release.number))
            try:
                cfg = catalog.config(ctx, app, specs.get(app), env)
                states.update(i.health for i in status(ctx, cfg).instances)
                served += _served(app, env, traffic.servers(ctx, cfg))
            except KilnError:
                continue  # an engine that does not answer: no instances to count
    return Figures(releases=releases, instances=dict(states), served=served, rollouts=ctx.ledger.rollouts.outcomes(),
                   rollout_seconds=ctx.ledger.rollouts.durations(),
                   heal_seconds=heal_seconds(ctx.ledger.events.messages(kinds.INSTANCE_REPLACED)),
                   tainted=ctx.ledger.events.count(kinds.INSTANCE_TAINTED), ci_runs=CiStore(ctx.ledger).counts())


def _served(app: str, env: str, routed: dict[str, ServerStat]) -> list[Served]:
    per: dict[int, list[int]] = {}
    for name, s in routed.items():
        number = release_of(name)
        if number is not None:
            t = per.setdefault(number, [0, 0])
            t[0] += s.responses
            t[1] += s.errors
    return [Served(app, env, number, r, e) for number, (r, e) in sorted(per.items())]
