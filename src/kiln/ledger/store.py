"""The ledger: releases, rollouts with their steps, and events.

SQLite in WAL mode by default, PostgreSQL through a URL. Opening a ledger brings its schema to
the newest Alembic revision."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, func, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, OperationalError, ProgrammingError, SQLAlchemyError
from sqlalchemy.orm import Session

from kiln.errors import LedgerError
from kiln.ledger.schema import EventRow, ReleaseRow, RolloutRow, StepRow

MIGRATIONS = Path(__file__).parent / "migrations"
# The newest migration's revision (a unit test checks it against migrations/versions). Knowing it
# here spares importing Alembic, ~0.3 s, on every command once the schema is current.
SCHEMA_HEAD = "0001"


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class Release:
    app: str
    env: str
    number: int
    image: str
    image_tag: str
    inputs_hash: str
    config: dict[str, Any]
    config_digest: str
    spec_digest: str
    commit: str | None
    dirty: bool
    note: str
    created_at: datetime

    def summary(self) -> dict[str, Any]:
        return {"number": self.number, "image": self.image, "commit": self.commit,
                "created_at": self.created_at.isoformat() + "Z", "dirty": self.dirty,
                "inputs_hash": self.inputs_hash, "note": self.note}


@dataclass(frozen=True)
class Rollout:
    id: int
    app: str
    env: str
    from_release: int | None
    to_release: int
    strategy: str
    state: str
    reason: str
    started_at: datetime
    finished_at: datetime | None


def _release(row: ReleaseRow) -> Release:
    return Release(row.app, row.env, row.number, row.image, row.image_tag, row.inputs_hash,
                   json.loads(row.config), row.config_digest, row.spec_digest, row.commit, row.dirty,
                   row.note, row.created_at)


def _rollout(row: RolloutRow) -> Rollout:
    return Rollout(row.id, row.app, row.env, row.from_release, row.to_release, row.strategy, row.state,
                   row.reason, row.started_at, row.finished_at)


class Ledger:
    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.engine: Engine = create_engine(url)
        except (ArgumentError, ImportError) as exc:
            raise LedgerError(f"cannot use ledger URL {url!r}: {exc}.",
                              "Set KILN_LEDGER_URL to sqlite:///PATH or postgresql+psycopg://USER@HOST/DB.") from None
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._migrate()

    def schema_revision(self) -> str | None:
        try:
            with self.engine.connect() as conn:
                return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except (OperationalError, ProgrammingError):
            return None  # a new database: no version table yet

    def _migrate(self) -> None:
        try:
            if self.schema_revision() == SCHEMA_HEAD:
                return
            from alembic import command
            from alembic.config import Config

            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS))
            with self.engine.begin() as conn:
                config.attributes["connection"] = conn
                command.upgrade(config, "head")
        except OperationalError as exc:
            raise LedgerError(f"cannot open the ledger at {self.url}: {exc.orig}.",
                              "Check KILN_LEDGER_URL and that the database is reachable and writable.") from None

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    # --- releases -----------------------------------------------------------------------

    def record_release(self, *, app: str, env: str, image: str, image_tag: str, inputs_hash: str,
                       config: dict[str, Any], config_digest: str, spec_digest: str,
                       commit: str | None, dirty: bool, note: str = "") -> Release:
        """Append the next release (v1, v2, …) of app/env. Numbers are never reused."""
        try:
            with self.session() as s, s.begin():
                last = s.scalar(select(func.max(ReleaseRow.number)).where(ReleaseRow.app == app, ReleaseRow.env == env))
                row = ReleaseRow(app=app, env=env, number=(last or 0) + 1, image=image, image_tag=image_tag,
                                 inputs_hash=inputs_hash, config=json.dumps(config, sort_keys=True),
                                 config_digest=config_digest, spec_digest=spec_digest, commit=commit,
                                 dirty=dirty, note=note, created_at=now())
                s.add(row)
            return _release(row)
        except SQLAlchemyError as exc:
            raise LedgerError(f"recording a release failed: {exc}") from None

    def releases(self, app: str, env: str, limit: int | None = None) -> list[Release]:
        with self.session() as s:
            q = (select(ReleaseRow).where(ReleaseRow.app == app, ReleaseRow.env == env)
                 .order_by(ReleaseRow.number.desc()).limit(limit))
            return [_release(r) for r in s.scalars(q)]

    def release(self, app: str, env: str, number: int) -> Release | None:
        with self.session() as s:
            row = s.scalar(select(ReleaseRow).where(ReleaseRow.app == app, ReleaseRow.env == env,
                                                    ReleaseRow.number == number))
            return _release(row) if row else None

    def current_release(self, app: str, env: str) -> Release | None:
        """The release the last successful rollout put in service."""
        with self.session() as s:
            number = s.scalar(select(RolloutRow.to_release)
                              .where(RolloutRow.app == app, RolloutRow.env == env, RolloutRow.state == "succeeded")
                              .order_by(RolloutRow.id.desc()).limit(1))
        return self.release(app, env, number) if number is not None else None

    def release_states(self, app: str, env: str) -> dict[int, str]:
        """What became of each release: serving, served (earlier), aborted, rolling out."""
        with self.session() as s:
            rows = s.execute(select(RolloutRow.to_release, RolloutRow.state)
                             .where(RolloutRow.app == app, RolloutRow.env == env).order_by(RolloutRow.id)).all()
        states: dict[int, str] = {}
        current = None  # the last successful rollout's release, as in current_release()
        for number, state in rows:
            if state == "succeeded":
                states[number] = "served"
                current = number
            elif state == "running" and states.get(number) != "served":
                states[number] = "rolling out"
            elif state == "aborted" and number not in states:
                states[number] = "aborted"
        if current is not None:
            states[current] = "serving"
        return states

    # --- rollouts -----------------------------------------------------------------------

    def start_rollout(self, app: str, env: str, from_release: int | None, to_release: int, strategy: str) -> Rollout:
        with self.session() as s, s.begin():
            row = RolloutRow(app=app, env=env, from_release=from_release, to_release=to_release,
                             strategy=strategy, state="running", reason="", started_at=now())
            s.add(row)
        return _rollout(row)

    def finish_rollout(self, rollout_id: int, state: str, reason: str = "") -> None:
        with self.session() as s, s.begin():
            row = s.get(RolloutRow, rollout_id)
            assert row is not None
            row.state, row.reason, row.finished_at = state, reason, now()

    def record_step(self, rollout_id: int, action: str, target: str, state: str, detail: str = "") -> None:
        with self.session() as s, s.begin():
            s.add(StepRow(rollout_id=rollout_id, action=action, target=target, state=state, detail=detail, at=now()))

    def rollouts(self, app: str, env: str, limit: int = 20) -> list[Rollout]:
        with self.session() as s:
            q = (select(RolloutRow).where(RolloutRow.app == app, RolloutRow.env == env)
                 .order_by(RolloutRow.id.desc()).limit(limit))
            return [_rollout(r) for r in s.scalars(q)]

    def steps(self, rollout_id: int) -> list[dict[str, Any]]:
        with self.session() as s:
            q = select(StepRow).where(StepRow.rollout_id == rollout_id).order_by(StepRow.id)
            return [{"action": r.action, "target": r.target, "state": r.state, "detail": r.detail,
                     "at": r.at.isoformat() + "Z"} for r in s.scalars(q)]

    # --- events -------------------------------------------------------------------------

    def event(self, app: str, env: str, kind: str, message: str) -> None:
        with self.session() as s, s.begin():
            s.add(EventRow(app=app, env=env, kind=kind, message=message, at=now()))

    def events(self, app: str, env: str, limit: int = 50) -> list[dict[str, Any]]:
        with self.session() as s:
            q = (select(EventRow).where(EventRow.app == app, EventRow.env == env)
                 .order_by(EventRow.id.desc()).limit(limit))
            return [{"kind": r.kind, "message": r.message, "at": r.at.isoformat() + "Z"} for r in s.scalars(q)]


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
