"""Environments kiln made (recreated releases, previews), and the releases pinned against gc."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select

from kiln.ledger.db import Database, changed, now
from kiln.ledger.schema import EnvironmentRow, PinRow


@dataclass(frozen=True)
class MadeEnv:
    """An environment kiln made (not declared in kiln.yaml): a recreated release or a preview."""

    app: str
    env: str
    kind: str  # recreated, preview
    port: int
    origin: str
    created_at: datetime
    expires_at: datetime | None


def _made(row: EnvironmentRow) -> MadeEnv:
    return MadeEnv(row.app, row.env, row.kind, row.port, row.origin, row.created_at, row.expires_at)


class Environments:
    def __init__(self, db: Database) -> None:
        self.db = db

    def record(self, app: str, env: str, kind: str, port: int, origin: str,
               expires_at: datetime | None = None) -> MadeEnv:
        with self.db.session() as s, s.begin():
            row = s.get(EnvironmentRow, (app, env))
            if row is None:
                row = EnvironmentRow(app=app, env=env)
                s.add(row)
            row.kind, row.port, row.origin, row.created_at, row.expires_at = kind, port, origin, now(), expires_at
        return _made(row)

    def of(self, app: str) -> list[MadeEnv]:
        """The environments kiln made for app, by name."""
        with self.db.session() as s:
            rows = s.scalars(select(EnvironmentRow).where(EnvironmentRow.app == app).order_by(EnvironmentRow.env))
            return [_made(r) for r in rows]

    def get(self, app: str, env: str) -> MadeEnv | None:
        with self.db.session() as s:
            row = s.get(EnvironmentRow, (app, env))
            return _made(row) if row else None

    def forget(self, app: str, env: str) -> None:
        with self.db.session() as s, s.begin():
            s.execute(delete(EnvironmentRow).where(EnvironmentRow.app == app, EnvironmentRow.env == env))

    # --- pins: releases `kiln gc` keeps ---------------------------------------------------------------

    def pin(self, app: str, env: str, number: int) -> None:
        with self.db.session() as s, s.begin():
            if s.get(PinRow, (app, env, number)) is None:
                s.add(PinRow(app=app, env=env, number=number, pinned_at=now()))

    def unpin(self, app: str, env: str, number: int) -> bool:
        with self.db.session() as s, s.begin():
            return changed(s.execute(delete(PinRow).where(PinRow.app == app, PinRow.env == env,
                                                  PinRow.number == number))) == 1

    def pins(self, app: str) -> set[tuple[str, int]]:
        with self.db.session() as s:
            return {(r.env, r.number) for r in s.scalars(select(PinRow).where(PinRow.app == app))}
