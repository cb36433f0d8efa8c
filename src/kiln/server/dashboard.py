"""The dashboard at / (a router): server-rendered pages (Jinja2, templates/), a few lines of
vanilla JavaScript (static/kiln.js: refresh a fragment every second, confirm before an action)
and server-side SVG charts. Its pages render the values the use cases return (kiln/views.py),
the ones the API answers: the overview and the live rollout view come from usecases/observe.py,
which computes their figures; only the charts' drawing is the dashboard's own.

Signing in with a token (POST /login) is refused (403, before the form is read) unless its Origin,
or without one its Referer, is this server's own; it opens a session (server/auth.py) whose random
id the HttpOnly, SameSite=Strict cookie holds, never the token. Signing out ends the session on
the server. Every form that changes something carries the session's CSRF token and is read only
once its sender is known. The actions are the API's (server/plane.py, then usecases/actions.py),
so they take the environment's lock and are recorded with the token's name."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool

from kiln import views
from kiln.access import ACT, READ, Token, allows
from kiln.errors import Forbidden, KilnError, UsageError
from kiln.providers.base import short_image
from kiln.server.api import TheAuth, ThePlane
from kiln.server.auth import COOKIE, SESSION_SECONDS, Auth, Caller
from kiln.server.plane import Plane
from kiln.server.svg import line_chart
from kiln.spec.models import strategy_of
from kiln.usecases import ci_runs, history, observe

HERE = Path(__file__).parent
PLOT_MINUTES = observe.PLOT_MINUTES
DEFAULT_PORTS = {"http": 80, "https": 443}
_jinja = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]))
_jinja.filters["short"] = lambda image: short_image(image) if image else "-"
_jinja.filters["stamp"] = lambda at: f"{at:%Y-%m-%d %H:%M:%S}"  # the ledger's UTC
_jinja.filters["clock"] = lambda at: f"{at:%H:%M:%S}"


def render(name: str, request: Request, status: int = 200, **values: Any) -> HTMLResponse:
    html = _jinja.get_template(name).render(request=request, **values)
    return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store",
                                                           "X-Frame-Options": "DENY",
                                                           "Referrer-Policy": "same-origin"})


async def error_page(request: Request, exc: KilnError) -> Response:
    from kiln.server.api import status_code

    code = status_code(exc)
    if code == 401 and request.method == "GET":
        return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)
    return render("error.html", request, status=code, code=code, message=exc.message, hint=exc.hint, who=None)


def same_origin(request: Request) -> bool:
    """Whether a request comes from a page of this server: its Origin header, or without one its
    Referer's origin, is the server's own scheme://host[:port] (the host as the browser named it
    in Host). A browser sends Origin with every form POST, and another site's page cannot make it
    name this server; an Origin of "null" (a sandboxed or privacy-hiding page) is refused too."""
    sent = request.headers.get("origin")
    if sent is None:
        sent = request.headers.get("referer")
    own = _origin(f"{request.url.scheme}://{request.url.netloc}")
    return sent is not None and own is not None and _origin(sent) == own


def _origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) URL, its port spelled out; None for anything else."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a port that is not a number
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return parts.scheme, parts.hostname, port or DEFAULT_PORTS[parts.scheme]


def _local(path: str) -> str:
    """`path` when it stays on this server (a sign-in's `next`), else "/". A backslash is refused
    anywhere: browsers read `/\\evil.example` as `//evil.example`, another site."""
    return path if path.startswith("/") and not path.startswith("//") and "\\" not in path else "/"


def charts(samples: list[views.Sample], end_at: datetime) -> dict[str, str]:
    """Requests/s, 5xx % and response time per release over the last PLOT_MINUTES, as SVG (the
    time axis starts at the first sample of the hour, so that a young history is not a sliver)."""
    end = end_at.timestamp()
    start = end - PLOT_MINUTES * 60
    if samples:
        start = max(start, min(s.at.timestamp() for s in samples) - 30)
    rps: dict[str, list[tuple[float, float]]] = {}
    err: dict[str, list[tuple[float, float]]] = {}
    ms: dict[str, list[tuple[float, float]]] = {}
    for s in samples:
        label, t = f"v{s.release}", s.at.timestamp()
        rps.setdefault(label, []).append((t, s.rps))
        err.setdefault(label, []).append((t, 100 * s.error_rate))
        if s.requests:
            ms.setdefault(label, []).append((t, s.response_ms))
    return {"rps": line_chart("requests", "per s", rps, start, end),
            "errors": line_chart("5xx", "%", err, start, end),
            "latency": line_chart("response time", "ms", ms, start, end)}


router = APIRouter(include_in_schema=False)


def install(app: FastAPI) -> None:
    """The dashboard's pages and forms, and its static files."""
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.include_router(router)


def viewer(request: Request, auth: TheAuth) -> Caller:
    """The signed-in (or bearer) caller, whose token may read; a 401 takes a GET to the sign-in."""
    who = auth.caller(request)
    auth.require(who, READ)
    return who


Viewer = Annotated[Caller, Depends(viewer)]


def page(name: str, request: Request, who: Caller, **values: Any) -> HTMLResponse:
    """A page for a signed-in caller: its token, its session's CSRF token, the apps (the menu)."""
    auth: Auth = request.app.state.auth
    plane: Plane = request.app.state.plane
    return render(name, request, who=who.token, csrf=auth.csrf(who), apps=plane.apps(),
                  said=request.query_params.get("said"), **values)


# --- signing in ------------------------------------------------------------------------------------


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str = "/") -> HTMLResponse:
    return render("login.html", request, next=_local(next), who=None, problem=None)


