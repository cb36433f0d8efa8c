"""`kiln serve`'s webhooks router: POST /hooks/github and /hooks/gitlab, each served only when its
provider has a secret (another provider's path is 404). A request's signature (GitHub's
HMAC-SHA256 of the raw body) or token (GitLab's) is checked in constant time (server/webhooks.py),
then its push goes to the admission use case (usecases/pushes.py), the one the git hook path
uses too. Answers: 202 queued (or ignored, for other events and deleted refs), 401 a bad
signature or token, 400 a malformed request, 409 a replay (a delivery id seen before, a commit the
ref already ran, one older than the ref's last run), 413 a body over the Guard's cap (server/app.py)."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from kiln.context import Context
from kiln.errors import PushRefused, UsageError, WebhookRejected
from kiln.server.webhooks import parse, verify_github, verify_gitlab
from kiln.usecases import pushes

router = APIRouter(prefix="/hooks", include_in_schema=False)


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

    def secret(self, provider: str) -> str | None:
        return {"github": self.github, "gitlab": self.gitlab}.get(provider)


@dataclass(frozen=True)
class Hooks:
    """What the webhooks router needs (app.state.hooks)."""

    ctx: Context
    config: Config
    start_runner: bool = True  # False in tests: runs are queued, not run


def verify(provider: str, secret: str, body: bytes, headers: dict[str, str]) -> None:
    """WebhookRejected unless the request carries `provider`'s signature of `body` (or its token)."""
    if provider == "github":
        verify_github(secret, body, headers)
    else:
        verify_gitlab(secret, headers)


@router.post("/{provider}")
async def receive(provider: str, request: Request) -> JSONResponse:
    hooks: Hooks = request.app.state.hooks
    secret = hooks.config.secret(provider)
    if secret is None:
        raise HTTPException(404, "Not Found")
    body = await request.body()  # the raw bytes, which the signature covers; at most the Guard's cap
    headers = {k.lower(): v for k, v in request.headers.items()}
    try:
        verify(provider, secret, body, headers)
    except WebhookRejected as exc:
        hooks.ctx.out.warn(f"{provider} webhook from {request.client.host if request.client else '?'} refused: {exc}")
        return JSONResponse({"error": str(exc)}, status_code=401)
    try:
        delivery, push = parse(provider, body, headers)
        admitted = await run_in_threadpool(
            lambda: pushes.admit(hooks.ctx, repo=hooks.config.repo, spec=hooks.config.spec, source=provider,
                                 push=pushes.Pushed(push.ref, push.commit) if push else None, delivery=delivery,
                                 start_runner=hooks.start_runner))
    except ValueError as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    except PushRefused as exc:
        return JSONResponse({"error": exc.message}, status_code=409)
    except UsageError as exc:
        return JSONResponse({"error": exc.message}, status_code=400)
    return JSONResponse(admitted.to_json(), status_code=202)
