"""Issue 15, item 17: nothing a pusher or a step controls grows without bound: a step's output
line is cut at MAX_LINE with a marker, finished runs (steps, logs) and webhook delivery ids are
pruned (by each runner when its run ends, and by `kiln ci prune`), and at most KILN_CI_MAX_RUNS
runs run at once: the others wait queued."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from kiln.ci.logsink import MAX_LINE, StepLog
from kiln.ci.runner import wait_and_run
from kiln.context import Context
from kiln.errors import UsageError
from kiln.ledger.ci_schema import CiDeliveryRow, CiRunRow
from kiln.ledger.ci_store import CiStore
from kiln.ledger.db import now
from kiln.ledger.store import Ledger
from kiln.output import Output
from kiln.secretstore import MASK
from kiln.settings import Settings
from unit.cli_inproc import run_kiln


@pytest.fixture
def store(tmp_path):
    return CiStore(Ledger(f"sqlite:///{tmp_path / 'ledger.db'}"))


def queue(store, commit, ref="refs/heads/main"):
    return store.enqueue(repo="/r.git", spec="kiln.yaml", ref=ref, queue=f"/r.git#{ref}", commit=commit,
                         trigger="hook")[0]


def test_an_endless_output_line_is_cut_with_a_marker_and_masked_first(store):
    run = queue(store, "a" * 40)
    log = StepLog(store, run.id, None, lambda s: s.replace("tok-secret", MASK), None, "test")
    log.write("x" * (MAX_LINE - 4) + "tok-secret" + "y" * 300_000)  # the secret straddles the cut
    log.write("ok")
    log.flush()
    lines = [line for _, _, line in store.logs(run.id)]
    assert MAX_LINE == 64 * 1024 and len(lines) == 2
    assert lines[0] == "x" * (MAX_LINE - 4) + MASK[:4] + " … [line cut: 300004 more characters]"
    assert lines[1] == "ok" and "tok-" not in lines[0]


def _age(store, run_id: int, days: int, state: str = "succeeded") -> None:
    with store.ledger.db.session() as s, s.begin():
        s.execute(update(CiRunRow).where(CiRunRow.id == run_id)
                  .values(state=state, created_at=now() - timedelta(days=days), finished_at=now()))


def test_prune_forgets_old_and_surplus_finished_runs_but_never_a_refs_latest_or_an_active_one(store):
    old = [queue(store, f"{i:040x}", ref=f"refs/heads/b{i % 2}") for i in range(6)]  # two refs, three runs each
    for run in old:
        store.log(run.id, None, ["line one", "line two"])
        _age(store, run.id, 40)
    running = queue(store, "f" * 40, ref="refs/heads/long")
    _age(store, running.id, 40, state="running")
    store.first_delivery("github", "old-delivery")
    store.first_delivery("github", "new-delivery")
    with store.ledger.db.session() as s, s.begin():
        s.execute(update(CiDeliveryRow).where(CiDeliveryRow.delivery == "old-delivery")
                  .values(received_at=now() - timedelta(days=40)))
    assert store.prune(now() - timedelta(days=30), keep=500) == (4, 8, 1)
    left = {r.id for r in store.runs(limit=100)}
    assert left == {old[4].id, old[5].id, running.id}  # each ref's latest, and the running one
    assert store.logs(old[0].id) == [] and len(store.logs(old[4].id)) == 2
    assert not store.first_delivery("github", "new-delivery")  # still known: a replay of it is refused
    # beyond `keep`: only the newest are kept, still never a ref's latest
    fresh = [queue(store, f"{i:040x}", ref="refs/heads/c") for i in range(10, 15)]
    for run in fresh:
        _age(store, run.id, 0)
    assert store.prune(now() - timedelta(days=30), keep=2)[0] == 3  # the 2 newest are fresh[3] and fresh[4]
    assert {r.id for r in store.runs(limit=100)} == {old[4].id, old[5].id, running.id, fresh[3].id, fresh[4].id}


def test_kiln_ci_prune_through_the_cli(tmp_path):
    env = {"KILN_HOME": str(tmp_path / "home"), "NO_COLOR": "1"}
    ledger = Ledger(f"sqlite:///{tmp_path / 'home' / 'ledger.db'}")
    store = CiStore(ledger)
    for i in range(3):
        _age(store, queue(store, f"{i:040x}").id, 90)
    ledger.db.engine.dispose()
    done = run_kiln(["ci", "prune", "--days", "60"], cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert "pruned 2 run(s), 0 log line(s), 0 webhook delivery id(s)" in done.stderr
    assert run_kiln(["ci", "prune", "--keep", "0"], cwd=tmp_path, env=env).returncode == 2


def test_at_most_max_runs_run_at_once_and_the_others_wait_queued(store):
    a, b, c = (queue(store, f"{i:040x}", ref=f"refs/heads/r{i}") for i in range(3))
    assert store.claim(a.id, "h:1", limit=2) and store.claim(b.id, "h:2", limit=2)
    assert not store.claim(c.id, "h:3", limit=2)  # another queue, but no free slot
    assert store.run(c.id).state == "queued" and store.running_count() == 2
    store.set_state(a.id, "waiting", "approval")  # a run waiting for approval frees its slot
    assert store.claim(c.id, "h:3", limit=2)
    assert store.running_count() == 2


def test_the_runner_waits_for_a_slot_instead_of_starting(tmp_path, monkeypatch):
    settings = Settings(home=tmp_path, ledger_url=f"sqlite:///{tmp_path / 'ledger.db'}", ci_max_runs=1)
    ctx = Context(settings, Output(quiet=True))
    store = CiStore(ctx.ledger)
    busy, mine = queue(store, "a" * 40, ref="refs/heads/x"), queue(store, "b" * 40)
    assert store.claim(busy.id, "elsewhere:1", limit=1)
    polls = []

    def sleep(_seconds):  # the runner's poll: the first time, the busy run ends; then it cancels its own
        polls.append(store.run(mine.id).state)
        if len(polls) == 1:
            store.request_cancel(mine.id)

    monkeypatch.setattr("kiln.ci.runner.time.sleep", sleep)
    ended = wait_and_run(ctx, store, mine.id)
    assert polls == ["queued"] and ended.state == "cancelled" and ended.started_at is None


def test_kiln_ci_max_runs_must_be_a_positive_number():
    assert Settings.from_env({"HOME": "/h", "KILN_CI_MAX_RUNS": "2"}).ci_max_runs == 2
    assert Settings.from_env({"HOME": "/h"}).ci_max_runs == 4
    for bad in ("0", "-1", "many"):
        with pytest.raises(UsageError, match="KILN_CI_MAX_RUNS"):
            Settings.from_env({"HOME": "/h", "KILN_CI_MAX_RUNS": bad})
