"""One pipeline run: wait for its turn in its queue, check the commit out into a clean clone,
check what its pipeline asks for against what its ref may do (ci/policy.py, ci/trust.py: a run
asking for more fails before anything runs), bake, run the stages in order (a parallel group's
steps in threads), record each step's state, timing and log. A failing step stops the run: later
steps are skipped, so nothing after it deploys, and what was serving keeps serving."""

from __future__ import annotations

import os
import socket
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

from kiln import git, process
from kiln.bake.baker import BakedImage, bake
from kiln.ci.logsink import StepLog, StepOutput
from kiln.ci.plan import Planned, plan
from kiln.ci.policy import trust_for
from kiln.ci.steps import Cancelled, StepContext, execute
from kiln.ci.trust import asks
from kiln.context import Context
from kiln.errors import KilnError, PipelineError, PolicyRefused, UsageError
from kiln.ledger.ci_store import ACTIVE, CiRun, CiStore
from kiln.ledger.db import now
from kiln.ledger.kinds import RunState, StepState
from kiln.secretstore import Masker, masker_for
from kiln.spec.loader import LoadedSpec, find_spec, load_spec
from kiln.spec.pipeline import Pipeline, StepKind

POLL = 0.5


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def wait_and_run(ctx: Context, store: CiStore, run_id: int) -> CiRun:
    """Run `run_id` once no other run of its queue is active; return it as it ended (a run that
    was superseded or cancelled while queued is returned as it is, not run)."""
    said = False
    while True:
        run = store.run(run_id)
        if run is None:
            raise PipelineError(f"there is no run {run_id}.", "`kiln ci list` shows the runs.")
        if run.state != RunState.QUEUED:
            return run
        if store.claim(run_id, worker_id(), ctx.settings.ci_max_runs):
            return execute_run(ctx, store, run_id)
        active = store.active_in_queue(run.queue)
        for other in active:
            if _dead(other.worker):
                store.set_state(other.id, RunState.FAILED, f"its runner ({other.worker}) is gone", only_from=ACTIVE)
            elif not said:
                ctx.out.step(f"run {run_id} waits for run {other.id} of {run.ref} to finish")
                said = True
        if not active and not said:
            ctx.out.step(f"run {run_id} waits: {ctx.settings.ci_max_runs} runs are running (KILN_CI_MAX_RUNS)")
            said = True
        time.sleep(POLL)


def _dead(worker: str) -> bool:
    """A runner on this host whose process is gone."""
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    return not process.alive(int(pid))


def execute_run(ctx: Context, store: CiStore, run_id: int) -> CiRun:
    run = _run_of(store, run_id)
    cancelled = threading.Event()
    watching = threading.Event()
    threading.Thread(target=_watch_cancel, args=(store, run_id, cancelled, watching), daemon=True).start()
    first = store.add_steps(run_id, [(0, 0, "checkout and bake", StepKind.BAKE, StepState.PENDING, "")])[0]
    store.set_step(first.id, StepState.RUNNING)
    log = StepLog(store, run_id, first.id, lambda s: s, ctx.out, "bake")
    work = ctx.settings.home / "ci" / "work" / f"run-{run_id}"
    git.remove(work)
    ctx.out.step(f"run {run_id}: {run.ref} at {run.commit[:12]}")
    state, reason = RunState.FAILED, "the runner stopped unexpectedly"
    try:
        state, reason = _execute(ctx, store, run, first.id, log, work, cancelled)
    except KeyboardInterrupt:
        state, reason = RunState.CANCELLED, "interrupted"
        raise
    finally:
        watching.set()
        log.flush()
        git.remove(work)
        for step in store.steps(run_id):  # whatever did not get to run
            if not step.state.final:
                store.set_step(step.id, StepState.SKIPPED if step.state == StepState.PENDING else StepState.CANCELLED,
                               step.detail or "not run: an earlier step did not succeed")
        store.set_state(run_id, state, reason)
    prune(ctx, store)
    return _run_of(store, run_id)


KEEP_DAYS, KEEP_RUNS = 30, 500  # retention of finished runs (their steps and logs) and webhook deliveries


def prune(ctx: Context, store: CiStore, days: int = KEEP_DAYS, keep: int = KEEP_RUNS) -> tuple[int, int, int]:
    """Forget finished runs older than `days` or beyond the newest `keep`, their logs, and
    deliveries older than `days` (each runner does this when its run ends; `kiln ci prune` too)."""
    runs, lines, deliveries = store.prune(now() - timedelta(days=days), keep)
    if runs or deliveries:
        ctx.out.step(f"pruned {runs} run(s) with {lines} log line(s) and {deliveries} webhook delivery id(s)")
    return runs, lines, deliveries


def _run_of(store: CiStore, run_id: int) -> CiRun:
    run = store.run(run_id)
    if run is None:
        raise UsageError(f"there is no CI run {run_id}.", "`kiln ci list` lists them.")
    return run


def _watch_cancel(store: CiStore, run_id: int, cancelled: threading.Event, done: threading.Event) -> None:
    while not done.wait(POLL):
        run = store.run(run_id)
        if run is not None and run.cancel:
            cancelled.set()
            return


