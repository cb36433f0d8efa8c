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
from kiln.errors import UsageError
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
        raise UsageError(f"no rollout {rollout_id if rollout_id else ''} in {app}/{env}.".replace("  ", " "))
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
        batch = ctx.ledger.events.of(app, env, after=last, limit=None)
        yield batch
        last = batch[-1]["id"] if batch else last
