"""The per-environment locks (and the agents' leases, which are locks named ENV/agent).

One row per app/env. Every write is a single statement conditional on what was read (no row →
INSERT, which the primary key makes exclusive; a row → UPDATE/DELETE WHERE token = the token
read), so two processes can never both believe they took the lock, on SQLite as on PostgreSQL,
without SELECT … FOR UPDATE. Reads and writes use separate short transactions: SQLite cannot
upgrade a read transaction to a write one while another writer commits, and the conditional
write makes holding the read unnecessary."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, insert, update
from sqlalchemy.exc import IntegrityError

from kiln.errors import LedgerError, LockHeld
from kiln.ledger.db import Database, changed, now
from kiln.ledger.schema import LockRow


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


def _lock(row: LockRow) -> Lock:
    return Lock(row.app, row.env, row.token, row.user, row.host, row.pid, row.reason, row.acquired_at,
                row.heartbeat_at, row.lease_seconds)


class Locks:
    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, app: str, env: str) -> Lock | None:
        with self.db.session() as s:
            row = s.get(LockRow, (app, env))
            return _lock(row) if row else None

    def acquire(self, app: str, env: str, *, user: str, host: str, pid: int, reason: str, lease: float,
                holder_alive: Callable[[Lock], bool]) -> Lock:
        """Take app/env's lock: when there is none, when its holder's lease expired, or when
        `holder_alive(holder)` says the holder is gone. Otherwise raise LockHeld."""
        for _ in range(5):  # each retry means someone else changed the lock between read and write
            at = now()
            held = self.get(app, env)
            mine = Lock(app, env, secrets.token_hex(16), user, host, pid, reason, at, at, lease)
            values = {"token": mine.token, "user": user, "host": host, "pid": pid, "reason": reason,
                      "acquired_at": at, "heartbeat_at": at, "lease_seconds": lease}
            if held is None:
                try:
                    with self.db.session(passing=(IntegrityError,)) as s, s.begin():
                        s.execute(insert(LockRow).values(app=app, env=env, **values))
                    return mine
                except IntegrityError:
                    continue  # another process inserted first; read who it is
            if not held.expired(at) and holder_alive(held):
                raise LockHeld(held, at)
            # Also matching heartbeat_at: a holder that renewed since we read is alive after all.
            with self.db.session() as s, s.begin():
                taken = changed(s.execute(update(LockRow).where(
                    LockRow.app == app, LockRow.env == env, LockRow.token == held.token,
                    LockRow.heartbeat_at == held.heartbeat_at).values(**values)))
            if taken == 1:
                return mine
        held = self.get(app, env)
        if held is not None:
            raise LockHeld(held, now())
        raise LedgerError(f"could not take the lock of {app}/{env}: it kept changing hands.", "Try again.")

    def heartbeat(self, lock: Lock) -> bool:
        """Renew the lease; False when the lock was lost (taken over or force-released)."""
        with self.db.session() as s, s.begin():
            return changed(s.execute(update(LockRow).where(
                LockRow.app == lock.app, LockRow.env == lock.env, LockRow.token == lock.token)
                .values(heartbeat_at=now()))) == 1

    def release(self, lock: Lock) -> None:
        """Release the lock if it is still ours; a lock that changed hands is left alone."""
        with self.db.session() as s, s.begin():
            s.execute(delete(LockRow).where(
                LockRow.app == lock.app, LockRow.env == lock.env, LockRow.token == lock.token))

    def force_release(self, app: str, env: str) -> Lock | None:
        """Delete whatever lock app/env has, and return it (None when there was none)."""
        while (held := self.get(app, env)) is not None:
            with self.db.session() as s, s.begin():
                gone = changed(s.execute(delete(LockRow).where(
                    LockRow.app == app, LockRow.env == env, LockRow.token == held.token)))
            if gone == 1:
                return held
        return None
