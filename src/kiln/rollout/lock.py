"""The per-environment lock, held while kiln changes an environment.

Two kiln processes changing one environment at once would each plan against containers the
other is starting or removing. So a change runs inside `hold()`: the ledger's lock row names
this process, a background thread renews its lease, and the lock is released on the way out,
also when the body raises. A kiln that dies without releasing leaves a lock that the next kiln
takes over: at once when the holder ran on this host and its pid is gone, else once the lease
expired (a process on another host cannot be checked; only its silence can be seen).

What works under the lock gets its `Lease` as a value (the executor checks it before every step),
never through shared state."""

from __future__ import annotations

import getpass
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kiln import process
from kiln.errors import LockLost

if TYPE_CHECKING:  # SQLAlchemy costs ~0.3 s to import; callers already hold a Ledger
    from kiln.ledger.locks import Lock
    from kiln.ledger.store import Ledger


@dataclass(frozen=True)
class Lease:
    """Whether the lock some work runs under is still this process's. `lost` is set when a
    heartbeat found the lock gone (taken over or force-released) or could not renew it for a whole
    lease; the work should then stop changing the environment, since someone else may be changing
    it. A Lease nobody sets (`Lease()`) is never lost."""

    lost: threading.Event = field(default_factory=threading.Event)

    def check(self) -> None:
        """LockLost once the lock is lost: call before each change."""
        if self.lost.is_set():
            raise LockLost("this kiln lost the environment's lock mid-rollout (its lease ran out or it was "
                           "force-released) and stopped without touching anything more.",
                           "The new holder completes or undoes the rollout; `kiln lock status` shows who.")


@dataclass(frozen=True)
class Held:
    """What `hold()` yields: the lock row, and the lease to hand to the work done under it."""

    lock: Lock
    lease: Lease = field(default_factory=Lease)

    @property
    def lost(self) -> threading.Event:
        return self.lease.lost


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no USER/LOGNAME, no passwd entry (an arbitrary uid in a container)
        return "unknown"


def holder_alive(lock: Lock) -> bool:
    """Whether the lock's holder may still run. Only a process on this host can be checked."""
    if lock.host != socket.gethostname() or lock.pid <= 0:  # pid <= 0 would signal process groups
        return True
    return process.alive(lock.pid)


AGENT = "agent"  # the reason an agent's reconcile pass gives: short, so others wait for it


def lease_name(env: str) -> str:
    """The lock that makes one agent the leader of `env` (beside env's own lock)."""
    return f"{env}/agent"


PATIENCE = 30.0  # how long a change waits for an agent's pass to end
RETRY = 0.1  # between two attempts while an agent's pass holds the lock
# How _acquire tells the time and waits: replaced by tests to order a waiting change deterministically.
_clock: Callable[[], float] = time.monotonic
_sleep: Callable[[float], None] = time.sleep


def _acquire(ledger: Ledger, app: str, env: str, reason: str, lease: float) -> Lock:
    from kiln.errors import LockHeld

    deadline = _clock() + PATIENCE
    while True:
        try:
            return ledger.locks.acquire(app, env, user=_user(), host=socket.gethostname(), pid=os.getpid(),
                                       reason=reason, lease=lease, holder_alive=holder_alive)
        except LockHeld as exc:
            # An agent healing the environment is done in seconds; a deploy waits for it rather
            # than failing. Anything else (another deploy) fails at once.
            if exc.lock.reason != AGENT or reason == AGENT or _clock() > deadline:
                raise
            _sleep(RETRY)


@contextmanager
def hold(ledger: Ledger, app: str, env: str, reason: str, lease: float = 30.0) -> Iterator[Held]:
    """Hold app/env's lock for the body; raises LockHeld when another live process holds it (after
    waiting up to PATIENCE for an agent's pass)."""
    lock = _acquire(ledger, app, env, reason, lease)
    held = Held(lock)
    stop = threading.Event()  # set on exit, so the thread ends at once rather than after its sleep

    def beat() -> None:
        # Three beats per lease: one slow or failed beat does not yet let anyone take over.
        renewed = time.monotonic()
        while not stop.wait(lease / 3):
            try:
                if not ledger.locks.heartbeat(lock):
                    held.lost.set()
                    return
                renewed = time.monotonic()
            except Exception:  # the database hiccuped; retry, but past a lease others may take over
                if time.monotonic() - renewed > lease:
                    held.lost.set()
                    return

    thread = threading.Thread(target=beat, name=f"kiln-lock-{app}-{env}", daemon=True)
    thread.start()
    try:
        yield held
    finally:
        stop.set()
        thread.join()
        ledger.locks.release(lock)  # only deletes the row if it still carries our token
