"""Starting runs: queue one for a pushed ref (superseding the queued older runs of that ref) and
hand it to a runner, in this process or in a detached `kiln ci work RUN`."""

from __future__ import annotations

import sys
from pathlib import Path

from kiln import process
from kiln.ci.plan import queue_key
from kiln.context import Context
from kiln.ledger.ci_store import CiRun, CiStore

ZERO = "0" * 40  # git's "no commit": the old side of a created ref, the new side of a deleted one


def enqueue(ctx: Context, store: CiStore, *, repo: str, spec: str, ref: str, commit: str, trigger: str) -> CiRun:
    run, superseded = store.enqueue(repo=repo, spec=spec, ref=ref, queue=queue_key(repo, ref), commit=commit,
                                    trigger=trigger)
    for old in superseded:
        ctx.out.warn(f"run {old} of {ref} was superseded by run {run.id} before it started")
    ctx.out.step(f"queued run {run.id}: {ref} at {commit[:12]} ({trigger})")
    return run


def spawn(ctx: Context, run_id: int) -> Path:
    """A detached runner for `run_id` (it outlives a git hook or a webhook request); its terminal
    output goes to KILN_HOME/ci/run-ID.out. Returns that file."""
    out = ctx.settings.home / "ci" / f"run-{run_id}.out"
    policy = ("--policy", str(ctx.settings.ci_policy)) if ctx.settings.ci_policy is not None else ()
    process.spawn_detached((sys.executable, "-m", "kiln", "ci", "work", str(run_id), *policy), out)
    return out


def pushed_refs(lines: str) -> list[tuple[str, str]]:
    """(ref, new commit) of each ref a post-receive hook's stdin says was pushed; deletions
    (new side all zeros) start nothing. Pure."""
    out = []
    for line in lines.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] != ZERO:
            out.append((parts[2], parts[1]))
    return out