@router.post("/login")
async def login(request: Request, auth: TheAuth) -> Response:
    if not same_origin(request):  # checked before the form is read: another site's sign-in ends here
        return render("login.html", request, status=403, next="/", who=None,
                      problem="Refused: this sign-in did not come from the sign-in page of this server "
                              "(its Origin, or Referer, names another site or is missing).")
    form = await request.form()
    target = _local(str(form.get("next", "/")))
    session = await run_in_threadpool(auth.sign_in, str(form.get("token", "")).strip())
    if session is None:
        return render("login.html", request, status=401, next=target, who=None,
                      problem="That token is not valid (unknown or revoked).")
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(COOKIE, session, httponly=True, samesite="strict", path="/",
                        secure=request.url.scheme == "https", max_age=SESSION_SECONDS)
    return response


@router.post("/logout")
async def logout(request: Request, auth: TheAuth) -> Response:
    who, _ = await submitted(request)
    if who.session is not None:
        auth.end_session(who.session)  # on the server: a copy of the cookie no longer works either
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


# --- pages -------------------------------------------------------------------------------------------


@router.get("/", response_class=HTMLResponse)
def overview(request: Request, who: Viewer, plane: ThePlane) -> HTMLResponse:
    return page("overview.html", request, who, rows=observe.overviews(plane.ctx(), plane.specs()))


@router.get("/apps/{app_name}/envs/{env}", response_class=HTMLResponse)
def env_page(app_name: str, env: str, request: Request, who: Viewer, plane: ThePlane,
             a: int | None = None, b: int | None = None) -> HTMLResponse:
    ctx = plane.ctx()
    plane.require_env(app_name, env)
    rels = history.releases(ctx, app_name, env, 30)
    diff = history.release_diff(ctx, app_name, env, a, b) if a and b else None
    loaded = plane.spec(app_name)
    others = [e for e in (loaded.spec.environments if loaded else ()) if e != env]
    return page("env.html", request, who, app=app_name, env=env, releases=rels, diff=diff, a=a, b=b,
                others=others, **_live(plane, app_name, env), can_act=_can(who, env), has_spec=loaded is not None,
                images=_images(rels))


@router.get("/apps/{app_name}/envs/{env}/live", response_class=HTMLResponse)
def live_fragment(app_name: str, env: str, request: Request, who: Viewer, plane: ThePlane) -> HTMLResponse:
    plane.require_env(app_name, env)
    return page("live.html", request, who, app=app_name, env=env, can_act=_can(who, env), **_live(plane, app_name, env))


@router.get("/apps/{app_name}/events", response_class=HTMLResponse)
def events_page(app_name: str, request: Request, who: Viewer, plane: ThePlane, env: str | None = None,
                fragment: bool = False) -> HTMLResponse:
    plane.require_app(app_name)
    return page("events_table.html" if fragment else "events.html", request, who, app=app_name, env=env,
                events=list(reversed(history.recent_events(plane.ctx(), app_name, env, 200))))


@router.get("/ci", response_class=HTMLResponse)
def ci_page(request: Request, who: Viewer, plane: ThePlane) -> HTMLResponse:
    return page("ci.html", request, who, runs=ci_runs.runs(plane.ctx(), 50), run=None, can_act=_can(who, None))


@router.get("/ci/{run_id}", response_class=HTMLResponse)
def ci_run_page(run_id: int, request: Request, who: Viewer, plane: ThePlane) -> HTMLResponse:
    ctx = plane.ctx()
    found = ci_runs.show(ctx, run_id)
    return page("ci.html", request, who, runs=None, run=found, steps=found.steps, lines=ci_runs.log(ctx, run_id),
                can_act=_can(who, None))


