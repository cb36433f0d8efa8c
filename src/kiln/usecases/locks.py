"""`kiln lock status` and `kiln lock release --force`: who holds an environment's lock, and
breaking the lock of a holder that is gone."""

from __future__ import annotations

from datetime import datetime

from kiln import views
from kiln.context import Context
from kiln.errors import UsageError
from kiln.ledger.db import now
from kiln.ledger.locks import Lock


def state_of(app: str, env: str, lock: Lock | None, at: datetime) -> views.LockStatus:
    """`lock` (None: not locked) of app/env as read at `at` (the ledger's naive UTC)."""
    if lock is None:
        return views.LockStatus(app=app, env=env, locked=False, at=at)
    return views.LockStatus(app=app, env=env, locked=True, at=at, holder=lock.holder, user=lock.user, host=lock.host,
                            pid=lock.pid, reason=lock.reason, acquired_at=lock.acquired_at,
                            heartbeat_at=lock.heartbeat_at, lease_seconds=lock.lease_seconds,
                            expired=lock.expired(at),
                            seconds_left=lock.lease_seconds - (at - lock.heartbeat_at).total_seconds())


def status(ctx: Context, app: str, env: str) -> views.LockStatus:
    return state_of(app, env, ctx.ledger.locks.get(app, env), now())


def force_release(ctx: Context, app: str, env: str, force: bool) -> views.LockStatus:
    """Remove app/env's lock, whoever holds it; without `force`, a UsageError that says why not.
    Returns the lock removed (not `locked` when there was none) and whether its lease had expired."""
    lock = ctx.ledger.locks.get(app, env)
    if lock is None:
        return state_of(app, env, None, now())
    if not force:
        raise UsageError(f"{app}/{env} is locked by {lock.holder}; not releasing it without --force: "
                         "releasing the lock of a holder that still runs lets two rollouts run at once.",
                         f"Check that process is gone (`kiln lock status -e {env}`), then run "
                         f"`kiln lock release --force -e {env}`.")
    gone = ctx.ledger.locks.force_release(app, env)
    return state_of(app, env, gone, now())
