"""Traffic per release from two readings of HAProxy's per-server counters: requests, 5xx and
response time of each release's servers over the interval between them. Pure; the agent records
the result in the ledger (ledger/samples.py) and `kiln serve` shows it live."""

from __future__ import annotations

import re
from datetime import datetime

from kiln.ledger.samples import Sample
from kiln.router.haproxy_api import ServerStat

_RELEASE = re.compile(r"-v(\d+)-[0-9a-f]+$")  # instance names: kiln-APP-ENV-SERVICE-vN-xxxxxx

SAMPLE_EVERY = 10.0  # seconds between two readings the agent records
RETENTION = 24 * 3600.0  # seconds samples are kept


def release_of(server: str) -> int | None:
    found = _RELEASE.search(server)
    return int(found.group(1)) if found else None


def per_release(before: dict[str, ServerStat], now: dict[str, ServerStat], seconds: float,
                at: datetime) -> list[Sample]:
    """One Sample per release that has a server in `now`: the responses and 5xx counted since
    `before` (a server new since then counts from zero; a counter that went back, a server
    re-added, counts from zero too) and the mean response time weighted by responses."""
    totals: dict[int, list[float]] = {}
    for name, stat in now.items():
        release = release_of(name)
        if release is None:
            continue
        first = before.get(name)
        responses = stat.responses - (first.responses if first else 0)
        errors = stat.errors - (first.errors if first else 0)
        if responses < 0 or errors < 0:
            responses, errors = stat.responses, stat.errors
        t = totals.setdefault(release, [0, 0, 0.0])
        t[0] += responses
        t[1] += errors
        t[2] += stat.response_ms * responses
    return [Sample(release, at, seconds, int(r), int(e), (ms / r) if r else 0.0)
            for release, (r, e, ms) in sorted(totals.items())]
