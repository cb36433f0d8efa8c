"""Traffic per release over time (requests, 5xx, response time), sampled from HAProxy's
per-server counters by the agent, pruned after a retention."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select

from kiln.ledger.db import Database, changed, now
from kiln.ledger.schema import SampleRow


@dataclass(frozen=True)
class Sample:
    release: int
    at: datetime  # end of the interval (the ledger's naive UTC)
    seconds: float
    requests: int
    errors: int
    response_ms: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


class Samples:
    def __init__(self, db: Database) -> None:
        self.db = db

    def record(self, app: str, env: str, samples: list[Sample]) -> None:
        if not samples:
            return
        with self.db.session() as s, s.begin():
            s.add_all(SampleRow(app=app, env=env, release=x.release, at=x.at, seconds=x.seconds,
                                requests=x.requests, errors=x.errors, response_ms=x.response_ms) for x in samples)

    def of(self, app: str, env: str, since: datetime) -> list[Sample]:
        """app/env's samples since a time, oldest first."""
        with self.db.session() as s:
            rows = s.scalars(select(SampleRow).where(SampleRow.app == app, SampleRow.env == env, SampleRow.at >= since)
                             .order_by(SampleRow.at, SampleRow.id))
            return [Sample(r.release, r.at, r.seconds, r.requests, r.errors, r.response_ms) for r in rows]

    def prune(self, before: datetime | None = None) -> int:
        """Forget samples older than `before` (default: now)."""
        with self.db.session() as s, s.begin():
            return changed(s.execute(delete(SampleRow).where(SampleRow.at < (before or now()))))
