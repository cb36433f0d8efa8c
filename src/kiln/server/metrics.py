"""GET /metrics (a router) in Prometheus' text format (prometheus-client): the figures
usecases/figures.py reads from the ledger, the engines and the routers at each scrape (nothing is
kept in this process, so several `kiln serve`s agree):

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

from collections.abc import Iterable, Iterator

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from starlette.concurrency import run_in_threadpool

from kiln.access import READ
from kiln.server.plane import Plane
from kiln.usecases.figures import Figures, fleet

ROLLOUT_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
HEAL_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)

router = APIRouter(include_in_schema=False)


def histogram(values: Iterable[float], buckets: tuple[float, ...]) -> tuple[list[tuple[str, float]], float]:
    """Cumulative (le, count) pairs ending with +Inf, and the sum: what HistogramMetricFamily takes."""
    values = list(values)
    pairs = [(f"{b:g}", float(sum(1 for v in values if v <= b))) for b in buckets]
    return pairs + [("+Inf", float(len(values)))], float(sum(values))


class _Kiln(Collector):
    def __init__(self, figures: Figures) -> None:
        self.figures = figures

    def collect(self) -> Iterator[Metric]:
        f = self.figures
        info = GaugeMetricFamily("kiln_release_info", "The release each environment serves", labels=["app", "env", "release"])
        for app, env, number in f.releases:
            info.add_metric([app, env, f"v{number}"], 1)
        yield info
        outcomes = CounterMetricFamily("kiln_rollouts", "Rollouts by outcome", labels=["outcome"])
        for state, n in sorted(f.rollouts.items()):
            outcomes.add_metric([state], n)
        yield outcomes
        buckets, total = histogram(f.rollout_seconds, ROLLOUT_BUCKETS)
        yield HistogramMetricFamily("kiln_rollout_duration_seconds", "How long finished rollouts took",
                                    buckets=buckets, sum_value=total)
        instances = GaugeMetricFamily("kiln_instances", "Instances by state", labels=["state"])
        for state, n in sorted(f.instances.items()):
            instances.add_metric([state], n)
        yield instances
        buckets, total = histogram(f.heal_seconds, HEAL_BUCKETS)
        yield HistogramMetricFamily("kiln_heal_seconds", "How long the agent took to replace failed instances",
                                    buckets=buckets, sum_value=total)
        yield CounterMetricFamily("kiln_drift", "Instances found tainted (drifted from their release)", value=f.tainted)
        runs = CounterMetricFamily("kiln_ci_runs", "Pipeline runs by state", labels=["state"])
        for state, n in sorted(f.ci_runs.items()):
            runs.add_metric([state], n)
        yield runs
        yield from self._router()

    def _router(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("kiln_router_requests", "HTTP responses of a release's servers (HAProxy)",
                                       labels=["app", "env", "release"])
        errors = CounterMetricFamily("kiln_router_5xx", "5xx responses of a release's servers (HAProxy)",
                                     labels=["app", "env", "release"])
        for s in self.figures.served:
            requests.add_metric([s.app, s.env, f"v{s.release}"], s.responses)
            errors.add_metric([s.app, s.env, f"v{s.release}"], s.errors)
        yield requests
        yield errors


def exposition(plane: Plane) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Kiln(fleet(plane.ctx(), plane.specs())))
    return generate_latest(registry)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """The figures, to a token that may read."""
    auth, plane = request.app.state.auth, request.app.state.plane
    who = await run_in_threadpool(auth.caller, request)
    auth.require(who, READ)
    return Response(await run_in_threadpool(exposition, plane), media_type=CONTENT_TYPE_LATEST)
