"""`kiln serve`'s HTTP API under /api/v1 (OpenAPI at /api/openapi.json, to a viewer's token). Every read and action
calls the use case the CLI calls; every action names its token in an event (server/plane.py).
Errors a user can cause answer as JSON {"error", "hint"}: 400 a wrong request, 401 no or an unknown
token, 403 a role that may not, 404 no such thing, 409 the environment is busy or the rollout was
aborted, 413 a body over the cap, 503 the engine, router or ledger failed. The body cap and the
token are checked by server/app.py's Guard before a request's body is read."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from kiln import views
from kiln.access import ACT, MANAGE, READ, check_new, new_token
from kiln.errors import (
    EngineError,
    Forbidden,
    KilnError,
    LedgerError,
    LockHeld,
    LockLost,
    NotFound,
    RolloutError,
    RouterError,
    UsageError,
)
from kiln.server.auth import Auth, Caller
from kiln.server.plane import Plane, outcome_doc
from kiln.spec.models import strategy_of
from kiln.usecases import ci_runs, history, locks
from kiln.usecases.history import FOLLOW_EVERY
from kiln.usecases.observe import status as status_of
from kiln.views import Rollout


class BodyTooLarge(KilnError):
    """A request body over the cap of server/app.py's Guard (413)."""


def status_code(exc: KilnError) -> int:
    if isinstance(exc, Forbidden):
        return exc.status
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, BodyTooLarge):
        return 413
    if isinstance(exc, LockHeld | LockLost | RolloutError):
        return 409
    if isinstance(exc, UsageError):
        return 400
    if isinstance(exc, EngineError | RouterError | LedgerError):
        return 503
    return 500


def error_response(exc: KilnError) -> JSONResponse:
    code = status_code(exc)
    headers = {"WWW-Authenticate": "Bearer"} if code == 401 else None
    return JSONResponse({"error": exc.message, "hint": exc.hint}, status_code=code, headers=headers)


class DeployBody(BaseModel):
    image: str = Field(description="An image a release of the app recorded: id, registry reference or tag.")
    strategy: str | None = Field(None, description="rolling, blue-green or canary (default: the spec's).")


class RollbackBody(BaseModel):
    to: int | None = Field(None, description="Release number (default: the one that served before).")
    strategy: str | None = None


class PromoteBody(BaseModel):
    source: str = Field(alias="from", description="Environment whose running image is promoted.")
    to: str
    strategy: str | None = None


class TokenBody(BaseModel):
    name: str
    role: str
    envs: list[str] = []


def rollout_doc(r: Any) -> dict[str, Any]:
    return Rollout.of(r).to_json()


async def caller(request: Request) -> Caller:
    """The request's token (a FastAPI dependency): server/app.py's Guard found it, before the body
    was read, for every request under /api/."""
    found: Caller = request.state.caller
    return found


Who = Annotated[Caller, Depends(caller)]


