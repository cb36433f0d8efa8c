"""The API's reads (a router under /api/v1, to any token): apps and environments, status,
releases, rollouts, the lock, traffic, events (also as Server-Sent Events) and CI runs. Each calls
the use case the CLI calls and answers its typed value (kiln/views.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from kiln import views
from kiln.server.api import Reader, ThePlane
from kiln.server.plane import Plane
from kiln.usecases import catalog, ci_runs, environments, history, locks, observe
from kiln.usecases.history import FOLLOW_EVERY

router = APIRouter()
KEEP_ALIVE = 30  # ticks of the event stream between two comments that keep the connection open

# --- apps, environments, status ----------------------------------------------------------------


@router.get("/apps", summary="Apps and their environments")
def apps(who: Reader, plane: ThePlane) -> list[views.App]:
    return catalog.listing(plane.ctx(), plane.specs())


@router.get("/apps/{app}/envs", summary="An app's environments with their release and URL")
def envs(app: str, who: Reader, plane: ThePlane) -> list[views.Environment]:
    plane.require_app(app)
    return environments.listing(plane.ctx(), app, plane.spec(app))


@router.get("/apps/{app}/envs/{env}/status", summary="Release, router, instances with health, node and release, agent")
def status(app: str, env: str, who: Reader, plane: ThePlane) -> views.Status:
    plane.require_env(app, env)
    return observe.status(plane.ctx(), plane.config(app, env))


@router.get("/apps/{app}/envs/{env}/releases", summary="Releases, newest first, with what became of each")
def releases(app: str, env: str, who: Reader, plane: ThePlane,
             limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[views.ReleaseEntry]:
    plane.require_env(app, env)
    return history.releases(plane.ctx(), app, env, limit)


@router.get("/apps/{app}/envs/{env}/releases/{a}/diff/{b}", summary="Two releases: image and config key by key")
def release_diff(app: str, env: str, a: int, b: int, who: Reader, plane: ThePlane) -> views.ReleaseDiff:
    return history.release_diff(plane.ctx(), app, env, a, b)


@router.get("/apps/{app}/envs/{env}/releases/{number}", summary="One release with its resolved config")
def release(app: str, env: str, number: int, who: Reader, plane: ThePlane) -> views.ReleaseDetail:
    return history.release(plane.ctx(), app, env, number)


@router.get("/apps/{app}/envs/{env}/rollouts", summary="Rollouts, newest first")
def rollouts(app: str, env: str, who: Reader, plane: ThePlane,
             limit: Annotated[int, Query(ge=1, le=1000)] = 20) -> list[views.Rollout]:
    plane.require_env(app, env)
    return history.rollouts(plane.ctx(), app, env, limit)


@router.get("/apps/{app}/envs/{env}/rollouts/{rollout_id}", summary="One rollout with its timed steps")
def rollout(app: str, env: str, rollout_id: int, who: Reader, plane: ThePlane) -> views.RolloutDetail:
    return history.rollout(plane.ctx(), app, env, rollout_id)


@router.get("/apps/{app}/envs/{env}/lock", summary="Who holds the environment's lock")
def lock(app: str, env: str, who: Reader, plane: ThePlane) -> views.LockStatus:
    plane.require_env(app, env)
    return locks.status(plane.ctx(), app, env)


@router.get("/apps/{app}/envs/{env}/traffic", summary="Requests/s, 5xx and response time per release")
def traffic(app: str, env: str, who: Reader, plane: ThePlane,
            minutes: Annotated[int, Query(ge=1, le=1440)] = 60) -> views.Traffic:
    plane.require_env(app, env)
    _, live = plane.traffic(plane.config(app, env))
    return views.Traffic(sampled=history.samples(plane.ctx(), app, env, minutes), live=live)


# --- events ------------------------------------------------------------------------------------


@router.get("/apps/{app}/events", summary="Events, oldest first")
def events(app: str, who: Reader, plane: ThePlane, env: str | None = None,
           limit: Annotated[int, Query(ge=1, le=10000)] = 50) -> list[views.Event]:
    plane.require_app(app)
    return history.recent_events(plane.ctx(), app, env, limit)


STREAMED = {200: {"description": "Server-Sent Events: `id: ID`, `event: KIND`, `data: EVENT` (an Event as JSON)",
                  "content": {"text/event-stream": {"schema": {"$ref": "#/components/schemas/Event"}}}}}


@router.get("/apps/{app}/events/stream", response_class=StreamingResponse, responses=STREAMED,  # type: ignore[arg-type]
            summary="Events as Server-Sent Events (the newest `limit`, then as they come)")
async def events_stream(app: str, request: Request, who: Reader, plane: ThePlane, env: str | None = None,
                        limit: Annotated[int, Query(ge=0, le=10000)] = 20) -> StreamingResponse:
    await run_in_threadpool(plane.require_app, app)
    first = await run_in_threadpool(lambda: history.recent_events(plane.ctx(), app, env, limit))
    return StreamingResponse(_stream(plane, request, app, env, first), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


async def _stream(plane: Plane, request: Request, app: str, env: str | None,
                  first: list[views.Event]) -> AsyncIterator[str]:
    """`first`, then every FOLLOW_EVERY seconds the events that came since, until the client leaves."""
    last = await run_in_threadpool(lambda: history.last_event_id(plane.ctx(), app, env, first))
    batch, ticks = first, 0
    while True:
        for e in batch:
            yield f"id: {e.id}\nevent: {e.kind}\ndata: {json.dumps(e.to_json())}\n\n"
            last = e.id
        if await request.is_disconnected():
            return
        ticks += 1
        if ticks % KEEP_ALIVE == 0:
            yield ": keep-alive\n\n"
        await asyncio.sleep(FOLLOW_EVERY)
        batch = await run_in_threadpool(_after, plane, app, env, last)


def _after(plane: Plane, app: str, env: str | None, last: int) -> list[views.Event]:
    return history.events_after(plane.ctx(), app, env, last)


# --- CI ----------------------------------------------------------------------------------------


@router.get("/ci/runs", summary="Pipeline runs, newest first")
def runs(who: Reader, plane: ThePlane, limit: Annotated[int, Query(ge=1, le=1000)] = 20) -> list[views.CiRun]:
    return ci_runs.runs(plane.ctx(), limit)


@router.get("/ci/runs/{run_id}", summary="One run with its steps")
def run(run_id: int, who: Reader, plane: ThePlane) -> views.CiRunDetail:
    return ci_runs.show(plane.ctx(), run_id)


@router.get("/ci/runs/{run_id}/logs", summary="A run's log, secrets masked: each line with its step")
def run_logs(run_id: int, who: Reader, plane: ThePlane) -> list[views.LogLine]:
    return ci_runs.log(plane.ctx(), run_id)
