"""GET /metrics in Prometheus' text format (prometheus-client), read from the ledger, the engines
and the routers at each scrape (nothing is kept in this process, so several `kiln serve`s agree):

    kiln_release_info{app,env,release}        1 for each environment's release in service
    kiln_rollouts_total{outcome}              rollouts by state (succeeded, aborted, running, paused)
    kiln_rollout_duration_seconds             histogram of finished rollouts' durations
    kiln_instances{state}                     instances by health (healthy, idle, down, exited (N)…)
    kiln_heal_seconds                         histogram of the agent's replacements (failed → serving)
    kiln_drift_total                          instances found tainted
    kiln_ci_runs_total{state}                 pipeline runs by state
    kiln_router_requests_total{app,env,release}, kiln_router_5xx_total{app,env,release}
                                              HAProxy's response counters of each release's servers
                                              (servers removed take their counts with them)"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from kiln.agent.sampling import release_of
from kiln.errors import KilnError
from kiln.ledger import kinds
from kiln.ledger.ci_store import CiStore
from kiln.server.plane import Plane
from kiln.usecases.observe import status as status_of

ROLLOUT_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
HEAL_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
_TOOK = re.compile(r" in (\d+(?:\.\d+)?)s\b")


def histogram(values: Iterable[float], buckets: tuple[float, ...]) -> tuple[list[tuple[str, float]], float]:
    """Cumulative (le, count) pairs ending with +Inf, and the sum: what HistogramMetricFamily takes."""
    values = list(values)
    pairs = [(f"{b:g}", float(sum(1 for v in values if v <= b))) for b in buckets]
    return pairs + [("+Inf", float(len(values)))], float(sum(values))


def heal_seconds(messages: Iterable[str]) -> list[float]:
    """The times of the agent's `instance.replaced` events ("replaced X with Y in 1.23s …")."""
    return [float(m.group(1)) for m in (_TOOK.search(msg) for msg in messages) if m]


class _Kiln(Collector):
    def __init__(self, plane: Plane) -> None:
        self.plane = plane

    def collect(self) -> Iterator[Metric]:
        ctx = self.plane.ctx()
        info = GaugeMetricFamily("kiln_release_info", "The release each environment serves", labels=["app", "env", "release"])
        requests = CounterMetricFamily("kiln_router_requests", "HTTP responses of a release's servers (HAProxy)",
                                       labels=["app", "env", "release"])
        errors = CounterMetricFamily("kiln_router_5xx", "5xx responses of a release's servers (HAProxy)",
                                     labels=["app", "env", "release"])
        states: Counter[str] = Counter()
        for app in self.plane.apps():
            for env in self.plane.envs(app):
                release = ctx.ledger.releases.current(app, env)
                if release is None:
                    continue
                info.add_metric([app, env, f"v{release.number}"], 1)
                try:
                    cfg = self.plane.config(app, env)
                    st = status_of(ctx, cfg)
                    servers = self.plane.router_servers(cfg)
                except KilnError:
                    continue  # an engine that does not answer: no instances to count
                states.update(i.health for i in st.instances)
                per: dict[int, list[int]] = {}
                for name, s in servers.items():
                    number = release_of(name)
                    if number is not None:
                        t = per.setdefault(number, [0, 0])
                        t[0] += s.responses
                        t[1] += s.errors
                for number, (r, e) in sorted(per.items()):
                    requests.add_metric([app, env, f"v{number}"], r)
                    errors.add_metric([app, env, f"v{number}"], e)
        yield info
        outcomes = CounterMetricFamily("kiln_rollouts", "Rollouts by outcome", labels=["outcome"])
        for state, n in sorted(ctx.ledger.rollouts.outcomes().items()):
            outcomes.add_metric([state], n)
        yield outcomes
        buckets, total = histogram(ctx.ledger.rollouts.durations(), ROLLOUT_BUCKETS)
        yield HistogramMetricFamily("kiln_rollout_duration_seconds", "How long finished rollouts took",
                                    buckets=buckets, sum_value=total)
        instances = GaugeMetricFamily("kiln_instances", "Instances by state", labels=["state"])
        for state, n in sorted(states.items()):
            instances.add_metric([state], n)
        yield instances
        buckets, total = histogram(heal_seconds(ctx.ledger.events.messages(kinds.INSTANCE_REPLACED)), HEAL_BUCKETS)
        yield HistogramMetricFamily("kiln_heal_seconds", "How long the agent took to replace failed instances",
                                    buckets=buckets, sum_value=total)
        yield CounterMetricFamily("kiln_drift", "Instances found tainted (drifted from their release)",
                                  value=ctx.ledger.events.count(kinds.INSTANCE_TAINTED))
        runs = CounterMetricFamily("kiln_ci_runs", "Pipeline runs by state", labels=["state"])
        for state, n in sorted(CiStore(ctx.ledger).counts().items()):
            runs.add_metric([state], n)
        yield runs
        yield requests
        yield errors


def exposition(plane: Plane) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Kiln(plane))
    return generate_latest(registry)
