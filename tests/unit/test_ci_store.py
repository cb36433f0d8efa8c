"""The pipeline's ledger tables: the queue rules, steps, logs, webhook deliveries."""

from __future__ import annotations

import pytest

from kiln.ledger.ci_store import CiStore
from kiln.ledger.store import Ledger


@pytest.fixture
def store(tmp_path):
    return CiStore(Ledger(f"sqlite:///{tmp_path / 'ledger.db'}"))


def queue(store, commit, ref="refs/heads/main"):
    return store.enqueue(repo="/r.git", spec="kiln.yaml", ref=ref, queue=f"/r.git#{ref}", commit=commit, trigger="hook")


def test_a_newer_push_supersedes_the_queued_older_run_not_the_running_one(store):
    first, _ = queue(store, "a" * 40)
    assert store.claim(first.id, "host:1")
    second, gone = queue(store, "b" * 40)
    assert gone == []
    third, gone = queue(store, "c" * 40)
    assert gone == [second.id]
    assert store.run(second.id).state == "superseded"
    assert store.run(second.id).reason == f"superseded by run {third.id}"
    assert store.run(first.id).state == "running"
    other, gone = queue(store, "d" * 40, ref="refs/heads/dev")
    assert gone == [] and store.run(third.id).state == "queued"


def test_one_run_per_queue_at_a_time(store):
    first, _ = queue(store, "a" * 40)
    second, _ = queue(store, "b" * 40)  # supersedes nothing running; first is still queued → superseded
    assert store.run(first.id).state == "superseded"
    assert store.claim(second.id, "host:1")
    third, _ = queue(store, "c" * 40)
    assert not store.claim(third.id, "host:2")  # second is running
    store.set_state(second.id, "waiting", "approval")
    assert not store.claim(third.id, "host:2")  # waiting for approval still holds the queue
    store.set_state(second.id, "succeeded")
    assert store.claim(third.id, "host:2")
    assert not store.claim(third.id, "host:3")  # claimed once
    assert store.run(third.id).worker == "host:2"


def test_cancelling_a_queued_run_ends_it_and_a_running_one_is_asked(store):
    first, _ = queue(store, "a" * 40)
    assert store.request_cancel(first.id).state == "cancelled"
    second, _ = queue(store, "b" * 40)
    store.claim(second.id, "h:1")
    run = store.request_cancel(second.id)
    assert run.state == "running" and run.cancel


def test_steps_and_logs(store):
    run, _ = queue(store, "a" * 40)
    bake, test = store.add_steps(run.id, [(0, 0, "bake", "bake", "pending", ""), (1, 1, "test", "run", "pending", "")])
    store.set_step(test.id, "running")
    store.set_step(test.id, "failed", "exit code 1")
    got = store.steps(run.id)[1]
    assert (got.state, got.detail) == ("failed", "exit code 1") and got.seconds is not None
    store.log(run.id, test.id, ["one", "two"])
    store.log(run.id, None, ["three"])
    lines = store.logs(run.id)
    assert [line for _, _, line in lines] == ["one", "two", "three"]
    assert [line for _, _, line in store.logs(run.id, after=lines[1][0])] == ["three"]
    assert not store.set_step(test.id, "approved", only_from=("waiting",))


def test_a_delivery_id_is_accepted_once(store):
    assert store.first_delivery("github", "d-1")
    assert not store.first_delivery("github", "d-1")
    assert store.first_delivery("gitlab", "d-1")
