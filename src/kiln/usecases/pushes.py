"""Push admission: whether a push starts a pipeline run. One set of rules, whichever way the push
reached kiln (a GitHub or GitLab webhook of `kiln serve`, the post-receive hook of `kiln ci hook
install`), checked in this order:

1. A delivery id seen before is a replay (webhooks name each delivery; a hook has none): refused.
2. Another event than a push, or a deleted ref, starts nothing: ignored.
3. The ref must be a valid full ref name and the commit a full commit id (they reach git).
4. A commit its ref already ran is a replay: refused. A webhook signature covers the body, not
   the delivery id, so a captured push resent under a new id is caught here, by its content.
5. A commit older than the one its ref last ran (an ancestor of it) is refused too: a push never
   takes a ref back (`kiln ci run --ref COMMIT` does, on purpose).

An admitted push is queued as a run of its ref (superseding that ref's queued older runs) and a
detached runner is started for it. A refusal is PushRefused (409 for a webhook)."""

from __future__ import annotations

from dataclasses import dataclass

from kiln import git, views
from kiln.ci.trigger import ZERO
from kiln.context import Context
from kiln.errors import PushRefused, UsageError
from kiln.usecases import ci_runs


@dataclass(frozen=True)
class Pushed:
    ref: str  # refs/heads/main, refs/tags/v1
    commit: str  # the pushed commit; ZERO for a deleted ref


def admit(ctx: Context, *, repo: str, spec: str, source: str, push: Pushed | None, delivery: str | None = None,
          start_runner: bool = True) -> views.Admission:
    """Queue a run for `push` to `repo` (kiln.yaml at `spec` in it), unless the rules above refuse
    it; `source` (github, gitlab, hook) is the run's trigger; `push` None: another event."""
    runs = ci_runs.store(ctx)
    if delivery is not None and not runs.first_delivery(source, delivery):
        ctx.out.warn(f"{source} delivery {delivery} was seen before; refused")
        raise PushRefused(f"delivery {delivery} was already received")
    if push is None or push.commit == ZERO:
        return views.Admission(status="ignored")
    if not git.is_ref(push.ref) or not git.is_commit(push.commit):
        raise UsageError(f"a push of {push.ref[:80]!r} to {push.commit[:80]!r} names no valid ref and commit.")
    stale = replayed(ctx, repo, push)
    if stale:
        ctx.out.warn(f"{source} push{f' (delivery {delivery})' if delivery else ''} refused: {stale}")
        raise PushRefused(stale)
    run = ci_runs.queue(ctx, repo=repo, spec=spec, ref=push.ref, commit=push.commit, trigger=source)
    if delivery is not None:
        runs.link_delivery(source, delivery, run.id)
    if start_runner:
        ci_runs.start_runner(ctx, run.id)
    return views.Admission(status="queued", run=run.id)


def replayed(ctx: Context, repo: str, push: Pushed) -> str | None:
    """Why `push` is a replay, or None: its ref already ran that commit, or its last run is of a
    newer commit (one the pushed commit is an ancestor of)."""
    from kiln.ci.plan import queue_key

    runs = ci_runs.store(ctx)
    queue = queue_key(repo, push.ref)
    seen = runs.run_of_commit(queue, push.commit)
    if seen is not None:
        return f"{push.ref} already ran {push.commit[:12]} (run {seen.id}); a replayed push starts nothing"
    latest = runs.latest_run(queue)
    if latest is not None and git.is_ancestor(repo, push.commit, latest.commit):
        return (f"{push.commit[:12]} is older than {latest.commit[:12]}, which {push.ref} already ran (run {latest.id}); "
                "kiln never goes back by a push (`kiln ci run --ref COMMIT` does, on purpose)")
    return None
