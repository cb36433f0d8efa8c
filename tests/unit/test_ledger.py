"""kiln.ledger.store.Ledger on SQLite: releases, rollouts, steps and events."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text

from kiln.ledger.store import MIGRATIONS, SCHEMA_HEAD, Ledger, now


@pytest.fixture
def ledger(tmp_path):
    return Ledger(f"sqlite:///{tmp_path / 'state' / 'ledger.db'}")


def record(ledger, app="shop", env="production", image="sha256:img", **kw):
    values = dict(app=app, env=env, image=image, image_tag="kiln/shop:abc", inputs_hash="i" * 64,
                  config={"app": app, "env": env, "services": []}, config_digest="c" * 64, spec_digest="s" * 64,
                  commit="0123abcd", dirty=False)
    values.update(kw)
    return ledger.record_release(**values)


def test_schema_head_matches_the_migrations():
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    scripts = ScriptDirectory.from_config(config)
    assert scripts.get_heads() == [SCHEMA_HEAD]


def test_migrated_schema_matches_the_models(ledger):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from kiln.ledger.schema import Table

    with ledger.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Table.metadata) == []


def test_new_ledger_is_at_schema_head(ledger):
    assert ledger.schema_revision() == SCHEMA_HEAD


def test_release_numbers_count_per_app_and_env(ledger):
    assert [record(ledger).number for _ in range(3)] == [1, 2, 3]
    assert record(ledger, env="staging").number == 1
    assert record(ledger, app="blog").number == 1
    assert record(ledger).number == 4


def test_release_values_round_trip(ledger):
    cfg = {"app": "shop", "env": "production", "port": 8080, "services": [{"name": "web", "replicas": 2}]}
    made = record(ledger, config=cfg, commit=None, dirty=True, note="rollback to v1")
    got = ledger.release("shop", "production", made.number)
    assert got == made
    assert (got.config, got.commit, got.dirty, got.note, got.image) == (cfg, None, True, "rollback to v1", "sha256:img")
    assert isinstance(got.created_at, datetime)
    summary = got.summary()
    assert summary["number"] == 1 and summary["created_at"].endswith("Z") and summary["dirty"] is True


def test_release_lookup_of_a_missing_number(ledger):
    record(ledger)
    assert ledger.release("shop", "production", 2) is None
    assert ledger.release("shop", "staging", 1) is None


def test_releases_newest_first(ledger):
    for image in ("sha256:a", "sha256:b", "sha256:c"):
        record(ledger, image=image)
    record(ledger, env="staging")
    rels = ledger.releases("shop", "production")
    assert [(r.number, r.image) for r in rels] == [(3, "sha256:c"), (2, "sha256:b"), (1, "sha256:a")]
    assert [r.number for r in ledger.releases("shop", "production", limit=2)] == [3, 2]
    assert [r.env for r in ledger.releases("shop", "staging")] == ["staging"]
    assert ledger.releases("nope", "production") == []


def test_current_release_follows_the_last_succeeded_rollout(ledger):
    assert ledger.current_release("shop", "production") is None
    v1, v2, v3 = record(ledger), record(ledger), record(ledger)

    r = ledger.start_rollout("shop", "production", None, v1.number, "rolling")
    assert ledger.current_release("shop", "production") is None  # still running
    ledger.finish_rollout(r.id, "succeeded")
    assert ledger.current_release("shop", "production").number == 1

    r = ledger.start_rollout("shop", "production", 1, v2.number, "rolling")
    ledger.finish_rollout(r.id, "aborted", "new instance exited")
    assert ledger.current_release("shop", "production").number == 1  # an abort changes nothing

    r = ledger.start_rollout("shop", "production", 1, v3.number, "rolling")
    ledger.finish_rollout(r.id, "succeeded")
    assert ledger.current_release("shop", "production").number == 3

    r = ledger.start_rollout("shop", "production", 3, v1.number, "rolling")  # back to an older number
    ledger.finish_rollout(r.id, "succeeded")
    assert ledger.current_release("shop", "production").number == 1
    assert ledger.current_release("shop", "staging") is None


def test_rollouts_are_recorded(ledger):
    record(ledger)
    r = ledger.start_rollout("shop", "production", None, 1, "rolling")
    assert (r.state, r.from_release, r.to_release, r.strategy, r.finished_at) == ("running", None, 1, "rolling", None)
    ledger.finish_rollout(r.id, "aborted", "health check failed")
    [back] = ledger.rollouts("shop", "production")
    assert (back.id, back.state, back.reason) == (r.id, "aborted", "health check failed")
    assert back.finished_at is not None and back.finished_at >= back.started_at
    assert ledger.rollouts("shop", "staging") == []


def test_rollouts_newest_first(ledger):
    ids = [ledger.start_rollout("shop", "production", None, n, "rolling").id for n in (1, 2, 3)]
    assert [r.id for r in ledger.rollouts("shop", "production")] == ids[::-1]
    assert [r.id for r in ledger.rollouts("shop", "production", limit=1)] == ids[-1:]


def test_steps_are_recorded_in_order(ledger):
    r1 = ledger.start_rollout("shop", "production", None, 1, "rolling")
    r2 = ledger.start_rollout("shop", "production", None, 2, "rolling")
    ledger.record_step(r1.id, "Start", "web-1", "started")
    ledger.record_step(r2.id, "Start", "web-9", "started")
    ledger.record_step(r1.id, "Start", "web-1", "done")
    ledger.record_step(r1.id, "AwaitHealthy", "web-1", "failed", "exited with code 1")
    steps = ledger.steps(r1.id)
    assert [(s["action"], s["target"], s["state"], s["detail"]) for s in steps] == [
        ("Start", "web-1", "started", ""),
        ("Start", "web-1", "done", ""),
        ("AwaitHealthy", "web-1", "failed", "exited with code 1"),
    ]
    assert all(s["at"].endswith("Z") for s in steps)
    assert [s["target"] for s in ledger.steps(r2.id)] == ["web-9"]


def test_events_oldest_first_with_the_newest_limit(ledger):
    ledger.event("shop", "production", "deploy", "v1 serving")
    ledger.event("shop", "production", "abort", "v2 aborted")
    ledger.event("shop", "staging", "deploy", "other env")
    events = ledger.events("shop", "production")
    assert [(e["kind"], e["message"]) for e in events] == [("deploy", "v1 serving"), ("abort", "v2 aborted")]
    assert [e["kind"] for e in ledger.events("shop", "production", limit=1)] == ["abort"]
    assert [e["env"] for e in ledger.events("shop")] == ["production", "production", "staging"]


def test_events_after_an_id_since_a_time_and_of_some_kinds(ledger):
    ledger.event("shop", "prod", "instance.failed", "a")
    first = ledger.events("shop", "prod")[-1]["id"]
    ledger.event("shop", "prod", "instance.replaced", "b")
    ledger.event("shop", "prod", "instance.failed", "c")
    assert [e["message"] for e in ledger.events("shop", "prod", after=first, limit=None)] == ["b", "c"]
    assert [e["message"] for e in ledger.events("shop", "prod", kinds=("instance.failed",))] == ["a", "c"]
    assert ledger.events("shop", "prod", since=now() + timedelta(seconds=5)) == []


def test_reopening_an_existing_ledger(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    first = Ledger(url)
    record(first)
    first.engine.dispose()
    second = Ledger(url)
    third = Ledger(url)  # twice, and while another instance is open
    assert second.schema_revision() == SCHEMA_HEAD
    assert [r.number for r in third.releases("shop", "production")] == [1]
    assert record(second).number == 2
    assert [r.number for r in third.releases("shop", "production")] == [2, 1]


def test_unusable_url_is_a_ledger_error(tmp_path):
    from kiln.errors import LedgerError

    with pytest.raises(LedgerError):
        Ledger("notadialect://x")


def test_release_states_tell_what_became_of_each_release(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'states.db'}")
    common = dict(image_tag="t", inputs_hash="h", config={}, config_digest="d", spec_digest="s", commit=None, dirty=False)
    for n in range(4):
        ledger.record_release(app="a", env="e", image=f"sha256:{n}", **common)
    for to, state in ((1, "succeeded"), (2, "succeeded"), (3, "aborted")):
        ledger.finish_rollout(ledger.start_rollout("a", "e", None, to, "rolling").id, state)
    ledger.start_rollout("a", "e", 2, 4, "rolling")
    assert ledger.release_states("a", "e") == {1: "served", 2: "serving", 3: "aborted", 4: "rolling out"}


def test_rollout_phase_and_data(ledger):
    r = ledger.start_rollout("shop", "production", None, 1, "canary", data={"weights": [10, 50]})
    assert (r.phase, r.data) == ("", {"weights": [10, 50]})
    ledger.set_rollout_phase(r.id, "canary-10")
    assert ledger.rollout(r.id).phase == "canary-10"
    assert ledger.rollout(r.id).data == {"weights": [10, 50]}  # kept when not given
    ledger.set_rollout_phase(r.id, "canary-50", {"weights": [50], "started": ["web-1"]})
    back = ledger.rollout(r.id)
    assert (back.phase, back.data) == ("canary-50", {"weights": [50], "started": ["web-1"]})
    assert ledger.rollout(r.id + 1) is None
    assert ledger.start_rollout("shop", "production", None, 1, "rolling").data == {}


def test_pausing_and_resuming_a_rollout(ledger):
    r = ledger.start_rollout("shop", "production", None, 1, "canary")
    ledger.finish_rollout(r.id, "paused", "waiting for approval")
    paused = ledger.rollout(r.id)
    assert (paused.state, paused.reason, paused.finished_at) == ("paused", "waiting for approval", None)
    assert ledger.release_states("shop", "production") == {1: "rolling out"}
    ledger.finish_rollout(r.id, "running")
    assert ledger.rollout(r.id).finished_at is None
    ledger.finish_rollout(r.id, "succeeded")
    assert ledger.rollout(r.id).finished_at is not None
    with pytest.raises(ValueError):
        ledger.finish_rollout(r.id, "done")


def test_unfinished_rollouts_oldest_first(ledger):
    a = ledger.start_rollout("shop", "production", None, 1, "rolling")
    b = ledger.start_rollout("shop", "production", None, 2, "rolling")
    c = ledger.start_rollout("shop", "production", None, 3, "rolling")
    ledger.start_rollout("shop", "staging", None, 1, "rolling")
    ledger.finish_rollout(a.id, "paused")
    ledger.finish_rollout(b.id, "aborted", "boom")
    assert [r.id for r in ledger.unfinished_rollouts("shop", "production")] == [a.id, c.id]
    ledger.finish_rollout(a.id, "succeeded")
    ledger.finish_rollout(c.id, "succeeded")
    assert ledger.unfinished_rollouts("shop", "production") == []


def test_migrating_a_0001_ledger_keeps_its_rollouts(tmp_path):
    from alembic import command
    from sqlalchemy import create_engine

    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = create_engine(url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with old.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0001")
    with old.begin() as conn:
        conn.execute(text("INSERT INTO rollouts (app, env, from_release, to_release, strategy, state, reason, "
                          "started_at) VALUES ('shop', 'production', NULL, 1, 'rolling', 'running', '', "
                          "'2024-05-01 10:00:00.000000')"))
    old.dispose()

    ledger = Ledger(url)
    assert ledger.schema_revision() == SCHEMA_HEAD
    [r] = ledger.rollouts("shop", "production")
    assert (r.to_release, r.state, r.phase, r.data) == (1, "running", "", {})
    assert ledger.unfinished_rollouts("shop", "production") == [r]
    ledger.set_rollout_phase(r.id, "drain", {"old": ["web-1"]})
    assert ledger.rollout(r.id).data == {"old": ["web-1"]}
    assert ledger.lock("shop", "production") is None

    with ledger.engine.begin() as conn:  # and back down to 0001
        config.attributes["connection"] = conn
        command.downgrade(config, "0001")
    with ledger.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM rollouts")).scalar() == 1


def test_made_environments_pins_and_release_origin(ledger):
    assert ledger.made_environments("shop") == []
    made = ledger.record_environment("shop", "old", "recreated", 18080, "production v1")
    preview = ledger.record_environment("shop", "preview-3f2a", "preview", 18081, "ref main (3f2a)",
                                        expires_at=now() + timedelta(hours=2))
    assert [e.env for e in ledger.made_environments("shop")] == ["old", "preview-3f2a"]
    assert ledger.made_environment("shop", "old") == made and made.expires_at is None
    assert preview.summary()["expires_at"].endswith("Z")
    ledger.forget_environment("shop", "old")
    assert ledger.made_environment("shop", "old") is None

    ledger.pin("shop", "production", 3)
    ledger.pin("shop", "production", 3)  # idempotent
    assert ledger.pins("shop") == {("production", 3)}
    assert ledger.unpin("shop", "production", 3) and not ledger.unpin("shop", "production", 3)

    rel = ledger.record_release(app="shop", env="prod", image="sha256:1", image_tag="t", inputs_hash="h", config={},
                                config_digest="c", spec_digest="s", commit=None, dirty=False,
                                origin="promoted from staging v4")
    assert ledger.release("shop", "prod", rel.number).origin == "promoted from staging v4"
    assert ledger.released_environments("shop") == ["prod"]