# --- actions (forms) ---------------------------------------------------------------------------------

Action = Callable[[Token, dict[str, str]], "views.ActionOutcome | views.AbortOutcome | views.CiAction"]


async def submitted(request: Request) -> tuple[Caller, dict[str, str]]:
    """Who posted a form and, read only once they are known, its fields; Forbidden(401) without
    a sign-in, Forbidden(403) without the page's CSRF token."""
    auth: Auth = request.app.state.auth
    who = await run_in_threadpool(auth.caller, request)
    form = {k: str(v) for k, v in (await request.form()).items()}
    auth.check_csrf(who, form.get("csrf"))
    return who, form


async def act(request: Request, who: Caller, form: dict[str, str], env: str | None, back: str, do: Action) -> Response:
    """Run `do` (an action of server/plane.py) for a token allowed to act on `env`; back to
    `back`, saying how it went."""
    token = request.app.state.auth.require(who, ACT, env)
    try:
        done = await run_in_threadpool(do, token, form)
        message = done.said[-1] if done.said else "done"
    except KilnError as exc:
        if isinstance(exc, Forbidden):
            raise
        message = f"failed: {exc.message}"
    return RedirectResponse(f"{back}?said={quote(message)}", status_code=303)


async def form_action(request: Request, env: str | None, back: str, do: Action) -> Response:
    who, form = await submitted(request)
    return await act(request, who, form, env, back, do)


def _int(form: dict[str, str], key: str) -> int | None:
    value = form.get(key, "").strip().lstrip("v")
    if not value:
        return None
    if not value.isdigit():
        raise UsageError(f"{key} must be a release number, not {value!r}.")
    return int(value)


def _strategy(form: dict[str, str]) -> str | None:
    return strategy_of(form.get("strategy") or None)


@router.post("/apps/{app_name}/envs/{env}/rollback")
async def rollback_form(app_name: str, env: str, request: Request, plane: ThePlane) -> Response:
    return await form_action(request, env, f"/apps/{app_name}/envs/{env}",
                             lambda t, f: plane.rollback(t, app_name, env, _int(f, "to"), _strategy(f)))


@router.post("/apps/{app_name}/envs/{env}/deploy")
async def deploy_form(app_name: str, env: str, request: Request, plane: ThePlane) -> Response:
    return await form_action(request, env, f"/apps/{app_name}/envs/{env}",
                             lambda t, f: plane.deploy(t, app_name, env, f.get("image", ""), _strategy(f)))


@router.post("/apps/{app_name}/envs/{env}/promote")
async def promote_form(app_name: str, env: str, request: Request, plane: ThePlane) -> Response:
    return await form_action(request, env, f"/apps/{app_name}/envs/{env}", lambda t, f: plane.promote(t, app_name, env))


@router.post("/apps/{app_name}/envs/{env}/promote-to")
async def promote_to_form(app_name: str, env: str, request: Request, plane: ThePlane) -> Response:
    who, form = await submitted(request)
    target = form.get("to", "")
    return await act(request, who, form, target, f"/apps/{app_name}/envs/{target}",
                     lambda t, f: plane.promote_artifact(t, app_name, env, target, _strategy(f)))


@router.post("/apps/{app_name}/envs/{env}/abort")
async def abort_form(app_name: str, env: str, request: Request, plane: ThePlane) -> Response:
    return await form_action(request, env, f"/apps/{app_name}/envs/{env}", lambda t, f: plane.abort(t, app_name, env))


@router.post("/ci/{run_id}/{what}")
async def ci_form(run_id: int, what: str, request: Request, plane: ThePlane) -> Response:
    if what not in ("approve", "cancel"):
        raise UsageError(f"a CI run can be approved or cancelled, not {what!r}.")
    return await form_action(request, None, f"/ci/{run_id}", lambda t, f: plane.ci(t, run_id, what))


def _can(who: Caller, env: str | None) -> bool:
    return allows(who.token, ACT, env)


def _images(rels: list[views.ReleaseEntry]) -> list[tuple[str, str]]:
    """(image, label) of the releases shown, each image once, newest first: what can be deployed."""
    seen: dict[str, str] = {}
    for r in rels:
        seen.setdefault(r.image, f"{short_image(r.image)} (v{r.number})")
    return list(seen.items())


def _live(plane: Plane, app: str, env: str) -> dict[str, Any]:
    """The live rollout view (usecases/observe.py), and its charts."""
    cfg = plane.config(app, env)
    routed, samples = plane.traffic(cfg)
    live = observe.live(plane.ctx(), cfg, routed, samples)
    return {"live": live, "charts": charts(live.samples, live.at)}
