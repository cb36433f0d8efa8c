"""The ledger: releases, rollouts with their steps, events, and the per-environment locks.

SQLite in WAL mode by default, PostgreSQL through a URL. Opening a ledger brings its schema to
the newest Alembic revision."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, delete, event, func, insert, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import (
    ArgumentError,
    IntegrityError,
    OperationalError,
    ProgrammingError,
    SQLAlchemyError,
)
from sqlalchemy.orm import Session

from kiln.errors import LedgerError, LockHeld
from kiln.ledger.schema import (
    EnvironmentRow,
    EventRow,
    LockRow,
    PinRow,
    ReleaseRow,
    RolloutRow,
    StepRow,
)

MIGRATIONS = Path(__file__).parent / "migrations"
# The newest migration's revision (a unit test checks it against migrations/versions). Knowing it
# here spares importing Alembic, ~0.3 s, on every command once the schema is current.
SCHEMA_HEAD = "0004"

ROLLOUT_STATES = ("running", "paused", "succeeded", "aborted")
UNFINISHED = ("running", "paused")


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
    origin: str = ""

    def summary(self) -> dict[str, Any]:
        return {"number": self.number, "image": self.image, "commit": self.commit,
                "created_at": self.created_at.isoformat() + "Z", "dirty": self.dirty,
                "inputs_hash": self.inputs_hash, "note": self.note, "origin": self.origin}


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
    phase: str  # where the strategy's state machine is ("" before it records one)
    data: dict[str, Any]  # that state machine's persisted data


@dataclass(frozen=True)
class Lock:
    """Who may change app/env right now. The holder renews `heartbeat_at`; once it is more than
    `lease_seconds` old, anyone may take the lock over."""

    app: str
    env: str
    token: str
    user: str
    host: str
    pid: int
    reason: str
    acquired_at: datetime
    heartbeat_at: datetime
    lease_seconds: float

    @property
    def holder(self) -> str:
        return f"{self.user}@{self.host} pid {self.pid}"

    def expired(self, at: datetime) -> bool:
        return self.heartbeat_at + timedelta(seconds=self.lease_seconds) < at

    def summary(self) -> dict[str, Any]:
        return {"app": self.app, "env": self.env, "holder": self.holder, "user": self.user, "host": self.host,
                "pid": self.pid, "reason": self.reason, "acquired_at": self.acquired_at.isoformat() + "Z",
                "heartbeat_at": self.heartbeat_at.isoformat() + "Z", "lease_seconds": self.lease_seconds}


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

    def summary(self) -> dict[str, Any]:
        return {"app": self.app, "env": self.env, "kind": self.kind, "port": self.port, "origin": self.origin,
                "created_at": self.created_at.isoformat() + "Z",
                "expires_at": self.expires_at.isoformat() + "Z" if self.expires_at else None}


def _release(row: ReleaseRow) -> Release:
    return Release(row.app, row.env, row.number, row.image, row.image_tag, row.inputs_hash,
                   json.loads(row.config), row.config_digest, row.spec_digest, row.commit, row.dirty,
                   row.note, row.created_at, row.origin or "")


def _rollout(row: RolloutRow) -> Rollout:
    return Rollout(row.id, row.app, row.env, row.from_release, row.to_release, row.strategy, row.state,
                   row.reason, row.started_at, row.finished_at, row.phase, json.loads(row.data or "{}"))


def _lock(row: LockRow) -> Lock:
    return Lock(row.app, row.env, row.token, row.user, row.host, row.pid, row.reason, row.acquired_at,
                row.heartbeat_at, row.lease_seconds)


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
                       commit: str | None, dirty: bool, note: str = "", origin: str = "") -> Release:
        """Append the next release (v1, v2, …) of app/env. Numbers are never reused."""
        try:
            with self.session() as s, s.begin():
                last = s.scalar(select(func.max(ReleaseRow.number)).where(ReleaseRow.app == app, ReleaseRow.env == env))
                row = ReleaseRow(app=app, env=env, number=(last or 0) + 1, image=image, image_tag=image_tag,
                                 inputs_hash=inputs_hash, config=json.dumps(config, sort_keys=True),
                                 config_digest=config_digest, spec_digest=spec_digest, commit=commit,
                                 dirty=dirty, note=note, created_at=now(), origin=origin)
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
            elif state in UNFINISHED and states.get(number) != "served":
                states[number] = "rolling out"
            elif state == "aborted" and number not in states:
                states[number] = "aborted"
        if current is not None:
            states[current] = "serving"
        return states

    # --- rollouts -----------------------------------------------------------------------

    def start_rollout(self, app: str, env: str, from_release: int | None, to_release: int, strategy: str,
                      data: dict[str, Any] | None = None) -> Rollout:
        with self.session() as s, s.begin():
            row = RolloutRow(app=app, env=env, from_release=from_release, to_release=to_release,
                             strategy=strategy, state="running", reason="", started_at=now(), phase="",
                             data=json.dumps(data or {}, sort_keys=True))
            s.add(row)
        return _rollout(row)

    def set_rollout_phase(self, rollout_id: int, phase: str, data: dict[str, Any] | None = None) -> None:
        """Record the strategy's phase; `data`, when given, replaces the stored data."""
        with self.session() as s, s.begin():
            row = s.get(RolloutRow, rollout_id)
            if row is None:
                raise ValueError(f"no rollout {rollout_id}")
            row.phase = phase
            if data is not None:
                row.data = json.dumps(data, sort_keys=True)

    def finish_rollout(self, rollout_id: int, state: str, reason: str = "") -> None:
        """Set the state: succeeded or aborted end it; running and paused (re)open it."""
        if state not in ROLLOUT_STATES:
            raise ValueError(f"rollout state {state!r} is not one of {', '.join(ROLLOUT_STATES)}")
        with self.session() as s, s.begin():
            row = s.get(RolloutRow, rollout_id)
            if row is None:
                raise ValueError(f"no rollout {rollout_id}")
            row.state, row.reason = state, reason
            row.finished_at = None if state in UNFINISHED else now()

    def rollout(self, rollout_id: int) -> Rollout | None:
        with self.session() as s:
            row = s.get(RolloutRow, rollout_id)
            return _rollout(row) if row else None

    def unfinished_rollouts(self, app: str, env: str) -> list[Rollout]:
        """Rollouts still running or paused, oldest first."""
        with self.session() as s:
            q = (select(RolloutRow).where(RolloutRow.app == app, RolloutRow.env == env,
                                          RolloutRow.state.in_(UNFINISHED)).order_by(RolloutRow.id))
            return [_rollout(r) for r in s.scalars(q)]

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

    # --- locks --------------------------------------------------------------------------
    # One row per app/env. Every write is a single statement conditional on what was read (no
    # row → INSERT, which the primary key makes exclusive; a row → UPDATE/DELETE WHERE token =
    # the token read), so two processes can never both believe they took the lock, on SQLite
    # as on PostgreSQL, without SELECT … FOR UPDATE. Reads and writes use separate short
    # transactions: SQLite cannot upgrade a read transaction to a write one while another
    # writer commits, and the conditional write makes holding the read unnecessary.

    def lock(self, app: str, env: str) -> Lock | None:
        with self.session() as s:
            row = s.get(LockRow, (app, env))
            return _lock(row) if row else None

    def acquire_lock(self, app: str, env: str, *, user: str, host: str, pid: int, reason: str, lease: float,
                     holder_alive: Callable[[Lock], bool]) -> Lock:
        """Take app/env's lock: when there is none, when its holder's lease expired, or when
        `holder_alive(holder)` says the holder is gone. Otherwise raise LockHeld."""
        for _ in range(5):  # each retry means someone else changed the lock between read and write
            at = now()
            held = self.lock(app, env)
            mine = Lock(app, env, secrets.token_hex(16), user, host, pid, reason, at, at, lease)
            values = {"token": mine.token, "user": user, "host": host, "pid": pid, "reason": reason,
                      "acquired_at": at, "heartbeat_at": at, "lease_seconds": lease}
            if held is None:
                try:
                    with self.session() as s, s.begin():
                        s.execute(insert(LockRow).values(app=app, env=env, **values))
                    return mine
                except IntegrityError:
                    continue  # another process inserted first; read who it is
            if not held.expired(at) and holder_alive(held):
                raise LockHeld(held, at)
            # Also matching heartbeat_at: a holder that renewed since we read is alive after all.
            with self.session() as s, s.begin():
                taken = s.execute(update(LockRow).where(
                    LockRow.app == app, LockRow.env == env, LockRow.token == held.token,
                    LockRow.heartbeat_at == held.heartbeat_at).values(**values)).rowcount
            if taken == 1:
                return mine
        held = self.lock(app, env)
        if held is not None:
            raise LockHeld(held, now())
        raise LedgerError(f"could not take the lock of {app}/{env}: it kept changing hands.", "Try again.")

    def heartbeat(self, lock: Lock) -> bool:
        """Renew the lease; False when the lock was lost (taken over or force-released)."""
        with self.session() as s, s.begin():
            return s.execute(update(LockRow).where(
                LockRow.app == lock.app, LockRow.env == lock.env, LockRow.token == lock.token)
                .values(heartbeat_at=now())).rowcount == 1

    def release_lock(self, lock: Lock) -> None:
        """Release the lock if it is still ours; a lock that changed hands is left alone."""
        with self.session() as s, s.begin():
            s.execute(delete(LockRow).where(
                LockRow.app == lock.app, LockRow.env == lock.env, LockRow.token == lock.token))

    def force_release(self, app: str, env: str) -> Lock | None:
        """Delete whatever lock app/env has, and return it (None when there was none)."""
        while (held := self.lock(app, env)) is not None:
            with self.session() as s, s.begin():
                gone = s.execute(delete(LockRow).where(
                    LockRow.app == app, LockRow.env == env, LockRow.token == held.token)).rowcount
            if gone == 1:
                return held
        return None

    # --- environments kiln made, and pins ------------------------------------------------------

    def record_environment(self, app: str, env: str, kind: str, port: int, origin: str,
                           expires_at: datetime | None = None) -> MadeEnv:
        with self.session() as s, s.begin():
            row = s.get(EnvironmentRow, (app, env))
            if row is None:
                row = EnvironmentRow(app=app, env=env)
                s.add(row)
            row.kind, row.port, row.origin, row.created_at, row.expires_at = kind, port, origin, now(), expires_at
        return MadeEnv(app, env, kind, port, origin, row.created_at, expires_at)

    def made_environments(self, app: str) -> list[MadeEnv]:
        with self.session() as s:
            rows = s.scalars(select(EnvironmentRow).where(EnvironmentRow.app == app).order_by(EnvironmentRow.env))
            return [MadeEnv(r.app, r.env, r.kind, r.port, r.origin, r.created_at, r.expires_at) for r in rows]

    def made_environment(self, app: str, env: str) -> MadeEnv | None:
        return next((e for e in self.made_environments(app) if e.env == env), None)

    def forget_environment(self, app: str, env: str) -> None:
        with self.session() as s, s.begin():
            s.execute(delete(EnvironmentRow).where(EnvironmentRow.app == app, EnvironmentRow.env == env))

    def pin(self, app: str, env: str, number: int) -> None:
        with self.session() as s, s.begin():
            if s.get(PinRow, (app, env, number)) is None:
                s.add(PinRow(app=app, env=env, number=number, pinned_at=now()))

    def unpin(self, app: str, env: str, number: int) -> bool:
        with self.session() as s, s.begin():
            return s.execute(delete(PinRow).where(PinRow.app == app, PinRow.env == env,
                                                  PinRow.number == number)).rowcount == 1

    def pins(self, app: str) -> set[tuple[str, int]]:
        with self.session() as s:
            return {(r.env, r.number) for r in s.scalars(select(PinRow).where(PinRow.app == app))}

    def released_environments(self, app: str) -> list[str]:
        """Every environment of app with at least one release."""
        with self.session() as s:
            return sorted(s.scalars(select(ReleaseRow.env).where(ReleaseRow.app == app).distinct()))

    # --- events -------------------------------------------------------------------------

    def event(self, app: str, env: str, kind: str, message: str) -> None:
        with self.session() as s, s.begin():
            s.add(EventRow(app=app, env=env, kind=kind, message=message, at=now()))

    def events(self, app: str, env: str | None = None, *, limit: int | None = 50, after: int = 0,
               since: datetime | None = None, kinds: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """app's events (of one env, if given), oldest first: the newest `limit`, or all those after
        event id `after` (for following), or since a time, optionally of some kinds only."""
        q = select(EventRow).where(EventRow.app == app, EventRow.id > after)
        if env is not None:
            q = q.where(EventRow.env == env)
        if since is not None:
            q = q.where(EventRow.at >= since)
        if kinds:
            q = q.where(EventRow.kind.in_(kinds))
        with self.session() as s:
            rows = list(s.scalars(q.order_by(EventRow.id.desc()).limit(limit)))
        return [{"id": r.id, "env": r.env, "kind": r.kind, "message": r.message, "at": r.at.isoformat() + "Z"}
                for r in reversed(rows)]


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
