"""`kiln serve` (FastAPI): the control plane (server/api.py's API, server/dashboard.py's pages,
server/metrics.py's /metrics; tokens checked by server/auth.py) and the webhooks.

Webhooks: each push event that passes its
signature or token check, and whose delivery id was not seen before, queues a run of the pushed
ref and starts a detached runner. Answers: 202 queued (or ignored, for other events), 401 bad
signature or token, 409 a replay (a delivery id seen before; or a commit the ref already ran, or
one older than the ref's last run: GitHub's signature covers the body, not the delivery id, so a
captured push replayed under a new id is caught by its content), 400 a malformed request, 413 a body over
MAX_BODY: the size is checked before anything is authenticated, from Content-Length (nothing is
read) and by counting the streamed bytes (reading stops at the cap), so an unauthenticated sender
cannot make kiln hold more than MAX_BODY in memory."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from kiln import __version__
from kiln.access import READ
from kiln.ci.plan import queue_key
from kiln.ci.trigger import enqueue, spawn
from kiln.context import Context
from kiln.errors import KilnError, UsageError, WebhookRejected
from kiln.git import is_ancestor
from kiln.ledger.ci_store import CiStore
from kiln.server.plane import Plane
from kiln.server.webhooks import ZERO, parse, verify_github, verify_gitlab

MAX_BODY = 5 * 1024 * 1024  # bytes; GitHub's push payloads are far smaller


class _TooLarge(Exception):
    pass


async def _capped_body(request: Request, limit: int) -> bytes:
    """The raw body, or _TooLarge as soon as it is known to exceed `limit` bytes: from a
    Content-Length (before reading anything), else while streaming (never holding more)."""
    length = request.headers.get("content-length")
    if length is not None and (not length.strip().isdigit() or int(length) > limit):
        raise _TooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass(frozen=True)
class Config:
    """Each provider has its own secret, and only a provider with one is served (the other's
    endpoint is 404): a leaked GitLab token (sent in clear with every hook) cannot sign GitHub
    deliveries, and an endpoint nobody configured cannot be tried."""

    repo: str  # the repository runs check out from
    spec: str  # kiln.yaml's path in it
    github: str | None = None  # GitHub's HMAC-SHA256 key
    gitlab: str | None = None  # GitLab's X-Gitlab-Token

    def __post_init__(self) -> None:
        if not self.github and not self.gitlab:
            raise UsageError("no webhook provider is configured: give a GitHub secret, a GitLab token, or both.",
                             "Store one: `kiln secret set github-webhook` / `kiln secret set gitlab-token`.")
        if self.github and self.github == self.gitlab:
            raise UsageError("GitHub's secret and GitLab's token are the same value; give each provider its own.",
                             "A GitLab token travels in clear with every hook: it must not also sign GitHub's.")


def make_app(ctx: Context, config: Config | None, start_runner: bool = True, plane: Plane | None = None) -> FastAPI:
    """The app: webhooks when `config` is given, the control plane when `plane` is."""
    app = FastAPI(title="kiln", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url="/api/openapi.json" if plane else None)
    if config is not None:
        _webhooks(app, ctx, config, start_runner)
    if plane is not None:
        from kiln.server import api, dashboard
        from kiln.server.auth import Auth
        from kiln.server.metrics import exposition

        auth = Auth(ctx.ledger)

        @app.exception_handler(KilnError)
        async def kiln_error(request: Request, exc: KilnError) -> Response:
            if not request.url.path.startswith(("/api/", "/metrics")):
                return await dashboard.error_page(request, exc)
            return api.error_response(exc)

        api.install(app, plane, auth)

        @app.get("/metrics", include_in_schema=False)
        def metrics(request: Request) -> Response:
            auth.require(auth.caller(request), READ)
            return Response(exposition(plane), media_type=CONTENT_TYPE_LATEST)

        dashboard.install(app, plane, auth)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def _webhooks(app: FastAPI, ctx: Context, config: Config, start_runner: bool) -> None:
    store = CiStore(ctx.ledger)

    def _replayed(ref: str, commit: str) -> str | None:
        """Why a push of `commit` to `ref` is a replay, or None: the ref already ran that commit,
        or its last run is of a newer commit (one `commit` is an ancestor of)."""
        queue = queue_key(config.repo, ref)
        seen = store.run_of_commit(queue, commit)
        if seen is not None:
            return f"{ref} already ran {commit[:12]} (run {seen.id}); a replayed push starts nothing"
        latest = store.latest_run(queue)
        if latest is not None and is_ancestor(config.repo, commit, latest.commit):
            return (f"{commit[:12]} is older than {latest.commit[:12]}, which {ref} already ran (run {latest.id}); "
                    "kiln never goes back by a webhook (`kiln ci run --ref COMMIT` does, on purpose)")
        return None

    def accept(source: str, body: bytes, headers: dict[str, str]) -> JSONResponse:
        try:
            delivery, push = parse(source, body, headers)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        if not store.first_delivery(source, delivery):
            ctx.out.warn(f"{source} delivery {delivery} was seen before; refused")
            return JSONResponse({"error": f"delivery {delivery} was already received"}, status_code=409)
        if push is None or push.commit == ZERO:
            return JSONResponse({"status": "ignored"}, status_code=202)
        stale = _replayed(push.ref, push.commit)
        if stale:
            ctx.out.warn(f"{source} delivery {delivery} refused: {stale}")
            return JSONResponse({"error": stale}, status_code=409)
        run = enqueue(ctx, store, repo=config.repo, spec=config.spec, ref=push.ref, commit=push.commit,
                      trigger=source)
        store.link_delivery(source, delivery, run.id)
        if start_runner:
            spawn(ctx, run.id)
        return JSONResponse({"status": "queued", "run": run.id}, status_code=202)

    async def receive(source: str, request: Request) -> JSONResponse:
        try:
            body = await _capped_body(request, MAX_BODY)  # the raw bytes: the signature covers exactly these
        except _TooLarge:
            ctx.out.warn(f"{source} webhook from {request.client.host if request.client else '?'} refused: "
                         f"body over {MAX_BODY} bytes")
            return JSONResponse({"error": f"the body exceeds {MAX_BODY} bytes"}, status_code=413)
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            if source == "github" and config.github:
                verify_github(config.github, body, headers)
            elif source == "gitlab" and config.gitlab:
                verify_gitlab(config.gitlab, headers)
            else:  # not reached: the route exists only for a configured provider
                raise WebhookRejected(f"{source} webhooks are not enabled.")
        except WebhookRejected as exc:
            ctx.out.warn(f"{source} webhook from {request.client.host if request.client else '?'} refused: {exc}")
            return JSONResponse({"error": str(exc)}, status_code=401)
        return await run_in_threadpool(accept, source, body, headers)

    if config.github:
        @app.post("/hooks/github")
        async def github(request: Request) -> JSONResponse:
            return await receive("github", request)

    if config.gitlab:
        @app.post("/hooks/gitlab")
        async def gitlab(request: Request) -> JSONResponse:
            return await receive("gitlab", request)
