"""The pipeline's part of the ledger: runs and their queue, steps, logs, webhook deliveries.

Queue rules, kept by single conditional statements so that two processes cannot both win:
a new run supersedes the queued older runs of its queue (same repository and ref); a queued run
starts only while no other run of its queue is running or waiting."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, assert_never

from sqlalchemy import and_, delete, exists, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import aliased

from kiln.ledger.ci_schema import CiDeliveryRow, CiLogRow, CiRunRow, CiStepRow
from kiln.ledger.db import changed, now
from kiln.ledger.kinds import RunState, StepState
from kiln.ledger.store import Ledger
from kiln.spec.pipeline import StepKind

ACTIVE = tuple(s for s in RunState if s.active)  # a run that holds its queue
FINISHED = tuple(s for s in RunState if s.final)


@dataclass(frozen=True)
class CiRun:
    id: int
    app: str
    repo: str
    spec: str
    ref: str
    queue: str
    commit: str
    trigger: str
    state: RunState
    reason: str
    image: str
    worker: str
    cancel: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True)
class CiStep:
    id: int
    run_id: int
    position: int
    stage: int
    name: str
    kind: StepKind
    state: StepState
    detail: str
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def seconds(self) -> float | None:
        if self.started_at is None:
            return None
        return ((self.finished_at or now()) - self.started_at).total_seconds()


def _run(row: CiRunRow) -> CiRun:
    return CiRun(row.id, row.app, row.repo, row.spec, row.ref, row.queue, row.commit, row.trigger,
                 RunState(row.state), row.reason, row.image, row.worker, bool(row.cancel), row.created_at, row.started_at, row.finished_at)


def _step(row: CiStepRow) -> CiStep:
    return CiStep(row.id, row.run_id, row.position, row.stage, row.name, StepKind(row.kind), StepState(row.state), row.detail,
                  row.started_at, row.finished_at)


class CiStore:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    # --- runs and the queue ---------------------------------------------------------------

    def enqueue(self, *, repo: str, spec: str, ref: str, queue: str, commit: str, trigger: str,
                app: str = "") -> tuple[CiRun, list[int]]:
        """A new queued run; returns it and the ids of the older queued runs it superseded."""
        with self.ledger.db.session() as s, s.begin():
            older = list(s.scalars(select(CiRunRow.id).where(CiRunRow.queue == queue, CiRunRow.state == RunState.QUEUED)))
            row = CiRunRow(app=app, repo=repo, spec=spec, ref=ref, queue=queue, commit=commit, trigger=trigger,
                           state=RunState.QUEUED, reason="", image="", worker="", cancel=False, created_at=now())
            s.add(row)
            s.flush()
            if older:
                s.execute(update(CiRunRow).where(CiRunRow.id.in_(older), CiRunRow.state == RunState.QUEUED)
                          .values(state=RunState.SUPERSEDED, reason=f"superseded by run {row.id}", finished_at=now()))
        return _run(row), older

    def claim(self, run_id: int, worker: str, limit: int | None = None) -> bool:
        """Start a queued run, if no other run of its queue is running or waiting and (with a
        `limit`) fewer than `limit` runs of any queue are running: one conditional UPDATE, so two
        runners never both take the last slot (SQLite; on PostgreSQL the count is read committed)."""
        other, anyone = aliased(CiRunRow), aliased(CiRunRow)
        with self.ledger.db.session() as s, s.begin():
            queue = s.scalar(select(CiRunRow.queue).where(CiRunRow.id == run_id))
            busy = exists().where(and_(other.queue == queue, other.state.in_(ACTIVE), other.id != run_id))
            cond = [CiRunRow.id == run_id, CiRunRow.state == RunState.QUEUED, ~busy]
            if limit is not None:
                running = select(func.count()).select_from(anyone).where(anyone.state == RunState.RUNNING).scalar_subquery()
                cond.append(running < limit)
            return changed(s.execute(update(CiRunRow).where(*cond)
                             .values(state=RunState.RUNNING, worker=worker, started_at=now()))) == 1

    def running_count(self) -> int:
        with self.ledger.db.session() as s:
            return s.scalar(select(func.count()).select_from(CiRunRow).where(CiRunRow.state == RunState.RUNNING)) or 0

    def active_in_queue(self, queue: str) -> list[CiRun]:
        with self.ledger.db.session() as s:
            q = select(CiRunRow).where(CiRunRow.queue == queue, CiRunRow.state.in_(ACTIVE)).order_by(CiRunRow.id)
            return [_run(r) for r in s.scalars(q)]

    def update_run(self, run_id: int, **values: Any) -> None:
        with self.ledger.db.session() as s, s.begin():
            s.execute(update(CiRunRow).where(CiRunRow.id == run_id).values(**values))

    def set_state(self, run_id: int, state: RunState, reason: str = "", *,
                  only_from: Iterable[RunState] | None = None) -> bool:
        """Set a run's state (finishing it when the state is final); with `only_from`, only when it
        is in one of those states now. A state's text is checked: the ledger holds no other."""
        state = RunState(state)
        values: dict[str, Any] = {"state": state, "reason": reason}
        if state.final:
            values["finished_at"] = now()
        q = update(CiRunRow).where(CiRunRow.id == run_id)
        if only_from is not None:
            q = q.where(CiRunRow.state.in_(tuple(only_from)))
        with self.ledger.db.session() as s, s.begin():
            return changed(s.execute(q.values(**values))) == 1

    def request_cancel(self, run_id: int) -> CiRun | None:
        """Cancel a queued run at once; ask the worker of an active one to stop."""
        self.set_state(run_id, RunState.CANCELLED, "cancelled by `kiln ci cancel`", only_from=(RunState.QUEUED,))
        self.update_run(run_id, cancel=True)
        return self.run(run_id)

    def run(self, run_id: int) -> CiRun | None:
        with self.ledger.db.session() as s:
            row = s.get(CiRunRow, run_id)
            return _run(row) if row else None

    def run_of_commit(self, queue: str, commit: str) -> CiRun | None:
        """The first run of `commit` in `queue` (one repository and ref), whatever its state."""
        with self.ledger.db.session() as s:
            row = s.scalars(select(CiRunRow).where(CiRunRow.queue == queue, CiRunRow.commit == commit)
                            .order_by(CiRunRow.id).limit(1)).first()
            return _run(row) if row else None

    def latest_run(self, queue: str) -> CiRun | None:
        """The newest run in `queue`, whatever its state."""
        with self.ledger.db.session() as s:
            row = s.scalars(select(CiRunRow).where(CiRunRow.queue == queue).order_by(CiRunRow.id.desc()).limit(1)).first()
            return _run(row) if row else None

    def runs(self, app: str | None = None, limit: int = 20) -> list[CiRun]:
        q = select(CiRunRow).order_by(CiRunRow.id.desc()).limit(limit)
        if app is not None:
            q = q.where(CiRunRow.app.in_((app, "")))  # "" : not checked out yet
        with self.ledger.db.session() as s:
            return [_run(r) for r in s.scalars(q)]

    def counts(self) -> dict[str, int]:
        """How many runs there are in each state."""
        with self.ledger.db.session() as s:
            return {state: n for state, n in s.execute(select(CiRunRow.state, func.count()).group_by(CiRunRow.state))}

    # --- steps ----------------------------------------------------------------------------

    def add_steps(self, run_id: int, steps: Iterable[tuple[int, int, str, StepKind, StepState, str]]) -> list[CiStep]:
        """(position, stage, name, kind, state, detail) rows, in order."""
        with self.ledger.db.session() as s, s.begin():
            rows = [CiStepRow(run_id=run_id, position=p, stage=st, name=n, kind=StepKind(k), state=StepState(state), detail=d)
                    for p, st, n, k, state, d in steps]
            s.add_all(rows)
        return [_step(r) for r in rows]

    def set_step(self, step_id: int, state: StepState, detail: str | None = None, *,
                 only_from: Iterable[StepState] | None = None) -> bool:
        """Set a step's state: running records when it started; succeeded, failed and cancelled
        when it ended (a skipped step never ran)."""
        state = StepState(state)
        values: dict[str, Any] = {"state": state}
        if detail is not None:
            values["detail"] = detail
        match state:
            case StepState.RUNNING:
                values["started_at"] = now()
            case StepState.SUCCEEDED | StepState.FAILED | StepState.CANCELLED:
                values["finished_at"] = now()
            case StepState.PENDING | StepState.WAITING | StepState.APPROVED | StepState.SKIPPED:
                pass
            case _:
                assert_never(state)
        q = update(CiStepRow).where(CiStepRow.id == step_id)
        if only_from is not None:
            q = q.where(CiStepRow.state.in_(tuple(only_from)))
        with self.ledger.db.session() as s, s.begin():
            return changed(s.execute(q.values(**values))) == 1

    def steps(self, run_id: int) -> list[CiStep]:
        with self.ledger.db.session() as s:
            q = select(CiStepRow).where(CiStepRow.run_id == run_id).order_by(CiStepRow.position)
            return [_step(r) for r in s.scalars(q)]

    def step(self, step_id: int) -> CiStep | None:
        with self.ledger.db.session() as s:
            row = s.get(CiStepRow, step_id)
            return _step(row) if row else None

    # --- logs -----------------------------------------------------------------------------

    def log(self, run_id: int, step_id: int | None, lines: list[str]) -> None:
        """Append (already masked) lines."""
        if not lines:
            return
        at = now()
        with self.ledger.db.session() as s, s.begin():
            s.execute(insert(CiLogRow), [{"run_id": run_id, "step_id": step_id, "line": line, "at": at}
                                         for line in lines])

    def logs(self, run_id: int, after: int = 0) -> list[tuple[int, int | None, str]]:
        """(id, step id, line) after log id `after`, oldest first."""
        with self.ledger.db.session() as s:
            q = (select(CiLogRow.id, CiLogRow.step_id, CiLogRow.line)
                 .where(CiLogRow.run_id == run_id, CiLogRow.id > after).order_by(CiLogRow.id))
            return [(i, step, line) for i, step, line in s.execute(q)]

    # --- webhook deliveries ---------------------------------------------------------------

    def first_delivery(self, source: str, delivery: str) -> bool:
        """Record a delivery id; False when it was seen before (a replay)."""
        try:
            with self.ledger.db.session(passing=(IntegrityError,)) as s, s.begin():
                s.execute(insert(CiDeliveryRow).values(source=source, delivery=delivery, received_at=now()))
            return True
        except IntegrityError:
            return False

    def link_delivery(self, source: str, delivery: str, run_id: int) -> None:
        with self.ledger.db.session() as s, s.begin():
            s.execute(update(CiDeliveryRow).where(CiDeliveryRow.source == source, CiDeliveryRow.delivery == delivery)
                      .values(run_id=run_id))

    # --- retention ------------------------------------------------------------------------

    def prune(self, before: datetime, keep: int) -> tuple[int, int, int]:
        """Delete finished runs (with their steps and logs) created before `before` or older than
        the newest `keep` runs, and webhook deliveries received before `before`. A queue's latest
        run is always kept, whatever its age: the replay check (`latest_run`) compares a pushed
        commit with it. Returns (runs, log lines, deliveries) deleted."""
        with self.ledger.db.session() as s, s.begin():
            newest = select(CiRunRow.id).order_by(CiRunRow.id.desc()).limit(keep)
            latest = select(func.max(CiRunRow.id)).group_by(CiRunRow.queue)
            doomed = list(s.scalars(select(CiRunRow.id).where(
                CiRunRow.state.in_(FINISHED),
                CiRunRow.id.not_in(latest),
                (CiRunRow.created_at < before) | CiRunRow.id.not_in(newest))))
            lines = 0
            for chunk in range(0, len(doomed), 500):
                ids = doomed[chunk:chunk + 500]
                lines += changed(s.execute(delete(CiLogRow).where(CiLogRow.run_id.in_(ids))))
                s.execute(delete(CiStepRow).where(CiStepRow.run_id.in_(ids)))
                s.execute(update(CiDeliveryRow).where(CiDeliveryRow.run_id.in_(ids)).values(run_id=None))
                s.execute(delete(CiRunRow).where(CiRunRow.id.in_(ids)))
            deliveries = changed(s.execute(delete(CiDeliveryRow).where(CiDeliveryRow.received_at < before)))
        return len(doomed), lines, deliveries