def _execute(ctx: Context, store: CiStore, run: CiRun, bake_step: int, log: StepLog, work: Path,
             cancelled: threading.Event) -> tuple[RunState, str]:
    """(final state, reason)."""
    try:
        log.write(f"› cloning {run.repo} at {run.commit[:12]}")
        git.clone(run.repo, run.commit, work)
        loaded = load_spec(find_spec(work / run.spec))
        pipeline = _pipeline(loaded)
        store.update_run(run.id, app=loaded.spec.app)
        stages = plan(pipeline, run.ref)
        rows = store.add_steps(run.id, [(p.position, p.stage, p.name, p.step.kind,
                                         StepState.SKIPPED if p.skip else StepState.PENDING, p.skip or "")
                                        for stage in stages for p in stage])
        ids = {row.position: row.id for row in rows}
        # Before anything runs: what this commit's pipeline asks for against what its ref may do,
        # decided by a trusted source (ci/policy.py), never by this commit.
        asked = asks(loaded.spec, pipeline, run.ref)
        trust = trust_for(ctx.settings, run.repo, run.spec, run.ref, run.commit)
        for line in (trust.headline(), *trust.notes):
            log.write(f"› {line}")
        refused = trust.refusals(asked)
        if refused:
            raise PolicyRefused(refused, f"Nothing ran. What {trust.name} may do comes from {trust.source}; "
                                         f"`kiln ci policy show --repo {run.repo} --ref {run.ref}` shows it "
                                         "(docs/ci.md, Trust).")
        readable = trust.may_read(asked)
        masker = masker_for(readable | trust.kiln_secrets, ctx.secret)
        log.mask = masker
        image = bake(ctx.engine(), loaded, StepOutput(log), ctx.settings.home / "tmp")
        store.update_run(run.id, image=image.id)
        store.set_step(bake_step, StepState.SUCCEEDED, f"{image.tag} ({image.id[:19]})" + ("" if image.built else ", reused"))
        ctx.out.done(f"baked {image.tag} ({image.id[:19]})")
    except PolicyRefused as exc:
        for line in exc.refusals:
            log.write(f"refused: {line}")
        log.write(f"  {exc.hint}")
        store.set_step(bake_step, StepState.FAILED, f"refused: {exc.message}")
        ctx.out.warn(f"run {run.id} refused: {exc.message}")
        return RunState.FAILED, f"refused: {exc.message}"
    except KilnError as exc:
        store.set_step(bake_step, StepState.FAILED, str(exc))
        log.write(f"error: {exc}")
        ctx.out.warn(f"run {run.id} failed before its steps: {exc}")
        return RunState.FAILED, f"checkout and bake: {exc.message}"
    log.flush()
    for stage in stages:
        todo = [p for p in stage if not p.skip]
        if not todo:
            continue
        if cancelled.is_set():
            return RunState.CANCELLED, "cancelled by `kiln ci cancel`"
        results = _run_stage(ctx, store, run, todo, ids, loaded, image, masker, _granted(ctx, readable), cancelled)
        failed = [(p, state, why) for p, state, why in results if state != StepState.SUCCEEDED]
        if failed:
            p, state, why = failed[0]
            if state == StepState.CANCELLED:
                return RunState.CANCELLED, "cancelled by `kiln ci cancel`"
            return RunState.FAILED, f"step {p.position} ({p.name}) failed: {why}"
    ctx.out.done(f"run {run.id} succeeded")
    return RunState.SUCCEEDED, ""


def _run_stage(ctx: Context, store: CiStore, run: CiRun, stage: list[Planned], ids: dict[int, int],
               loaded: LoadedSpec, image: BakedImage, masker: Masker, secret: Callable[[str], str | None],
               cancelled: threading.Event) -> list[tuple[Planned, StepState, str]]:
    """Each step's (planned step, final state, why it did not succeed)."""
    def one(p: Planned) -> tuple[Planned, StepState, str]:
        # Each thread gets its own engine client; the ledger's engine is shared (thread-safe).
        log = StepLog(store, run.id, ids[p.position], masker, ctx.out, p.name)
        sc = StepContext(ctx.derive(StepOutput(log), own_engines=len(stage) > 1),
                         store, run, ids[p.position], p.position, loaded, image, log, secret, cancelled)
        store.set_step(sc.step_id, StepState.RUNNING)
        ctx.out.step(f"step {p.position}: {p.name}")
        started = time.monotonic()
        try:
            detail, state, why = masker(execute(sc, p.step)), StepState.SUCCEEDED, ""
        except Cancelled:
            detail, state, why = "cancelled", StepState.CANCELLED, "cancelled"
        except KilnError as exc:
            detail, state = masker(str(exc)), StepState.FAILED
            why = detail
            log.write(f"error: {detail}")
        except Exception as exc:  # a bug: keep the traceback in the log, fail the step, not the runner
            log.write(masker(traceback.format_exc()))
            detail, state, why = f"internal error: {type(exc).__name__}: {masker(str(exc))}", StepState.FAILED, "internal error"
        log.flush()
        store.set_step(sc.step_id, state, detail)
        took = time.monotonic() - started
        (ctx.out.done if state == StepState.SUCCEEDED else ctx.out.warn)(f"step {p.position}: {p.name}: {state} in {took:.1f}s — {detail}")
        return p, state, why

    if len(stage) == 1:
        return [one(stage[0])]
    with ThreadPoolExecutor(max_workers=len(stage)) as pool:
        return list(pool.map(one, stage))


def _pipeline(loaded: LoadedSpec) -> Pipeline:
    pipeline = loaded.spec.pipeline
    if pipeline is None:
        raise PipelineError(f"{loaded.path.name} at this commit has no `pipeline` section.",
                            "Add one (docs/ci.md) and commit it.")
    return pipeline  # its environments were checked when the spec was loaded (spec/checks.py)


def _granted(ctx: Context, readable: set[str]) -> Callable[[str], str | None]:
    """The secret lookup of a run's steps: only the secrets the run may read (a step asking for
    another was refused before anything ran; this holds all the same)."""
    def find(name: str) -> str | None:
        if name not in readable:
            raise PolicyRefused([f"secret {name!r} is not granted to this run"])
        return ctx.secret(name)
    return find
