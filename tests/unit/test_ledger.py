"""kiln.ledger on SQLite: the database, releases, rollouts, steps, events and the stored names."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text

from kiln import views
from kiln.errors import LedgerError
from kiln.ledger.db import MIGRATIONS, SCHEMA_HEAD, now
from kiln.ledger.store import Ledger


@pytest.fixture
def ledger(tmp_path):
    return Ledger(f"sqlite:///{tmp_path / 'state' / 'ledger.db'}")


def record(ledger, app="shop", env="production", image="sha256:img", **kw):
    values = dict(app=app, env=env, image=image, image_tag="kiln/shop:abc", inputs_hash="i" * 64,
                  config={"app": app, "env": env, "services": []}, config_digest="c" * 64, spec_digest="s" * 64,
                  commit="0123abcd", dirty=False)
    values.update(kw)
    return ledger.releases.record(**values)


def test_schema_head_matches_the_migrations():
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    scripts = ScriptDirectory.from_config(config)
    assert scripts.get_heads() == [SCHEMA_HEAD]


def test_migrated_schema_matches_the_models(ledger):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from kiln.ledger.schema import Table

    with ledger.db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Table.metadata) == []


def test_new_ledger_is_at_schema_head(ledger):
    assert ledger.db.schema_revision() == SCHEMA_HEAD


def test_release_numbers_count_per_app_and_env(ledger):
    assert [record(ledger).number for _ in range(3)] == [1, 2, 3]
    assert record(ledger, env="staging").number == 1
    assert record(ledger, app="blog").number == 1
    assert record(ledger).number == 4


def test_release_values_round_trip(ledger):
    cfg = {"app": "shop", "env": "production", "port": 8080, "services": [{"name": "web", "replicas": 2}]}
    made = record(ledger, config=cfg, commit=None, dirty=True, note="rollback to v1")
    got = ledger.releases.get("shop", "production", made.number)
    assert got == made
    assert (got.config, got.commit, got.dirty, got.note, got.image) == (cfg, None, True, "rollback to v1", "sha256:img")
    assert isinstance(got.created_at, datetime)
    shown = views.Release.of(got).to_json()  # its one JSON form (kiln/views.py)
    assert shown["number"] == 1 and shown["created_at"].endswith("Z") and shown["dirty"] is True


def test_release_lookup_of_a_missing_number(ledger):
    record(ledger)
    assert ledger.releases.get("shop", "production", 2) is None
    assert ledger.releases.get("shop", "staging", 1) is None


def test_releases_newest_first(ledger):
    for image in ("sha256:a", "sha256:b", "sha256:c"):
        record(ledger, image=image)
    record(ledger, env="staging")
    rels = ledger.releases.of("shop", "production")
    assert [(r.number, r.image) for r in rels] == [(3, "sha256:c"), (2, "sha256:b"), (1, "sha256:a")]
    assert [r.number for r in ledger.releases.of("shop", "production", limit=2)] == [3, 2]
    assert [r.env for r in ledger.releases.of("shop", "staging")] == ["staging"]
    assert ledger.releases.of("nope", "production") == []


def test_current_release_follows_the_last_succeeded_rollout(ledger):
    assert ledger.releases.current("shop", "production") is None
    v1, v2, v3 = record(ledger), record(ledger), record(ledger)

    r = ledger.rollouts.start("shop", "production", None, v1.number, "rolling")
    assert ledger.releases.current("shop", "production") is None  # still running
    ledger.rollouts.finish(r.id, "succeeded")
    assert ledger.releases.current("shop", "production").number == 1

    r = ledger.rollouts.start("shop", "production", 1, v2.number, "rolling")
    ledger.rollouts.finish(r.id, "aborted", "new instance exited")
    assert ledger.releases.current("shop", "production").number == 1  # an abort changes nothing

    r = ledger.rollouts.start("shop", "production", 1, v3.number, "rolling")
    ledger.rollouts.finish(r.id, "succeeded")
    assert ledger.releases.current("shop", "production").number == 3

    r = ledger.rollouts.start("shop", "production", 3, v1.number, "rolling")  # back to an older number
    ledger.rollouts.finish(r.id, "succeeded")
    assert ledger.releases.current("shop", "production").number == 1
    assert ledger.releases.current("shop", "staging") is None


def test_rollouts_are_recorded(ledger):
    record(ledger)
    r = ledger.rollouts.start("shop", "production", None, 1, "rolling")
    assert (r.state, r.from_release, r.to_release, r.strategy, r.finished_at) == ("running", None, 1, "rolling", None)
    ledger.rollouts.finish(r.id, "aborted", "health check failed")
    [back] = ledger.rollouts.of("shop", "production")
    assert (back.id, back.state, back.reason) == (r.id, "aborted", "health check failed")
    assert back.finished_at is not None and back.finished_at >= back.started_at
    assert ledger.rollouts.of("shop", "staging") == []


def test_rollouts_newest_first(ledger):
    ids = [ledger.rollouts.start("shop", "production", None, n, "rolling").id for n in (1, 2, 3)]
    assert [r.id for r in ledger.rollouts.of("shop", "production")] == ids[::-1]
    assert [r.id for r in ledger.rollouts.of("shop", "production", limit=1)] == ids[-1:]


def test_steps_are_recorded_in_order(ledger):
    r1 = ledger.rollouts.start("shop", "production", None, 1, "rolling")
    r2 = ledger.rollouts.start("shop", "production", None, 2, "rolling")
    ledger.rollouts.record_step(r1.id, "Start", "web-1", "started")
    ledger.rollouts.record_step(r2.id, "Start", "web-9", "started")
    ledger.rollouts.record_step(r1.id, "Start", "web-1", "done")
    ledger.rollouts.record_step(r1.id, "AwaitHealthy", "web-1", "failed", "exited with code 1")
    steps = ledger.rollouts.steps(r1.id)
    assert [(s.action, s.target, s.state, s.detail) for s in steps] == [
        ("Start", "web-1", "started", ""),
        ("Start", "web-1", "done", ""),
        ("AwaitHealthy", "web-1", "failed", "exited with code 1"),
    ]
    assert all(isinstance(s.at, datetime) for s in steps)
    assert [s.target for s in ledger.rollouts.steps(r2.id)] == ["web-9"]


def test_events_oldest_first_with_the_newest_limit(ledger):
    ledger.events.record("shop", "production", "deploy", "v1 serving")
    ledger.events.record("shop", "production", "abort", "v2 aborted")
    ledger.events.record("shop", "staging", "deploy", "other env")
    events = ledger.events.of("shop", "production")
    assert [(e.kind, e.message) for e in events] == [("deploy", "v1 serving"), ("abort", "v2 aborted")]
    assert [e.kind for e in ledger.events.of("shop", "production", limit=1)] == ["abort"]
    assert [e.env for e in ledger.events.of("shop")] == ["production", "production", "staging"]


def test_events_after_an_id_since_a_time_and_of_some_kinds(ledger):
    ledger.events.record("shop", "prod", "instance.failed", "a")
    first = ledger.events.of("shop", "prod")[-1].id
    ledger.events.record("shop", "prod", "instance.replaced", "b")
    ledger.events.record("shop", "prod", "instance.failed", "c")
    assert [e.message for e in ledger.events.of("shop", "prod", after=first, limit=None)] == ["b", "c"]
    assert [e.message for e in ledger.events.of("shop", "prod", kinds=("instance.failed",))] == ["a", "c"]
    assert ledger.events.of("shop", "prod", since=now() + timedelta(seconds=5)) == []


def test_reopening_an_existing_ledger(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    first = Ledger(url)
    record(first)
    first.db.engine.dispose()
    second = Ledger(url)
    third = Ledger(url)  # twice, and while another instance is open
    assert second.db.schema_revision() == SCHEMA_HEAD
    assert [r.number for r in third.releases.of("shop", "production")] == [1]
    assert record(second).number == 2
    assert [r.number for r in third.releases.of("shop", "production")] == [2, 1]


def test_unusable_url_is_a_ledger_error(tmp_path):
    with pytest.raises(LedgerError):
        Ledger("notadialect://x")


def test_release_states_tell_what_became_of_each_release(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'states.db'}")
    common = dict(image_tag="t", inputs_hash="h", config={}, config_digest="d", spec_digest="s", commit=None, dirty=False)
    for n in range(4):
        ledger.releases.record(app="a", env="e", image=f"sha256:{n}", **common)
    for to, state in ((1, "succeeded"), (2, "succeeded"), (3, "aborted")):
        ledger.rollouts.finish(ledger.rollouts.start("a", "e", None, to, "rolling").id, state)
    ledger.rollouts.start("a", "e", 2, 4, "rolling")
    assert ledger.releases.states("a", "e") == {1: "served", 2: "serving", 3: "aborted", 4: "rolling out"}


def test_rollout_phase_and_data(ledger):
    r = ledger.rollouts.start("shop", "production", None, 1, "canary", data={"weights": [10, 50]})
    assert (r.phase, r.data) == ("", {"weights": [10, 50]})
    ledger.rollouts.set_phase(r.id, "canary-10")
    assert ledger.rollouts.get(r.id).phase == "canary-10"
    assert ledger.rollouts.get(r.id).data == {"weights": [10, 50]}  # kept when not given
    ledger.rollouts.set_phase(r.id, "canary-50", {"weights": [50], "started": ["web-1"]})
    back = ledger.rollouts.get(r.id)
    assert (back.phase, back.data) == ("canary-50", {"weights": [50], "started": ["web-1"]})
    assert ledger.rollouts.get(r.id + 1) is None
    assert ledger.rollouts.start("shop", "production", None, 1, "rolling").data == {}


def test_pausing_and_resuming_a_rollout(ledger):
    r = ledger.rollouts.start("shop", "production", None, 1, "canary")
    ledger.rollouts.finish(r.id, "paused", "waiting for approval")
    paused = ledger.rollouts.get(r.id)
    assert (paused.state, paused.reason, paused.finished_at) == ("paused", "waiting for approval", None)
    assert ledger.releases.states("shop", "production") == {1: "rolling out"}
    ledger.rollouts.finish(r.id, "running")
    assert ledger.rollouts.get(r.id).finished_at is None
    ledger.rollouts.finish(r.id, "succeeded")
    assert ledger.rollouts.get(r.id).finished_at is not None
    with pytest.raises(LedgerError, match="rollout state 'done' is not one of"):
        ledger.rollouts.finish(r.id, "done")


def test_unfinished_rollouts_oldest_first(ledger):
    a = ledger.rollouts.start("shop", "production", None, 1, "rolling")
    b = ledger.rollouts.start("shop", "production", None, 2, "rolling")
    c = ledger.rollouts.start("shop", "production", None, 3, "rolling")
    ledger.rollouts.start("shop", "staging", None, 1, "rolling")
    ledger.rollouts.finish(a.id, "paused")
    ledger.rollouts.finish(b.id, "aborted", "boom")
    assert [r.id for r in ledger.rollouts.unfinished("shop", "production")] == [a.id, c.id]
    ledger.rollouts.finish(a.id, "succeeded")
    ledger.rollouts.finish(c.id, "succeeded")
    assert ledger.rollouts.unfinished("shop", "production") == []


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
    assert ledger.db.schema_revision() == SCHEMA_HEAD
    [r] = ledger.rollouts.of("shop", "production")
    assert (r.to_release, r.state, r.phase, r.data) == (1, "running", "", {})
    assert ledger.rollouts.unfinished("shop", "production") == [r]
    ledger.rollouts.set_phase(r.id, "drain", {"old": ["web-1"]})
    assert ledger.rollouts.get(r.id).data == {"old": ["web-1"]}
    assert ledger.locks.get("shop", "production") is None

    with ledger.db.engine.begin() as conn:  # and back down to 0001
        config.attributes["connection"] = conn
        command.downgrade(config, "0001")
    with ledger.db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM rollouts")).scalar() == 1


def test_made_environments_pins_and_release_origin(ledger):
    assert ledger.environments.of("shop") == []
    made = ledger.environments.record("shop", "old", "recreated", 18080, "production v1")
    preview = ledger.environments.record("shop", "preview-3f2a", "preview", 18081, "ref main (3f2a)",
                                        expires_at=now() + timedelta(hours=2))
    assert [e.env for e in ledger.environments.of("shop")] == ["old", "preview-3f2a"]
    assert ledger.environments.get("shop", "old") == made and made.expires_at is None
    assert views.MadeEnvironment.of(preview).to_json()["expires_at"].endswith("Z")
    ledger.environments.forget("shop", "old")
    assert ledger.environments.get("shop", "old") is None

    ledger.environments.pin("shop", "production", 3)
    ledger.environments.pin("shop", "production", 3)  # idempotent
    assert ledger.environments.pins("shop") == {("production", 3)}
    assert ledger.environments.unpin("shop", "production", 3) and not ledger.environments.unpin("shop", "production", 3)

    rel = ledger.releases.record(app="shop", env="prod", image="sha256:1", image_tag="t", inputs_hash="h", config={},
                                config_digest="c", spec_digest="s", commit=None, dirty=False,
                                origin="promoted from staging v4")
    assert ledger.releases.get("shop", "prod", rel.number).origin == "promoted from staging v4"
    assert ledger.releases.environments("shop") == ["prod"]


# --- stored names ---------------------------------------------------------------------------------


def test_stored_names_keep_their_values():
    """What ledgers already hold: renaming a constant or a class must not change these."""
    from kiln.ledger import kinds

    assert {k: v for k, v in vars(kinds).items() if k.isupper() and isinstance(v, str)} == {
        "RUNNING": "running", "PAUSED": "paused", "SUCCEEDED": "succeeded", "ABORTED": "aborted",
        "STEP_START": "Start", "STEP_AWAIT_HEALTHY": "AwaitHealthy", "STEP_ROUTE": "Route",
        "STEP_UNROUTE": "Unroute", "STEP_REMOVE": "Remove", "STEP_PHASE": "Phase", "PHASES_DONE": "done",
        "ROLLOUT_STARTED": "rollout.started", "ROLLOUT_RESUMED": "rollout.resumed",
        "ROLLOUT_PAUSED": "rollout.paused", "ROLLOUT_SUCCEEDED": "rollout.succeeded",
        "ROLLOUT_ABORTED": "rollout.aborted", "API_ACTION": "api.action", "API_ACTION_FAILED": "api.action.failed",
        "PROMOTED": "promoted", "PREVIEW_PRUNED": "preview.pruned", "DESTROYED": "destroyed", "NODE_DRAINED": "node.drained",
        "INSTANCE_FAILED": "instance.failed", "INSTANCE_LOST": "instance.lost",
        "INSTANCE_TAINTED": "instance.tainted", "INSTANCE_REPLACED": "instance.replaced",
        "AGENT_LEADING": "agent.leading", "AGENT_RESIGNED": "agent.resigned", "AGENT_ROUTER": "agent.router",
        "AGENT_FAILED": "agent.failed", "AGENT_RESTORED": "agent.restored", "AGENT_HALTED": "agent.halted",
        "AGENT_RESUMED": "agent.resumed",
        "AGENT_START": "agent.start", "AGENT_AWAIT_HEALTHY": "agent.awaithealthy", "AGENT_ROUTE": "agent.route",
        "AGENT_UNROUTE": "agent.unroute", "AGENT_REMOVE": "agent.remove",
    }
    assert kinds.ROLLOUT_STATES == ("running", "paused", "succeeded", "aborted")
    assert kinds.UNFINISHED == ("running", "paused")
    assert kinds.AGENT_ACTION_EVENTS == {"Start": "agent.start", "AwaitHealthy": "agent.awaithealthy",
                                         "Route": "agent.route", "Unroute": "agent.unroute",
                                         "Remove": "agent.remove"}


def test_every_plan_action_journals_an_explicit_constant():
    """The executor maps each action class to its stored name; a renamed class keeps it."""
    import typing

    from kiln.rollout import executor, plan

    actions = set(typing.get_args(plan.Action))
    assert set(executor.STEP_OF) == actions
    assert executor.STEP_OF == {plan.Start: "Start", plan.AwaitHealthy: "AwaitHealthy", plan.Route: "Route",
                                plan.Unroute: "Unroute", plan.Remove: "Remove"}
    plan.Remove.__name__ = "Retire"  # as if the class were renamed
    try:
        assert executor.STEP_OF[plan.Remove] == "Remove"
    finally:
        plan.Remove.__name__ = "Remove"


def test_a_step_with_an_unknown_action_is_refused(ledger):
    r = ledger.rollouts.start("shop", "production", None, 1, "rolling")
    with pytest.raises(LedgerError, match="step action 'Retire' is not one of"):
        ledger.rollouts.record_step(r.id, "Retire", "web-1", "started")
    assert ledger.rollouts.steps(r.id) == []


# --- errors reach the user as LedgerError / UsageError, never raw -------------------------------------


def test_a_ledger_path_that_cannot_be_made_is_a_ledger_error(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(LedgerError, match="cannot open the ledger at .*cannot create") as caught:
        Ledger(f"sqlite:///{tmp_path / 'file' / 'ledger.db'}")
    assert "KILN_LEDGER_URL" in caught.value.hint


def test_a_file_that_is_not_a_database_is_a_ledger_error(tmp_path):
    (tmp_path / "ledger.db").write_bytes(b"this is not SQLite" * 100)
    with pytest.raises(LedgerError, match="cannot open the ledger at .*not a database") as caught:
        Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    assert "reachable and writable" in caught.value.hint


def test_an_unknown_schema_revision_is_a_ledger_error(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger(url)
    with ledger.db.engine.begin() as conn:  # as if a newer kiln had migrated it
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    ledger.db.engine.dispose()
    with pytest.raises(LedgerError, match=f"schema revision '9999', which this kiln does not know .*{SCHEMA_HEAD}") \
            as caught:
        Ledger(url)
    assert "newer kiln" in caught.value.hint


def test_a_database_error_in_use_is_a_ledger_error(ledger):
    with ledger.db.engine.begin() as conn:
        conn.execute(text("DROP TABLE events"))
    with pytest.raises(LedgerError, match="the ledger failed at .*no such table: events") as caught:
        ledger.events.record("shop", "production", "destroyed", "gone")
    assert "KILN_LEDGER_URL" in caught.value.hint


def test_a_missing_release_number_is_a_usage_error(ledger):
    from kiln.errors import UsageError

    record(ledger)
    assert ledger.releases.require("shop", "production", 1).number == 1
    with pytest.raises(UsageError, match=r"shop/production has no release v7\.") as caught:
        ledger.releases.require("shop", "production", 7)
    assert caught.value.hint == "`kiln releases -e production` lists them."


def test_a_missing_rollout_is_a_ledger_error(ledger):
    with pytest.raises(LedgerError, match="there is no rollout 42"):
        ledger.rollouts.set_phase(42, "switch")
    with pytest.raises(LedgerError, match="there is no rollout 42"):
        ledger.rollouts.finish(42, "aborted")


def test_corrupt_recorded_values_are_ledger_errors(ledger):
    made = record(ledger)
    r = ledger.rollouts.start("shop", "production", None, 1, "rolling")
    with ledger.db.engine.begin() as conn:
        conn.execute(text("UPDATE releases SET config = '{not json'"))
        conn.execute(text("UPDATE rollouts SET data = '[broken'"))
    with pytest.raises(LedgerError, match="release v1 of shop/production has a corrupt config"):
        ledger.releases.get("shop", "production", 1)
    with pytest.raises(LedgerError, match=f"rollout {r.id} of shop/production has corrupt phase data"):
        ledger.rollouts.get(r.id)
    # A config this kiln's models cannot read (recorded by another version) is a LedgerError too.
    with pytest.raises(LedgerError, match=r"release v1 of shop/production records a config this kiln cannot read"):
        made.env_config()


def test_unreadable_recorded_progress_is_a_ledger_error():
    from kiln.rollout.driver import Progress

    with pytest.raises(LedgerError, match="recorded progress cannot be read"):
        Progress.from_data({"phases": ["roll"], "index": "first"})
    with pytest.raises(LedgerError, match="recorded progress cannot be read"):
        Progress.from_data({"phases": ["roll"], "index": 0, "policy": {"strategy": "sideways"}})


def test_messages_do_not_show_the_ledger_password():
    with pytest.raises(LedgerError) as caught:
        Ledger("nosuchdialect://kiln:hunter2@db.example/kiln")
    assert "hunter2" not in str(caught.value) and "kiln:***@db.example" in caught.value.message
