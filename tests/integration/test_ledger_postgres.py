"""The ledger on a real PostgreSQL server (scripts/test.sh starts one and sets
KILN_TEST_POSTGRES_URL). Each test works in a schema of its own, dropped afterwards."""

from __future__ import annotations

import os
import uuid

import pytest
from sqlalchemy import create_engine, text

from kiln.ledger.db import SCHEMA_HEAD
from kiln.ledger.store import Ledger

URL = os.environ.get("KILN_TEST_POSTGRES_URL")
pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not URL, reason="KILN_TEST_POSTGRES_URL is not set (scripts/test.sh sets it)")]


@pytest.fixture
def pg_url() -> str:
    assert URL
    db = "kiln_" + uuid.uuid4().hex[:8]
    admin = create_engine(URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{db}"'))
    yield URL.rsplit("/", 1)[0] + "/" + db
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE "{db}" WITH (FORCE)'))
    admin.dispose()


def test_postgres_ledger_records_releases_and_rollouts(pg_url: str) -> None:
    ledger = Ledger(pg_url)
    assert ledger.db.schema_revision() == SCHEMA_HEAD
    common = dict(image_tag="kiln/a:1", inputs_hash="h", config={"port": 1}, config_digest="d",
                  spec_digest="s", commit=None, dirty=False)
    v1 = ledger.releases.record(app="a", env="prod", image="sha256:1", **common)
    v2 = ledger.releases.record(app="a", env="prod", image="sha256:2", **common)
    other = ledger.releases.record(app="a", env="staging", image="sha256:9", **common)
    assert (v1.number, v2.number, other.number) == (1, 2, 1)

    ok = ledger.rollouts.start("a", "prod", None, 1, "rolling")
    ledger.rollouts.finish(ok.id, "succeeded")
    bad = ledger.rollouts.start("a", "prod", 1, 2, "rolling")
    ledger.rollouts.record_step(bad.id, "Start", "kiln-a-prod-web-v2-abc", "started")
    ledger.rollouts.finish(bad.id, "aborted", "instance exited")
    assert ledger.releases.current("a", "prod").number == 1
    assert [r.number for r in ledger.releases.of("a", "prod")] == [2, 1]
    assert ledger.releases.of("a", "prod")[0].config == {"port": 1}
    assert ledger.rollouts.steps(bad.id)[0].target == "kiln-a-prod-web-v2-abc"
    assert Ledger(pg_url).db.schema_revision() == SCHEMA_HEAD  # a second open finds it current


def test_postgres_lock_is_exclusive(pg_url: str) -> None:
    from concurrent.futures import ThreadPoolExecutor
    from datetime import timedelta

    from kiln.errors import LockHeld
    from kiln.ledger.locks import Lock

    ledger = Ledger(pg_url)

    def take(user: str, alive: bool = True, ledger: Ledger = ledger) -> Lock:
        return ledger.locks.acquire("a", "prod", user=user, host="h", pid=1, reason="deploy", lease=30,
                                   holder_alive=lambda _lock: alive)

    first = take("alice")
    with pytest.raises(LockHeld) as caught:
        take("bob")
    assert caught.value.lock == first and "alice@h pid 1" in caught.value.message
    assert ledger.locks.heartbeat(first)

    # An expired lock and several takers on their own connections: exactly one wins.
    with ledger.db.engine.begin() as conn:
        conn.execute(text("UPDATE locks SET heartbeat_at = heartbeat_at - :d"), {"d": timedelta(minutes=5)})
    others = [Ledger(pg_url) for _ in range(6)]

    def attempt(i: int) -> Lock | LockHeld:
        try:
            return take(f"u{i}", ledger=others[i])
        except LockHeld as exc:
            return exc

    with ThreadPoolExecutor(len(others)) as pool:
        results = list(pool.map(attempt, range(len(others))))
    winners = [r for r in results if isinstance(r, Lock)]
    assert len(winners) == 1, results
    assert not ledger.locks.heartbeat(first)  # alice lost it
    ledger.locks.release(first)  # and her release leaves the winner's lock alone
    assert ledger.locks.get("a", "prod") == winners[0]
    assert ledger.locks.force_release("a", "prod") == winners[0] and ledger.locks.get("a", "prod") is None
    for other in others:
        other.db.engine.dispose()
    ledger.db.engine.dispose()
