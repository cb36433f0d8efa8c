"""The per-environment lock: Ledger.acquire_lock/heartbeat/release_lock/force_release on SQLite,
kiln.rollout.lock.hold(), and `kiln lock status|release`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest

from kiln.errors import LockHeld
from kiln.ledger.db import now
from kiln.ledger.locks import Lock
from kiln.ledger.store import Ledger
from kiln.rollout.lock import hold, holder_alive
from kiln.usecases.locks import state_of
from kiln.views import utc
from unit.cli_inproc import run_kiln


@pytest.fixture
def ledger(tmp_path):
    return Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")


def take(ledger, user="alice", host="box", pid=123, reason="deploy v4", lease=30.0, alive=True, env="production"):
    return ledger.locks.acquire("shop", env, user=user, host=host, pid=pid, reason=reason, lease=lease,
                               holder_alive=lambda _lock: alive)


def age(ledger, lock: Lock, seconds: float) -> Lock:
    """Pretend the holder last heartbeated `seconds` ago."""
    from sqlalchemy import update

    from kiln.ledger.schema import LockRow

    with ledger.db.session() as s, s.begin():
        s.execute(update(LockRow).where(LockRow.token == lock.token)
                  .values(heartbeat_at=now() - timedelta(seconds=seconds)))
    return ledger.locks.get(lock.app, lock.env)


def test_acquire_a_free_lock(ledger):
    assert ledger.locks.get("shop", "production") is None
    lock = take(ledger)
    assert (lock.user, lock.host, lock.pid, lock.reason, lock.lease_seconds) == ("alice", "box", 123, "deploy v4", 30.0)
    assert len(lock.token) == 32 and lock.holder == "alice@box pid 123"
    assert ledger.locks.get("shop", "production") == lock
    assert not lock.expired(now())
    shown = state_of(lock.app, lock.env, lock, now()).to_json()  # its one JSON form (kiln/views.py)
    assert shown["holder"] == "alice@box pid 123" and shown["acquired_at"].endswith("Z")
    json.dumps(shown)
    assert take(ledger, env="staging").env == "staging"  # locks are per environment


def test_second_acquire_raises_lock_held_naming_the_holder(ledger):
    first = take(ledger)
    with pytest.raises(LockHeld) as caught:
        take(ledger, user="bob", pid=456, reason="rollback")
    err = caught.value
    assert err.lock == first and err.exit_code == 1
    assert err.message.startswith("shop/production is locked by alice@box pid 123 (deploy v4) since ")
    assert "heartbeat 0s ago." in err.message
    assert "kiln lock release --force -e production" in err.hint and "lease of 30s" in err.hint
    assert ledger.locks.get("shop", "production") == first


def test_takeover_after_the_lease_expired(ledger):
    stale = age(ledger, take(ledger, lease=5), 6)
    assert stale.expired(now())
    calls = []
    mine = ledger.locks.acquire("shop", "production", user="bob", host="other", pid=9, reason="deploy v5",
                               lease=30, holder_alive=lambda lock: calls.append(lock) or True)
    assert calls == []  # an expired holder needs no liveness check
    assert mine.token != stale.token and ledger.locks.get("shop", "production") == mine


def test_takeover_when_the_holder_is_gone(ledger):
    dead = take(ledger)
    mine = take(ledger, user="bob", alive=False)
    assert mine.user == "bob" and mine.token != dead.token
    assert ledger.locks.get("shop", "production") == mine


def test_lock_held_when_the_lease_is_fresh_and_the_holder_alive(ledger):
    take(ledger, lease=5)
    with pytest.raises(LockHeld):
        take(ledger, user="bob", alive=True)


def test_a_taker_with_a_stale_read_loses_to_the_first(ledger, monkeypatch):
    stale = age(ledger, take(ledger, lease=1), 5)
    winner = take(ledger, user="bob")
    # The second taker read the lock before bob took it over: its conditional UPDATE matches no
    # row, it reads again and finds bob's fresh lock.
    reads = iter([stale])
    real = ledger.locks.get
    monkeypatch.setattr(ledger.locks, "get", lambda app, env: next(reads, None) or real(app, env))
    with pytest.raises(LockHeld) as caught:
        take(ledger, user="carol")
    assert caught.value.lock == winner
    assert real("shop", "production") == winner


def test_a_losing_insert_is_lock_held_not_an_integrity_error(ledger, monkeypatch):
    real = ledger.locks.get
    reads = iter([None])  # the second process saw no lock, then the first inserted
    winner = take(ledger)
    monkeypatch.setattr(ledger.locks, "get", lambda app, env: next(reads, "real") and real(app, env))
    with pytest.raises(LockHeld) as caught:
        take(ledger, user="bob")
    assert caught.value.lock == winner


def test_concurrent_takers_of_an_expired_lock_exactly_one_wins(tmp_path):
    url = f"sqlite:///{tmp_path / 'race.db'}"
    first = Ledger(url)
    age(first, take(first, lease=1), 5)
    ledgers = [Ledger(url) for _ in range(6)]  # as if separate processes
    start = threading.Barrier(len(ledgers))
    results: list[object] = [None] * len(ledgers)

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = take(ledgers[i], user=f"u{i}")
        except LockHeld as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(ledgers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if isinstance(r, Lock)]
    assert len(winners) == 1, results
    assert all(isinstance(r, LockHeld) and r.lock == winners[0] for r in results if r is not winners[0])
    assert first.locks.get("shop", "production") == winners[0]


def test_heartbeat_renews_and_fails_after_force_release(ledger):
    lock = age(ledger, take(ledger), 10)
    assert ledger.locks.heartbeat(lock)
    assert ledger.locks.get("shop", "production").heartbeat_at > lock.heartbeat_at
    assert ledger.locks.force_release("shop", "production").token == lock.token
    assert ledger.locks.get("shop", "production") is None
    assert not ledger.locks.heartbeat(lock)
    assert ledger.locks.force_release("shop", "production") is None


def test_release_with_a_stale_token_leaves_the_new_holder_alone(ledger):
    old = take(ledger)
    new = take(ledger, user="bob", alive=False)
    ledger.locks.release(old)
    assert not ledger.locks.heartbeat(old)
    assert ledger.locks.get("shop", "production") == new
    ledger.locks.release(new)
    assert ledger.locks.get("shop", "production") is None


# --- hold() ----------------------------------------------------------------------------------


def test_holder_alive_checks_pids_on_this_host_only():
    here = socket.gethostname()
    lock = Lock("a", "e", "t" * 32, "u", here, os.getpid(), "", now(), now(), 30)
    assert holder_alive(lock)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: its pid is free
    assert not holder_alive(Lock("a", "e", "t" * 32, "u", here, proc.pid, "", now(), now(), 30))
    assert holder_alive(Lock("a", "e", "t" * 32, "u", here + "-elsewhere", proc.pid, "", now(), now(), 30))
    assert holder_alive(Lock("a", "e", "t" * 32, "u", here, 1, "", now(), now(), 30))  # init: EPERM or alive


def test_hold_heartbeats_and_releases(ledger):
    with hold(ledger, "shop", "production", "deploy v1", lease=0.3) as held:
        assert held.lock.pid == os.getpid() and held.lock.host == socket.gethostname()
        assert held.lock.reason == "deploy v1"
        first = held.lock.heartbeat_at
        # A beat every 0.1 s: wait for one (bounded), rather than sleeping and hoping.
        deadline = time.monotonic() + 10
        while ledger.locks.get("shop", "production").heartbeat_at == first and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ledger.locks.get("shop", "production").heartbeat_at > first
        assert not held.lost.is_set()
        with pytest.raises(LockHeld):  # this very process holds it
            with hold(ledger, "shop", "production", "nested"):
                pass
    assert ledger.locks.get("shop", "production") is None


def test_hold_releases_when_the_body_raises(ledger):
    with pytest.raises(RuntimeError):
        with hold(ledger, "shop", "production", "deploy v1", lease=0.3):
            raise RuntimeError("boom")
    assert ledger.locks.get("shop", "production") is None


def test_hold_notices_a_lost_lock(ledger):
    with hold(ledger, "shop", "production", "deploy v1", lease=0.3) as held:
        ledger.locks.force_release("shop", "production")
        assert held.lost.wait(2)
        other = take(ledger, user="bob")
    assert ledger.locks.get("shop", "production") == other  # leaving did not release bob's lock


def test_hold_takes_over_from_a_dead_process_on_this_host(ledger):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    take(ledger, host=socket.gethostname(), pid=proc.pid, lease=3600)
    with hold(ledger, "shop", "production", "deploy v2") as held:
        assert held.lock.pid == os.getpid()


# --- the CLI ---------------------------------------------------------------------------------

SPEC = """\
app: shop
build:
  steps: [COPY . /app]
