"""What the ledger remembers of an environment, for `kiln releases`, `kiln rollout list/show` and
`kiln events`: releases with what became of each, rollouts with their timed steps, events (and
following them as they come), two releases side by side, the traffic the agent sampled."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import cast

from kiln import views
from kiln.context import Context
from kiln.errors import NotFound
from kiln.ledger.db import now
from kiln.ledger.kinds import ActionState
from kiln.ledger.rollouts import Step

FOLLOW_EVERY = 0.5  # seconds between two reads of new events


def releases(ctx: Context, app: str, env: str, limit: int | None = None) -> list[views.ReleaseEntry]:
    """app/env's releases, newest first, each with what became of it (serving, served, aborted,
    rolling out, or recorded: never rolled out)."""
    rels = ctx.ledger.releases.of(app, env, limit)
    states = ctx.ledger.releases.states(app, env)
    return [views.ReleaseEntry.listed(r, cast(views.ReleaseState, states.get(r.number, "recorded"))) for r in rels]


def release(ctx: Context, app: str, env: str, number: int) -> views.ReleaseDetail:
    """Release `number` of app/env with its resolved config; NotFound when there is none."""
    return views.ReleaseDetail.full(ctx.ledger.releases.require(app, env, number))


def rollouts(ctx: Context, app: str, env: str, limit: int = 20) -> list[views.Rollout]:
    """app/env's rollouts, newest first."""
    return [views.Rollout.of(r) for r in ctx.ledger.rollouts.of(app, env, limit=limit)]


def rollout(ctx: Context, app: str, env: str, rollout_id: int | None = None) -> views.RolloutDetail:
    """One rollout of app/env (default: the latest) and its steps, each finished one with
    `seconds` since its start; NotFound when there is no such rollout."""
    found = ctx.ledger.rollouts.of(app, env, limit=1000)
    chosen = next((r for r in found if rollout_id is None or r.id == rollout_id), None)
    if chosen is None:
        raise NotFound(f"no rollout {rollout_id if rollout_id else ''} in {app}/{env}.".replace("  ", " "))
    return views.RolloutDetail(**views.Rollout.of(chosen).model_dump(),
                               steps=with_durations(ctx.ledger.rollouts.steps(chosen.id)))


def with_durations(steps: list[Step]) -> list[views.Step]:
    """Each finished step gets `seconds`, measured from its matching `started` record."""
    began: dict[tuple[str, str], datetime] = {}
    out = []
    for s in steps:
        key = (s.action, s.target)
        seconds = None
        if s.state == ActionState.STARTED:
            began[key] = s.at
        elif key in began:
            seconds = round((s.at - began.pop(key)).total_seconds(), 3)
        out.append(views.Step(action=s.action, target=s.target, state=s.state, detail=s.detail, at=s.at,
                              seconds=seconds))
    return out


def events(ctx: Context, app: str, env: str | None, limit: int = 50, follow: bool = False) -> Iterator[list[views.Event]]:
    """Batches of app's events (of one env, if given), oldest first: the newest `limit`, then,
    with `follow`, every FOLLOW_EVERY seconds those that came since (until the caller stops)."""
    batch = recent_events(ctx, app, env, limit)
    yield batch
    last = last_event_id(ctx, app, env, batch)
    while follow:
        time.sleep(FOLLOW_EVERY)
        batch = events_after(ctx, app, env, last)
        yield batch
        last = batch[-1].id if batch else last


def recent_events(ctx: Context, app: str, env: str | None, limit: int) -> list[views.Event]:
    """app's newest `limit` events (of one env, if given), oldest first."""
    return [views.Event.of(e) for e in ctx.ledger.events.of(app, env, limit=limit)] if limit else []


def last_event_id(ctx: Context, app: str, env: str | None, shown: list[views.Event]) -> int:
    """Where following starts after `shown`: its last event, or (nothing shown) the newest one."""
    if shown:
        return shown[-1].id
    newest = ctx.ledger.events.of(app, env, limit=1)
    return newest[-1].id if newest else 0


def events_after(ctx: Context, app: str, env: str | None, after: int) -> list[views.Event]:
    """app's events (of one env, if given) after event id `after`, oldest first: one step of
    following (`kiln events -F`, the API's event stream)."""
    return [views.Event.of(e) for e in ctx.ledger.events.of(app, env, after=after, limit=None)]


def release_diff(ctx: Context, app: str, env: str, a: int, b: int) -> views.ReleaseDiff:
    """Two releases of app/env side by side: their images, and their resolved configs key by key."""
    from kiln.spec.envdiff import diff

    ra, rb = ctx.ledger.releases.require(app, env, a), ctx.ledger.releases.require(app, env, b)
    return views.ReleaseDiff(a=views.Release.of(ra), b=views.Release.of(rb), image=views.ImagePair.of(ra.image, rb.image),
                             differences=[views.Difference(key=d.key, a=d.a, b=d.b)
                                          for d in diff(ra.config, rb.config, set())])


def samples(ctx: Context, app: str, env: str, minutes: int) -> list[views.Sample]:
    """The traffic per release the agent sampled into the ledger over the last `minutes`, oldest first."""
    return [views.Sample.of(s) for s in ctx.ledger.samples.of(app, env, now() - timedelta(minutes=minutes))]
