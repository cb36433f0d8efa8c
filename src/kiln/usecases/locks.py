"""`kiln lock status` and `kiln lock release --force`: who holds an environment's lock, and
breaking the lock of a holder that is gone."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from kiln.context import Context
from kiln.errors import UsageError
from kiln.ledger.db import now
from kiln.ledger.locks import Lock


@dataclass(frozen=True)
class LockState:
    lock: Lock | None  # None: not locked
    at: datetime  # when it was read (the ledger's naive UTC)

    @property
    def expired(self) -> bool:
        return self.lock is not None and self.lock.expired(self.at)

    @property
    def seconds_left(self) -> float:
        """Until the lease runs out (negative once it has)."""
        if self.lock is None:
            return 0.0
        return self.lock.lease_seconds - (self.at - self.lock.heartbeat_at).total_seconds()


def status(ctx: Context, app: str, env: str) -> LockState:
    lock = ctx.ledger.locks.get(app, env)
    return LockState(lock, now())


def force_release(ctx: Context, app: str, env: str, force: bool) -> LockState:
    """Remove app/env's lock, whoever holds it; without `force`, a UsageError that says why not.
    Returns the lock removed (None when there was none) and whether its lease had expired."""
    lock = ctx.ledger.locks.get(app, env)
    if lock is None:
        return LockState(None, now())
    if not force:
        raise UsageError(f"{app}/{env} is locked by {lock.holder}; not releasing it without --force: "
                         "releasing the lock of a holder that still runs lets two rollouts run at once.",
                         f"Check that process is gone (`kiln lock status -e {env}`), then run "
                         f"`kiln lock release --force -e {env}`.")
    gone = ctx.ledger.locks.force_release(app, env)
    return LockState(gone, now())
