"""What happened to an app's environments: one row per event, kinds from ledger/kinds.py."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select

from kiln.ledger.db import Database, now
from kiln.ledger.schema import EventRow


@dataclass(frozen=True)
class Event:
    id: int
    app: str
    env: str
    kind: str  # one of kiln.ledger.kinds' event kinds
    message: str
    at: datetime  # naive UTC


class Events:
    def __init__(self, db: Database) -> None:
        self.db = db

    def record(self, app: str, env: str, kind: str, message: str) -> None:
        """`kind` is one of the event kinds in kiln.ledger.kinds."""
        with self.db.session() as s, s.begin():
            s.add(EventRow(app=app, env=env, kind=kind, message=message, at=now()))

    def of(self, app: str, env: str | None = None, *, limit: int | None = 50, after: int = 0,
           since: datetime | None = None, kinds: tuple[str, ...] = ()) -> list[Event]:
        """app's events (of one env, if given), oldest first: the newest `limit`, or all those after
        event id `after` (for following), or since a time, optionally of some kinds only."""
        q = select(EventRow).where(EventRow.app == app, EventRow.id > after)
        if env is not None:
            q = q.where(EventRow.env == env)
        if since is not None:
            q = q.where(EventRow.at >= since)
        if kinds:
            q = q.where(EventRow.kind.in_(kinds))
        with self.db.session() as s:
            rows = list(s.scalars(q.order_by(EventRow.id.desc()).limit(limit)))
        return [Event(r.id, r.app, r.env, r.kind, r.message, r.at) for r in reversed(rows)]

    def count(self, kind: str) -> int:
        """How many events of `kind` there are (of every app)."""
        with self.db.session() as s:
            return s.scalar(select(func.count()).select_from(EventRow).where(EventRow.kind == kind)) or 0

    def messages(self, kind: str) -> list[str]:
        """The messages of every event of `kind` (of every app), oldest first."""
        with self.db.session() as s:
            return list(s.scalars(select(EventRow.message).where(EventRow.kind == kind).order_by(EventRow.id)))
