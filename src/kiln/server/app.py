"""`kiln serve` (FastAPI): `make_app` puts what its routers share in app.state (the Auth, the
Plane, the webhooks' settings) and includes the routers, each a module-level APIRouter: the
webhooks (server/hooks.py); for the control plane, the API's (server/reads.py, actions.py,
tokens.py, with server/api.py's dependencies and OpenAPI route), /metrics (server/metrics.py)
and the dashboard (server/dashboard.py); and /health. Tokens and sessions are checked by
server/auth.py; every route reaches kiln through a use case.

Every request first meets the Guard, a plain ASGI middleware (it buffers nothing of the body):

- One body cap, MAX_BODY, for every route (the API, the dashboard's forms, the webhooks). A
  Content-Length over it (or not a number) is 413 before a byte is read; a body without one
  (chunked), or longer than it said, is counted as the route reads it, and the first chunk past
  the cap ends the reading with 413. So no request makes kiln hold more than MAX_BODY (and one
  chunk) of body, whoever sends it.
- An /api/ request is authenticated before it is routed: without a valid token it is 401 and its
  body is never read, let alone parsed (FastAPI parses a route's JSON body before the route's
  dependencies run). The Caller found is kept in the request's state, where the API's `caller`
  dependency takes it: one token lookup per request.

A KilnError a route raises answers as its route's kind of answer: JSON {"error", "hint"} under
/api/, /metrics and /hooks/, the dashboard's error page (or its sign-in, for a 401) elsewhere."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kiln import __version__
from kiln.context import Context
from kiln.errors import KilnError
from kiln.server import actions, api, dashboard, hooks, metrics, reads, tokens
from kiln.server.api import BodyTooLarge
from kiln.server.auth import Auth
from kiln.server.hooks import Config
from kiln.server.plane import Plane

MAX_BODY = 5 * 1024 * 1024  # bytes; a push event, a deploy's JSON or a form needs far less

Refuse = Callable[[Request, KilnError], Awaitable[Response]]  # a refusal as its route's kind of answer


class _ReadPastCap(Exception):
    """Raised into the route that reads past the cap, once the Guard has answered 413 itself: the
    route stops, and whatever it answers to the failed read is dropped."""


class Guard:
    """The body cap and /api/'s authentication, before any route runs (see the module's doc)."""

    def __init__(self, app: ASGIApp, refuse: Refuse, auth: Auth | None, warn: Callable[[str], None],
                 limit: int = MAX_BODY) -> None:
        self.app = app
        self.refuse = refuse
        self.auth = auth  # None: no control plane (webhooks only), nothing under /api/
        self.warn = warn
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)  # headers only: without `receive` it cannot read the body
        declared = self._declared_too_large(request)
        if declared is not None:
            await self._answer(request, declared, send)
            return
        if self.auth is not None and request.url.path.startswith("/api/"):
            try:
                request.state.caller = await run_in_threadpool(self.auth.caller, request)  # the ledger is sync
            except KilnError as exc:  # 401; or 503 when the ledger failed
                await self._answer(request, exc, send)
                return
        await self._capped(request, receive, send)

    def _declared_too_large(self, request: Request) -> BodyTooLarge | None:
        """The refusal of a Content-Length over the cap or not a number; None when there is none."""
        for value in request.headers.getlist("content-length"):
            if not value.strip().isdigit():
                return self._too_large(request, f"Content-Length {value[:20]!r} is not a number of bytes "
                                                f"(kiln serve accepts a body of at most {self.limit} bytes)")
            if int(value) > self.limit:
                return self._too_large(request)
        return None

    def _too_large(self, request: Request, message: str | None = None) -> BodyTooLarge:
        client = request.client.host if request.client else "?"
        self.warn(f"{request.method} {request.url.path} from {client} refused: body over {self.limit} bytes")
        return BodyTooLarge(message or f"the request body is larger than the {self.limit} bytes kiln serve accepts")

    async def _answer(self, request: Request, exc: KilnError, send: Send) -> None:
        response = await self.refuse(request, exc)
        await response(request.scope, request.receive, send)

    async def _capped(self, request: Request, receive: Receive, send: Send) -> None:
        """Run the route, counting the body's bytes as it reads them. Past the cap the Guard
        answers 413 (unless the route has begun its answer) and the read raises _ReadPastCap;
        FastAPI turns an error while it parses a body into its own 400, which is dropped then."""
        size = 0
        started = answered = False

        async def counted() -> Message:
            nonlocal size, answered
            message = await receive()
            size += len(message.get("body", b""))
            if size > self.limit:
                if not started and not answered:
                    answered = True
                    await self._answer(request, self._too_large(request), send)
                raise _ReadPastCap
            return message

        async def sent(message: Message) -> None:
            nonlocal started
            if answered:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(request.scope, counted, sent)
        except _ReadPastCap:
            pass  # answered above (or, had the route begun its answer, the connection ends unfinished)


def make_app(ctx: Context, config: Config | None, start_runner: bool = True, plane: Plane | None = None) -> FastAPI:
    """The app: the webhooks router when `config` is given; the control plane (the API's routers,
    /metrics and the dashboard) when `plane` is. What the routers share is in app.state."""
    app = FastAPI(title="kiln", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url=None)  # server/api.py serves the description, to a token
    auth = Auth(ctx)
    app.state.auth = auth
    app.add_middleware(Guard, refuse=_refusal(with_dashboard=plane is not None),
                       auth=auth if plane is not None else None, warn=ctx.out.warn)
    if config is not None:
        app.state.hooks = hooks.Hooks(ctx, config, start_runner)
        app.include_router(hooks.router)
    if plane is not None:
        app.state.plane = plane
        app.exception_handler(KilnError)(_refusal(with_dashboard=True))
        for router in (reads.router, actions.router, tokens.router):  # the API, under /api/v1
            app.include_router(router, prefix=api.PREFIX)
        app.include_router(api.docs)  # its OpenAPI description
        app.include_router(metrics.router)
        dashboard.install(app)
    app.include_router(health)
    return app


health = APIRouter(include_in_schema=False)


@health.get("/health")
async def alive() -> dict[str, str]:
    return {"status": "ok"}


def _refusal(with_dashboard: bool) -> Refuse:
    async def refuse(request: Request, exc: KilnError) -> Response:
        """A KilnError as its route's kind of answer: JSON {"error", "hint"} for the API, /metrics
        and the webhooks; the dashboard's error page (or its sign-in, for a 401) for its pages."""
        if with_dashboard and not request.url.path.startswith(("/api/", "/metrics", "/hooks/")):
            return await dashboard.error_page(request, exc)
        return api.error_response(exc)

    return refuse
