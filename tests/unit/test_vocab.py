"""The stored vocabularies: the states, roles and phases kiln writes into the ledger (and into
container labels) are enums whose values are exactly the text existing ledgers hold.

A golden list per enum: renaming a member, or adding one, must be a deliberate edit here, never a
refactoring's side effect (a changed value would be a data migration)."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from kiln.ledger import kinds
from kiln.ledger.ci_store import CiStore
from kiln.ledger.store import Ledger


def values(enum: type) -> list[str]:
    return [member.value for member in enum]


def test_rollout_states_are_the_stored_text():
    assert values(kinds.RolloutState) == ["running", "paused", "succeeded", "aborted"]
    assert values(kinds.ActionState) == ["started", "done", "failed"]  # a rollout's journalled steps
    assert kinds.PHASES_DONE == "done"


def test_ci_run_and_step_states_are_the_stored_text():
    assert values(kinds.RunState) == ["queued", "running", "waiting", "succeeded", "failed", "cancelled", "superseded"]
    assert values(kinds.StepState) == ["pending", "running", "waiting", "approved", "succeeded", "failed",
                                       "skipped", "cancelled"]
    assert [s.value for s in kinds.RunState if s.final] == ["succeeded", "failed", "cancelled", "superseded"]
    assert [s.value for s in kinds.RunState if s.active] == ["running", "waiting"]
    assert [s.value for s in kinds.StepState if s.final] == ["succeeded", "failed", "skipped", "cancelled"]


def test_a_member_is_its_text_in_every_form():
    """What the ledger, `--json`, f-strings and the dashboard's templates compare and print."""
    state = kinds.RunState.SUPERSEDED
    assert state == "superseded" and str(state) == "superseded" and f"{state}" == "superseded"
    assert state in ("superseded",) and {"superseded": 1}[state] == 1


def test_rows_written_as_text_read_back_as_members(tmp_path):
    """Rows of a ledger written before the enums (or by hand) read back as the members."""
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    store = CiStore(ledger)
    run, _ = store.enqueue(repo="/r.git", spec="kiln.yaml", ref="refs/heads/main", queue="q", commit="a" * 40,
                           trigger="hook")
    [step] = store.add_steps(run.id, [(0, 0, "bake", "bake", kinds.StepState.PENDING, "")])
    with ledger.db.session() as s, s.begin():
        s.execute(text("UPDATE ci_runs SET state = 'waiting' WHERE id = :id"), {"id": run.id})
        s.execute(text("UPDATE ci_steps SET state = 'approved' WHERE id = :id"), {"id": step.id})
    assert store.run(run.id).state is kinds.RunState.WAITING
    assert store.step(step.id).state is kinds.StepState.APPROVED
    # and what kiln writes is that text, nothing else
    store.set_state(run.id, kinds.RunState.CANCELLED)
    with ledger.db.session() as s:
        assert s.execute(text("SELECT state, typeof(state) FROM ci_runs")).one() == ("cancelled", "text")


def test_container_roles_are_the_labels_containers_carry():
    from kiln.providers.base import ROLE_LABEL, Role, selector

    assert values(Role) == ["instance", "router", "hook", "ci"]
    assert ROLE_LABEL == "kiln.role"
    labels = selector("shop", "prod", Role.HOOK)
    assert labels == {"kiln.app": "shop", "kiln.env": "prod", "kiln.role": "hook"}
    assert type(labels["kiln.role"]) is str  # plain text at the engine boundary


def test_phase_kinds_are_the_stored_names():
    from kiln.rollout.strategy import PhaseKind

    assert values(PhaseKind) == ["before_traffic", "roll", "start", "smoke", "promotion", "shift", "switch",
                                 "after_traffic"]
    assert [k.value for k in PhaseKind if k.moves_traffic] == ["roll", "switch", "after_traffic"]


STORED_PHASES = ["before_traffic", "roll", "start", "smoke", "promotion", "shift:0", "shift:1", "shift:12",
                 "switch", "after_traffic"]


@pytest.mark.parametrize("stored", STORED_PHASES)
def test_a_phase_round_trips_its_stored_text(stored):
    from kiln.rollout.strategy import Phase

    phase = Phase.parse(stored)
    assert str(phase) == stored and f"{phase}" == stored
    assert Phase.parse(str(phase)) == phase


def test_a_shift_carries_its_step_and_nothing_else_does():
    from kiln.rollout.strategy import Phase, PhaseKind

    assert Phase.parse("shift:3") == Phase(PhaseKind.SHIFT, 3)
    assert Phase.parse("switch") == Phase(PhaseKind.SWITCH)


@pytest.mark.parametrize("text", ["", "shift", "shift:", "shift:x", "shift:-1", "shift:01", "switch:0", "roll:1",
                                  "Roll", "sideways", "shift:1:2"])
def test_text_that_names_no_phase_is_refused(text):
    from kiln.rollout.strategy import Phase

    with pytest.raises(ValueError):
        Phase.parse(text)


def test_progress_stores_phases_as_text_and_reads_them_back():
    from kiln.rollout.driver import Progress
    from kiln.rollout.strategy import phases
    from kiln.spec.models import RolloutPolicy

    policy = RolloutPolicy(strategy="canary", steps=({"weight": 10}, {"weight": 50}, {"weight": 100}))
    progress = Progress(phases(policy, True, False), 2, policy)
    data = progress.data()
    assert data["phases"] == ["start", "before_traffic", "shift:0", "shift:1", "switch"]
    assert Progress.from_data(data) == progress


def test_ci_step_kinds_are_the_stored_text():
    from kiln.spec.pipeline import KINDS, Step, StepKind

    assert values(StepKind) == ["bake", "run", "deploy", "promote", "smoke", "parallel"]
    assert set(KINDS) <= set(values(StepKind))
    assert Step.model_validate({"deploy": "staging"}).kind is StepKind.DEPLOY
