"""Rollouts of a release, with the strategy's persisted phase, and their journalled steps."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update

from kiln.errors import LedgerError
from kiln.ledger.db import Database, changed, now
from kiln.ledger.kinds import RUNNING, STEP_ACTIONS, UNFINISHED, ActionState, RolloutState
from kiln.ledger.schema import RolloutRow, StepRow


@dataclass(frozen=True)
class Rollout:
    id: int
    app: str
    env: str
    from_release: int | None
    to_release: int
    strategy: str
    state: RolloutState
    reason: str
    started_at: datetime
    finished_at: datetime | None
    phase: str  # where the strategy's state machine is ("" before it records one)
    data: dict[str, Any]  # that state machine's persisted data


@dataclass(frozen=True)
class Step:
    """One journalled action of a rollout (kinds.STEP_ACTIONS), as it started, was done or failed."""

    action: str
    target: str
    state: ActionState
    detail: str
    at: datetime  # naive UTC


def _rollout(row: RolloutRow) -> Rollout:
    try:
        data = json.loads(row.data or "{}")
    except ValueError:
        raise LedgerError(f"rollout {row.id} of {row.app}/{row.env} has corrupt phase data in the ledger "
                          "(not JSON).", "Settle it by hand: `kiln rollout show` lists its steps.") from None
    return Rollout(row.id, row.app, row.env, row.from_release, row.to_release, row.strategy,
                   RolloutState(row.state), row.reason, row.started_at, row.finished_at, row.phase, data)


class Rollouts:
    def __init__(self, db: Database) -> None:
        self.db = db

    def start(self, app: str, env: str, from_release: int | None, to_release: int, strategy: str,
              data: dict[str, Any] | None = None) -> Rollout:
        with self.db.session() as s, s.begin():
            row = RolloutRow(app=app, env=env, from_release=from_release, to_release=to_release,
                             strategy=strategy, state=RUNNING, reason="", started_at=now(), phase="",
                             data=json.dumps(data or {}, sort_keys=True))
            s.add(row)
        return _rollout(row)

    def set_phase(self, rollout_id: int, phase: str, data: dict[str, Any] | None = None) -> None:
        """Record the strategy's phase; `data`, when given, replaces the stored data."""
        with self.db.session() as s, s.begin():
            row = _existing(s.get(RolloutRow, rollout_id), rollout_id)
            row.phase = phase
            if data is not None:
                row.data = json.dumps(data, sort_keys=True)

    def finish(self, rollout_id: int, state: RolloutState, reason: str = "") -> None:
        """Set the state: succeeded or aborted end it; running and paused (re)open it."""
        if state not in tuple(RolloutState):
            raise LedgerError(f"rollout state {state!r} is not one of {', '.join(RolloutState)}.")
        state = RolloutState(state)
        with self.db.session() as s, s.begin():
            row = _existing(s.get(RolloutRow, rollout_id), rollout_id)
            row.state, row.reason = state, reason
            row.finished_at = None if state in UNFINISHED else now()

    def request_abort(self, rollout_id: int, by: str) -> bool:
        """Ask the process running an unfinished rollout to abort it; False when it has ended."""
        with self.db.session() as s, s.begin():
            return changed(s.execute(update(RolloutRow).where(RolloutRow.id == rollout_id,
                                                              RolloutRow.state.in_(UNFINISHED))
                                     .values(abort_by=by))) > 0

    def abort_requested(self, rollout_id: int) -> str:
        """Who asked to abort the rollout ("" when nobody did)."""
        with self.db.session() as s:
            return s.scalar(select(RolloutRow.abort_by).where(RolloutRow.id == rollout_id)) or ""

    def outcomes(self) -> dict[str, int]:
        """How many rollouts (of every environment) there are in each state."""
        with self.db.session() as s:
            return {state: n for state, n in s.execute(select(RolloutRow.state, func.count()).group_by(RolloutRow.state))}

    def durations(self) -> list[float]:
        """Seconds each finished rollout took (of every environment)."""
        with self.db.session() as s:
            rows = s.execute(select(RolloutRow.started_at, RolloutRow.finished_at)
                             .where(RolloutRow.finished_at.is_not(None))).all()
        return [(end - start).total_seconds() for start, end in rows if end is not None]

    def get(self, rollout_id: int) -> Rollout | None:
        with self.db.session() as s:
            row = s.get(RolloutRow, rollout_id)
            return _rollout(row) if row else None

    def unfinished(self, app: str, env: str) -> list[Rollout]:
        """Rollouts still running or paused, oldest first."""
        with self.db.session() as s:
            q = (select(RolloutRow).where(RolloutRow.app == app, RolloutRow.env == env,
                                          RolloutRow.state.in_(UNFINISHED)).order_by(RolloutRow.id))
            return [_rollout(r) for r in s.scalars(q)]

    def of(self, app: str, env: str, limit: int = 20) -> list[Rollout]:
        """app/env's rollouts, newest first."""
        with self.db.session() as s:
            q = (select(RolloutRow).where(RolloutRow.app == app, RolloutRow.env == env)
                 .order_by(RolloutRow.id.desc()).limit(limit))
            return [_rollout(r) for r in s.scalars(q)]

    # --- steps: the journal of a rollout's actions -----------------------------------------------

    def record_step(self, rollout_id: int, action: str, target: str, state: ActionState, detail: str = "") -> None:
        """`action` is one of kinds.STEP_ACTIONS."""
        if action not in STEP_ACTIONS:
            raise LedgerError(f"step action {action!r} is not one of {', '.join(STEP_ACTIONS)}.")
        state = ActionState(state)
        with self.db.session() as s, s.begin():
            s.add(StepRow(rollout_id=rollout_id, action=action, target=target, state=state, detail=detail, at=now()))

    def steps(self, rollout_id: int) -> list[Step]:
        with self.db.session() as s:
            q = select(StepRow).where(StepRow.rollout_id == rollout_id).order_by(StepRow.id)
            return [Step(r.action, r.target, ActionState(r.state), r.detail, r.at) for r in s.scalars(q)]


def _existing(row: RolloutRow | None, rollout_id: int) -> RolloutRow:
    if row is None:
        raise LedgerError(f"there is no rollout {rollout_id} in the ledger.")
    return row
