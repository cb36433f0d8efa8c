"""Pipeline runs, for `kiln ci …` and `kiln serve`: list, show, logs (and following them),
approve, cancel; running the pipeline for a commit (`kiln ci run`, and the runner that hooks,
webhooks and --detach start); pruning old runs. The ledger's side is ledger/ci_store.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

from kiln import views
from kiln.context import Context
from kiln.errors import NotFound, UsageError
from kiln.ledger.ci_store import CiRun, CiStore
from kiln.ledger.kinds import StepState

FOLLOW_EVERY = 0.5  # seconds between two reads of a followed log


def store(ctx: Context) -> CiStore:
    return CiStore(ctx.ledger)


def _stored(ctx: Context, run_id: int) -> CiRun:
    found = store(ctx).run(run_id)
    if found is None:
        raise NotFound(f"there is no run {run_id}.", "`kiln ci list` shows the runs.")
    return found


def run(ctx: Context, run_id: int) -> views.CiRun:
    """Run `run_id`; NotFound when there is none."""
    return views.CiRun.of(_stored(ctx, run_id))


def runs(ctx: Context, limit: int = 20) -> list[views.CiRun]:
    """Pipeline runs, newest first."""
    return [views.CiRun.of(r) for r in store(ctx).runs(limit=limit)]


def show(ctx: Context, run_id: int) -> views.CiRunDetail:
    """Run `run_id` with its steps; NotFound when there is none."""
    found = run(ctx, run_id)
    return views.CiRunDetail(**found.model_dump(), steps=[views.CiStep.of(s) for s in store(ctx).steps(run_id)])


def logs(ctx: Context, run_id: int, follow: bool = False) -> Iterator[list[views.LogLine]]:
    """Batches of a run's log lines, each with its step ("POSITION:NAME", or "-"); with `follow`,
    until the run has ended and its last lines are out."""
    runs_ = store(ctx)
    _stored(ctx, run_id)
    after, names = 0, {}
    while True:
        current = runs_.run(run_id)
        lines = runs_.logs(run_id, after)
        if lines and any(step not in names for _, step, _ in lines):
            names = {s.id: f"{s.position}:{s.name}" for s in runs_.steps(run_id)}
        yield [views.LogLine(step=names.get(step, "-") if step is not None else "-", line=line)
               for _, step, line in lines]
        after = lines[-1][0] if lines else after
        if not follow or (current is not None and current.state.final and not lines):
            return
        time.sleep(FOLLOW_EVERY)


def log(ctx: Context, run_id: int) -> list[views.LogLine]:
    """A run's whole log as it is now."""
    return [line for batch in logs(ctx, run_id) for line in batch]


def approve(ctx: Context, run_id: int, by: str) -> views.CiStep:
    """Let the run's waiting manual promotion go ahead; returns that step."""
    runs_ = store(ctx)
    _stored(ctx, run_id)
    waiting = [s for s in runs_.steps(run_id) if s.state == StepState.WAITING]
    if not waiting:
        raise UsageError(f"run {run_id} has no step waiting for approval.", f"`kiln ci show {run_id}` shows its steps.")
    runs_.set_step(waiting[0].id, StepState.APPROVED, f"approved by {by}", only_from=(StepState.WAITING,))
    return views.CiStep.of(waiting[0])


def cancel(ctx: Context, run_id: int) -> views.CiRun:
    """Cancel a queued run at once, or ask the worker of an active one to stop; UsageError when
    the run has already ended. Returns the run as it is now."""
    found = _stored(ctx, run_id)
    if found.state.final:
        raise UsageError(f"run {run_id} has already ended ({found.state}).")
    return views.CiRun.of(store(ctx).request_cancel(run_id) or found)


# --- running ------------------------------------------------------------------------------------


def queue(ctx: Context, *, repo: str, spec: str, ref: str, commit: str, trigger: str) -> views.CiRun:
    """A new queued run of `commit` for `ref` (superseding the queued older runs of that ref)."""
    from kiln.ci.trigger import enqueue

    return views.CiRun.of(enqueue(ctx, store(ctx), repo=repo, spec=spec, ref=ref, commit=commit, trigger=trigger))


def start_runner(ctx: Context, run_id: int) -> Path:
    """A detached runner for a queued run; returns the file its terminal output goes to."""
    from kiln.ci.trigger import spawn

    return spawn(ctx, run_id)


def work(ctx: Context, run_id: int) -> views.CiRunDetail:
    """Be the runner of `run_id`: wait for its turn, run it, and return it as it ended."""
    from kiln.ci.runner import wait_and_run

    ended = wait_and_run(ctx, store(ctx), run_id)
    return show(ctx, ended.id)


def prune(ctx: Context, days: int, keep: int) -> tuple[int, int, int]:
    """Forget finished runs older than `days` or beyond the newest `keep` (with their steps and
    logs), and webhook delivery ids older than `days`. Returns (runs, log lines, deliveries)."""
    from kiln.ci.runner import prune as pruned

    return pruned(ctx, store(ctx), days, keep)
