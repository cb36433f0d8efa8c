"""`kiln serve`'s HTTP API under /api/v1: what its routers (server/reads.py, server/actions.py,
server/tokens.py; server/app.py includes them) share, and the OpenAPI description
(/api/openapi.json, to a token that may read).

Every route answers a named type of kiln/views.py (its OpenAPI schema has that name), got from a
use case: the one the CLI calls where the CLI has the command, so both print the same JSON (reads
directly; actions through server/plane.py and usecases/actions.py, which records each as an
event naming the token). The shared dependencies: the Plane and the Auth (app.state), the
caller's token (`Who`: server/app.py's Guard found it, before the body was read, for every request
under /api/), and the rights a route needs (`reader`, `actor`, `admin`). Errors a user can cause
answer as JSON {"error", "hint"}: 400 a wrong request, 401 no or an unknown token, 403 a role
that may not, 404 no such thing, 409 the environment is busy, the rollout was aborted or a push
refused, 413 a body over the cap, 503 the engine, router or ledger failed."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from kiln.access import ACT, MANAGE, READ, Token
from kiln.errors import (
    EngineError,
    Forbidden,
    KilnError,
    LedgerError,
    LockHeld,
    LockLost,
    NotFound,
    PushRefused,
    RolloutError,
    RouterError,
    UsageError,
)
from kiln.server.auth import Auth, Caller
from kiln.server.plane import Plane

PREFIX = "/api/v1"


class BodyTooLarge(KilnError):
    """A request body over the cap of server/app.py's Guard (413)."""


def status_code(exc: KilnError) -> int:
    if isinstance(exc, Forbidden):
        return exc.status
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, BodyTooLarge):
        return 413
    if isinstance(exc, LockHeld | LockLost | RolloutError | PushRefused):
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


# --- dependencies ----------------------------------------------------------------------------------


def plane_of(request: Request) -> Plane:
    plane: Plane = request.app.state.plane
    return plane


def auth_of(request: Request) -> Auth:
    auth: Auth = request.app.state.auth
    return auth


async def caller(request: Request) -> Caller:
    """The request's token: server/app.py's Guard found it, before the body was read."""
    found: Caller = request.state.caller
    return found


ThePlane = Annotated[Plane, Depends(plane_of)]
TheAuth = Annotated[Auth, Depends(auth_of)]
Who = Annotated[Caller, Depends(caller)]


async def reader(who: Who, auth: TheAuth) -> Caller:
    """A caller whose token may read (every role)."""
    auth.require(who, READ)
    return who


async def admin(who: Who, auth: TheAuth, request: Request) -> Caller:
    """A caller whose token may manage tokens, with the session's CSRF token for a change."""
    auth.require(who, MANAGE)
    if request.method != "GET":
        auth.check_csrf(who, request.headers.get("x-csrf-token"))
    return who


def actor(auth: Auth, who: Caller, request: Request, env: str | None) -> Token:
    """The caller's token when it may act on `env` (None: anywhere a deployer may, e.g. a CI run),
    with the session's CSRF token."""
    token = auth.require(who, ACT, env)
    auth.check_csrf(who, request.headers.get("x-csrf-token"))
    return token


Reader = Annotated[Caller, Depends(reader)]
Admin = Annotated[Caller, Depends(admin)]


docs = APIRouter(include_in_schema=False)


@docs.get("/api/openapi.json")
def openapi(who: Reader, request: Request) -> JSONResponse:
    """The API's OpenAPI description: like every route but /health and the webhooks, it does not
    answer without a token."""
    return JSONResponse(request.app.openapi())