services:
  web:
    port: 8000
environments:
  production:
    port: 8080
"""


def kiln(*args, cwd):
    environ = {**os.environ, "KILN_HOME": str(cwd / ".kiln-home"), "NO_COLOR": "1", "COLUMNS": "200"}
    environ.pop("KILN_LEDGER_URL", None)
    return run_kiln(args, cwd=cwd, env=environ)


def test_cli_lock_status_and_release(tmp_path):
    (tmp_path / "kiln.yaml").write_text(SPEC)
    unlocked = kiln("lock", "status", "--json", cwd=tmp_path)
    assert unlocked.returncode == 0, unlocked.stderr
    assert json.loads(unlocked.stdout) is None

    ledger = Ledger(f"sqlite:///{tmp_path / '.kiln-home' / 'ledger.db'}")
    lock = take(ledger, lease=30)
    ledger.db.engine.dispose()

    status = kiln("lock", "status", "--json", "-e", "production", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    # The lock as the API shows it too (views.LockStatus): the holder's fields as before, and since
    # issue 26 also "locked", "seconds_left" and "at" (when it was read).
    assert {k: doc[k] for k in ("app", "env", "holder", "user", "host", "pid", "reason", "lease_seconds", "expired")} == {
        "app": "shop", "env": "production", "holder": "alice@box pid 123", "user": "alice", "host": "box", "pid": 123,
        "reason": "deploy v4", "lease_seconds": 30.0, "expired": False}
    assert doc["acquired_at"] == utc(lock.acquired_at) and doc["locked"] is True and 0 < doc["seconds_left"] <= 30

    text = kiln("lock", "status", cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    assert "locked by alice@box pid 123" in text.stdout and "deploy v4" in text.stdout
    assert "expires in" in text.stdout

    refused = kiln("lock", "release", cwd=tmp_path)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "--force" in refused.stderr and "two rollouts run at once" in refused.stderr
    assert ledger.locks.get("shop", "production") == lock

    forced = kiln("lock", "release", "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert "alice@box pid 123" in forced.stderr
    assert ledger.locks.get("shop", "production") is None


def test_a_change_waits_for_an_agents_pass_but_not_for_another_change(ledger, monkeypatch):
    from kiln.rollout import lock as lock_module
    from kiln.rollout.lock import AGENT, RETRY

    agent_holds, let_go, agent_done = threading.Event(), threading.Event(), threading.Event()

    def agent_pass() -> None:
        with hold(ledger, "shop", "production", AGENT):
            agent_holds.set()
            let_go.wait(10)
        agent_done.set()

    waits: list[float] = []

    def wait(seconds: float) -> None:
        # The change found the agent's lock: only now does the agent's pass end, and the change
        # tries again only once the lock is released. No ordering is left to the scheduler.
        waits.append(seconds)
        let_go.set()
        assert agent_done.wait(10)

    monkeypatch.setattr(lock_module, "_sleep", wait)
    thread = threading.Thread(target=agent_pass)
    thread.start()
    assert agent_holds.wait(10)
    with hold(ledger, "shop", "production", "deploy") as held:
        assert waits == [RETRY] and held.lock.reason == "deploy"
        with pytest.raises(LockHeld):  # an agent's pass does not wait for a change: it skips the environment
            with hold(ledger, "shop", "production", AGENT):
                pass
        assert waits == [RETRY]
    thread.join()
    with hold(ledger, "shop", "production", "deploy"):
        with pytest.raises(LockHeld):  # and a change does not wait for another change
            with hold(ledger, "shop", "production", "deploy 2"):
                pass
    assert waits == [RETRY]


def test_a_change_gives_up_on_an_agent_after_its_patience(ledger, monkeypatch):
    from kiln.rollout import lock as lock_module
    from kiln.rollout.lock import AGENT, PATIENCE, RETRY

    agent = take(ledger, host=socket.gethostname(), pid=os.getpid(), reason=AGENT)  # a pass that never ends
    now_s = [1000.0]
    waits: list[float] = []

    def wait(seconds: float) -> None:
        waits.append(seconds)
        now_s[0] += seconds

    monkeypatch.setattr(lock_module, "_clock", lambda: now_s[0])
    monkeypatch.setattr(lock_module, "_sleep", wait)
    with pytest.raises(LockHeld) as caught:
        with hold(ledger, "shop", "production", "deploy"):
            pass
    assert caught.value.lock == agent
    # It tried every RETRY seconds until PATIENCE had passed, and not longer.
    assert set(waits) == {RETRY}
    assert PATIENCE < now_s[0] - 1000.0 <= PATIENCE + RETRY + 1e-9
    assert len(waits) == round((now_s[0] - 1000.0) / RETRY)