def install(app: FastAPI, plane: Plane, auth: Auth) -> None:
    api = APIRouter(prefix="/api/v1")

    def reader(who: Caller) -> Any:
        auth.require(who, READ)
        return plane.ctx()

    # --- apps, environments, status --------------------------------------------------------------

    @api.get("/apps", summary="Apps and their environments")
    def apps(who: Who) -> list[dict[str, Any]]:
        reader(who)
        return [{"app": a, "environments": plane.envs(a), "spec": plane.spec(a) is not None} for a in plane.apps()]

    @api.get("/apps/{app}/envs", summary="An app's environments with their release and URL")
    def envs(app: str, who: Who) -> list[dict[str, Any]]:
        ctx = reader(who)
        out = []
        for env in plane.envs(app):
            cfg = plane.config(app, env)
            release = ctx.ledger.releases.current(app, env)
            made = ctx.ledger.environments.get(app, env)
            out.append({"env": env, "kind": made.kind if made else "declared", "url": cfg.url,
                        "engine": cfg.engine, "release": release.number if release else None,
                        "image": release.image if release else None})
        return out

    @api.get("/apps/{app}/envs/{env}/status", summary="Release, router, instances with health, node and release, agent")
    def status(app: str, env: str, who: Who) -> dict[str, Any]:
        ctx = reader(who)
        plane.require_env(app, env)
        return status_of(ctx, plane.config(app, env)).to_json()

    @api.get("/apps/{app}/envs/{env}/releases", summary="Releases, newest first, with what became of each")
    def releases(app: str, env: str, who: Who, limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[dict[str, Any]]:
        ctx = reader(who)
        plane.require_env(app, env)
        return [r.to_json() for r in history.releases(ctx, app, env, limit)]

    @api.get("/apps/{app}/envs/{env}/releases/{a}/diff/{b}", summary="Two releases: image and config key by key")
    def release_diff(app: str, env: str, a: int, b: int, who: Who) -> dict[str, Any]:
        return history.release_diff(reader(who), app, env, a, b).to_json()

    @api.get("/apps/{app}/envs/{env}/releases/{number}", summary="One release with its resolved config")
    def release(app: str, env: str, number: int, who: Who) -> dict[str, Any]:
        return history.release(reader(who), app, env, number).to_json()

    @api.get("/apps/{app}/envs/{env}/rollouts", summary="Rollouts, newest first")
    def rollouts(app: str, env: str, who: Who, limit: Annotated[int, Query(ge=1, le=1000)] = 20) -> list[dict[str, Any]]:
        ctx = reader(who)
        plane.require_env(app, env)
        return [r.to_json() for r in history.rollouts(ctx, app, env, limit)]

    @api.get("/apps/{app}/envs/{env}/rollouts/{rollout_id}", summary="One rollout with its timed steps")
    def rollout(app: str, env: str, rollout_id: int, who: Who) -> dict[str, Any]:
        return history.rollout(reader(who), app, env, rollout_id).to_json()

    @api.get("/apps/{app}/envs/{env}/lock", summary="Who holds the environment's lock")
    def lock(app: str, env: str, who: Who) -> dict[str, Any]:
        ctx = reader(who)
        plane.require_env(app, env)
        return locks.status(ctx, app, env).to_json()

    @api.get("/apps/{app}/envs/{env}/traffic", summary="Requests/s, 5xx and response time per release")
    def traffic(app: str, env: str, who: Who, minutes: Annotated[int, Query(ge=1, le=1440)] = 60) -> dict[str, Any]:
        ctx = reader(who)
        plane.require_env(app, env)
        cfg = plane.config(app, env)
        live = plane.traffic(cfg, plane.router_servers(cfg))
        return {"sampled": [s.to_json() for s in history.samples(ctx, app, env, minutes)],
                "live": [views.Sample.of(s).to_json() for s in live]}

    # --- events ----------------------------------------------------------------------------------

    @api.get("/apps/{app}/events", summary="Events, oldest first")
    def events(app: str, who: Who, env: str | None = None,
               limit: Annotated[int, Query(ge=1, le=10000)] = 50) -> list[dict[str, Any]]:
        ctx = reader(who)
        plane.require_app(app)
        return [e.to_json() for e in history.recent_events(ctx, app, env, limit)]

    @api.get("/apps/{app}/events/stream", summary="Events as Server-Sent Events (the newest `limit`, then as they come)",
             response_class=StreamingResponse)
    async def events_stream(app: str, request: Request, who: Who, env: str | None = None,
                            limit: Annotated[int, Query(ge=0, le=10000)] = 20) -> StreamingResponse:
        ctx = await run_in_threadpool(reader, who)
        await run_in_threadpool(plane.require_app, app)
        first = await run_in_threadpool(history.recent_events, ctx, app, env, limit)

        async def stream() -> AsyncIterator[str]:
            last = await run_in_threadpool(history.last_event_id, ctx, app, env, first)
            batch = first
            ticks = 0
            while True:
                for e in batch:
                    yield f"id: {e.id}\nevent: {e.kind}\ndata: {json.dumps(e.to_json())}\n\n"
                    last = e.id
                if await request.is_disconnected():
                    return
                ticks += 1
                if ticks % 30 == 0:
                    yield ": keep-alive\n\n"
                await asyncio.sleep(FOLLOW_EVERY)
                batch = await run_in_threadpool(history.events_after, ctx, app, env, last)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    # --- CI ---------------------------------------------------------------------------------------

    @api.get("/ci/runs", summary="Pipeline runs, newest first")
    def runs(who: Who, limit: Annotated[int, Query(ge=1, le=1000)] = 20) -> list[dict[str, Any]]:
        return [r.to_json() for r in ci_runs.runs(reader(who), limit)]

    @api.get("/ci/runs/{run_id}", summary="One run with its steps")
    def run(run_id: int, who: Who) -> dict[str, Any]:
        return ci_runs.show(reader(who), run_id).to_json()

    @api.get("/ci/runs/{run_id}/logs", summary="A run's log, secrets masked: [step, line]")
    def run_logs(run_id: int, who: Who) -> list[dict[str, str]]:
        ctx = reader(who)
        return [line.to_json() for line in ci_runs.log(ctx, run_id)]

    # --- actions ------------------------------------------------------------------------------------

    def actor(who: Caller, request: Request, env: str | None) -> Any:
        token = auth.require(who, ACT, env)
        auth.check_csrf(who, request.headers.get("x-csrf-token"))
        return token

    @api.post("/apps/{app}/envs/{env}/deploy", summary="Deploy an image already baked (no bake)")
    def deploy(app: str, env: str, body: DeployBody, who: Who, request: Request) -> dict[str, Any]:
        outcome, said = plane.deploy(actor(who, request, env), app, env, body.image, strategy_of(body.strategy))
        return {**outcome_doc(outcome), "said": said}

    @api.post("/apps/{app}/envs/{env}/rollback", summary="Put an earlier release back in service")
    def rollback(app: str, env: str, body: RollbackBody, who: Who, request: Request) -> dict[str, Any]:
        outcome, said = plane.rollback(actor(who, request, env), app, env, body.to, strategy_of(body.strategy))
        return {**outcome_doc(outcome), "said": said}

    @api.post("/apps/{app}/envs/{env}/promote", summary="Switch traffic to the blue-green release waiting for promotion")
    def promote(app: str, env: str, who: Who, request: Request) -> dict[str, Any]:
        outcome, said = plane.promote(actor(who, request, env), app, env)
        return {**outcome_doc(outcome), "said": said}

    @api.post("/apps/{app}/promote", summary="Promote the image one environment runs to another")
    def promote_artifact(app: str, body: PromoteBody, who: Who, request: Request) -> dict[str, Any]:
        outcome, said = plane.promote_artifact(actor(who, request, body.to), app, body.source, body.to,
                                               strategy_of(body.strategy))
        return {**outcome_doc(outcome), "said": said}

    @api.post("/apps/{app}/envs/{env}/rollouts/abort", summary="Abort the unfinished rollout")
    def abort(app: str, env: str, who: Who, request: Request) -> dict[str, Any]:
        r, said = plane.abort(actor(who, request, env), app, env)
        return {**rollout_doc(r), "said": said}

    @api.post("/ci/runs/{run_id}/approve", summary="Let a run's waiting promotion go ahead")
    def approve(run_id: int, who: Who, request: Request) -> dict[str, Any]:
        _, said = plane.ci(actor(who, request, None), run_id, "approve")
        return {"run": ci_runs.run(plane.ctx(), run_id).to_json(), "said": said}

    @api.post("/ci/runs/{run_id}/cancel", summary="Cancel a queued or running run")
    def cancel(run_id: int, who: Who, request: Request) -> dict[str, Any]:
        _, said = plane.ci(actor(who, request, None), run_id, "cancel")
        return {"run": ci_runs.run(plane.ctx(), run_id).to_json(), "said": said}

    # --- tokens (admins) ------------------------------------------------------------------------------

    @api.get("/tokens", summary="API tokens (never their values)")
    def tokens(who: Who) -> list[dict[str, Any]]:
        auth.require(who, MANAGE)
        return [views.Token.of(t).to_json() for t in plane.ctx().ledger.tokens.all()]

    @api.post("/tokens", summary="Make a token; its value is shown once")
    def token_create(body: TokenBody, who: Who, request: Request) -> dict[str, Any]:
        auth.require(who, MANAGE)
        auth.check_csrf(who, request.headers.get("x-csrf-token"))
        check_new(body.name, body.role, tuple(body.envs))
        value = new_token()
        made = plane.ctx().ledger.tokens.create(body.name, body.role, tuple(body.envs), value)
        return {**views.Token.of(made).to_json(), "token": value}

    @api.delete("/tokens/{name}", summary="Revoke a token")
    def token_revoke(name: str, who: Who, request: Request) -> dict[str, Any]:
        auth.require(who, MANAGE)
        auth.check_csrf(who, request.headers.get("x-csrf-token"))
        if not plane.ctx().ledger.tokens.revoke(name):
            raise NotFound(f"there is no token {name!r}.")
        return {"revoked": name}

    app.include_router(api)

    @app.get("/api/openapi.json", include_in_schema=False)
    def openapi(who: Who) -> JSONResponse:
        """The API's OpenAPI description, to a token that may read: like every route but /health
        and the webhooks, it does not answer without one."""
        auth.require(who, READ)
        return JSONResponse(app.openapi())
