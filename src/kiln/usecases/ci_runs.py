"""What `kiln ci list/show/logs/approve/cancel` ask of the pipeline's ledger (ledger/ci_store.py):
runs, a run with its steps, its log (and following it), approving a waiting promotion, cancelling."""

from __future__ import annotations

import time
from collections.abc import Iterator

from kiln.context import Context
from kiln.errors import NotFound, UsageError
from kiln.ledger.ci_store import FINISHED, CiRun, CiStep, CiStore

FOLLOW_EVERY = 0.5  # seconds between two reads of a followed log


def store(ctx: Context) -> CiStore:
    return CiStore(ctx.ledger)


def run(ctx: Context, run_id: int) -> CiRun:
    """Run `run_id`; UsageError when there is none."""
    found = store(ctx).run(run_id)
    if found is None:
        raise NotFound(f"there is no run {run_id}.", "`kiln ci list` shows the runs.")
    return found


def runs(ctx: Context, limit: int = 20) -> list[CiRun]:
    """Pipeline runs, newest first."""
    return store(ctx).runs(limit=limit)


def steps(ctx: Context, run_id: int) -> list[CiStep]:
    return store(ctx).steps(run_id)


def show(ctx: Context, run_id: int) -> tuple[CiRun, list[CiStep]]:
    return run(ctx, run_id), steps(ctx, run_id)


def logs(ctx: Context, run_id: int, follow: bool = False) -> Iterator[list[tuple[str, str]]]:
    """Batches of (step label "POSITION:NAME" or "-", line) of a run's log; with `follow`, until
    the run has ended and its last lines are out."""
    runs_ = store(ctx)
    run(ctx, run_id)
    after, names = 0, {}
    while True:
        current = runs_.run(run_id)
        lines = runs_.logs(run_id, after)
        if lines and any(step not in names for _, step, _ in lines):
            names = {s.id: f"{s.position}:{s.name}" for s in runs_.steps(run_id)}
        yield [(names.get(step, "-") if step is not None else "-", line) for _, step, line in lines]
        after = lines[-1][0] if lines else after
        if not follow or (current is not None and current.state in FINISHED and not lines):
            return
        time.sleep(FOLLOW_EVERY)


def approve(ctx: Context, run_id: int, by: str) -> CiStep:
    """Let the run's waiting manual promotion go ahead; returns that step."""
    runs_ = store(ctx)
    run(ctx, run_id)
    waiting = [s for s in runs_.steps(run_id) if s.state == "waiting"]
    if not waiting:
        raise UsageError(f"run {run_id} has no step waiting for approval.", f"`kiln ci show {run_id}` shows its steps.")
    runs_.set_step(waiting[0].id, "approved", f"approved by {by}", only_from=("waiting",))
    return waiting[0]


def cancel(ctx: Context, run_id: int) -> CiRun:
    """Cancel a queued run at once, or ask the worker of an active one to stop; UsageError when
    the run has already ended. Returns the run as it is now."""
    runs_ = store(ctx)
    found = run(ctx, run_id)
    if found.state in FINISHED:
        raise UsageError(f"run {run_id} has already ended ({found.state}).")
    return runs_.request_cancel(run_id) or found
