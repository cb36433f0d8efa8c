"""What the ledger remembers of an environment, for `kiln releases`, `kiln rollout list/show` and
`kiln events`: releases with what became of each, rollouts with their timed steps, events (and
following them as they come)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kiln.context import Context
from kiln.errors import NotFound
from kiln.ledger.releases import Release
from kiln.ledger.rollouts import Rollout

FOLLOW_EVERY = 0.5  # seconds between two reads of new events


@dataclass(frozen=True)
class ReleaseState:
    release: Release
    state: str  # serving, served, aborted, rolling out, recorded (never rolled out)


def releases(ctx: Context, app: str, env: str, limit: int | None = None) -> list[ReleaseState]:
    """app/env's releases, newest first, each with what became of it."""
    rels = ctx.ledger.releases.of(app, env, limit)
    states = ctx.ledger.releases.states(app, env)
    return [ReleaseState(r, states.get(r.number, "recorded")) for r in rels]


def rollouts(ctx: Context, app: str, env: str, limit: int = 20) -> list[Rollout]:
    """app/env's rollouts, newest first."""
    return ctx.ledger.rollouts.of(app, env, limit=limit)


def rollout(ctx: Context, app: str, env: str, rollout_id: int | None = None) -> tuple[Rollout, list[dict[str, Any]]]:
    """One rollout of app/env (default: the latest) and its steps, each finished one with
    `seconds` since its start; UsageError when there is no such rollout."""
    found = ctx.ledger.rollouts.of(app, env, limit=1000)
    chosen = next((r for r in found if rollout_id is None or r.id == rollout_id), None)
    if chosen is None:
        raise NotFound(f"no rollout {rollout_id if rollout_id else ''} in {app}/{env}.".replace("  ", " "))
    return chosen, with_durations(ctx.ledger.rollouts.steps(chosen.id))


def with_durations(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each finished step gets `seconds`, measured from its matching `started` record."""
    began: dict[tuple[str, str], datetime] = {}
    out = []
    for s in steps:
        at = datetime.fromisoformat(s["at"].rstrip("Z"))
        key = (s["action"], s["target"])
        seconds = None
        if s["state"] == "started":
            began[key] = at
        elif key in began:
            seconds = round((at - began.pop(key)).total_seconds(), 3)
        out.append({**s, "seconds": seconds})
    return out


def events(ctx: Context, app: str, env: str | None, limit: int = 50, follow: bool = False) -> Iterator[list[dict[str, Any]]]:
    """Batches of app's events (of one env, if given), oldest first: the newest `limit`, then,
    with `follow`, every FOLLOW_EVERY seconds those that came since (until the caller stops)."""
    batch = ctx.ledger.events.of(app, env, limit=limit)
    yield batch
    newest = batch or ctx.ledger.events.of(app, env, limit=1)  # -n 0: follow from now
    last = newest[-1]["id"] if newest else 0
    while follow:
        time.sleep(FOLLOW_EVERY)
        batch = events_after(ctx, app, env, last)
        yield batch
        last = batch[-1]["id"] if batch else last


def events_after(ctx: Context, app: str, env: str | None, after: int) -> list[dict[str, Any]]:
    """app's events (of one env, if given) after event id `after`, oldest first: one step of
    following (`kiln events -F`, the API's event stream)."""
    return ctx.ledger.events.of(app, env, after=after, limit=None)


def release_diff(ctx: Context, app: str, env: str, a: int, b: int) -> dict[str, Any]:
    """Two releases of app/env side by side: their images, and their resolved configs key by key."""
    from kiln.spec.envdiff import diff

    ra, rb = ctx.ledger.releases.require(app, env, a), ctx.ledger.releases.require(app, env, b)
    return {"a": ra.summary(), "b": rb.summary(),
            "image": {"a": ra.image, "b": rb.image, "same": ra.image == rb.image},
            "differences": [{k: v for k, v in d.summary().items() if k != "declared"}
                            for d in diff(ra.config, rb.config, set())]}
