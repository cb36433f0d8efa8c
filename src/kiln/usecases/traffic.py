"""Live traffic per release, from a `kiln serve` process's own readings of each environment's
router: requests/s, 5xx and response time since its previous reading (at most one a second; the
samples of the last minute kept). The agent samples the same counters into the ledger for the
charts (agent/loop.py); this is what the live view shows between two of its samples."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from kiln import views
from kiln.agent.sampling import per_release
from kiln.context import Context
from kiln.errors import RouterError
from kiln.ledger.db import now
from kiln.ledger.samples import Sample
from kiln.router.haproxy_api import ServerStat
from kiln.spec.resolve import EnvConfig

EVERY = 1.0  # seconds between two readings of one router
KEEP = 60.0  # seconds of live samples kept


def servers(ctx: Context, cfg: EnvConfig) -> dict[str, ServerStat]:
    """The environment's router's servers by name; none when the router is absent or does not answer."""
    router = ctx.router(cfg)
    facts = router.facts()
    if facts is None or not facts.running:
        return {}
    try:
        return router.servers()
    except RouterError:
        return {}


@dataclass
class _Reading:
    at: float
    servers: dict[str, ServerStat]


class Meter:
    """Readings of the routers this process looked at (kept between requests; thread-safe)."""

    def __init__(self) -> None:
        self._readings: dict[tuple[str, str], _Reading] = {}
        self._live: dict[tuple[str, str], list[Sample]] = {}
        self._lock = threading.Lock()

    def read(self, ctx: Context, cfg: EnvConfig) -> tuple[dict[str, ServerStat], list[views.Sample]]:
        """The router's servers now, and the live samples of the last minute, oldest first."""
        routed = servers(ctx, cfg)
        return routed, [views.Sample.of(s) for s in self.samples(cfg, routed)]

    def samples(self, cfg: EnvConfig, routed: dict[str, ServerStat]) -> list[Sample]:
        """Per release, what `routed` counted since the previous reading of this environment's
        router (a new reading at most every EVERY seconds), with those of the last KEEP seconds."""
        key = (cfg.app, cfg.env)
        t = time.monotonic()
        with self._lock:
            last = self._readings.get(key)
            if last is not None and t - last.at < EVERY:
                return list(self._live.get(key, []))
            self._readings[key] = _Reading(t, routed)
            if last is None:
                return []
            fresh = per_release(last.servers, routed, t - last.at, now())
            kept = [s for s in self._live.get(key, []) if (now() - s.at).total_seconds() < KEEP] + fresh
            self._live[key] = kept
            return list(kept)
