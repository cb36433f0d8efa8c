"""Issue 25, findings 4, 7 and 9 of `kiln serve`'s security review, each as an attack:

- 4: every route caps the body before reading it (413), and an /api/ request without a valid
  token is 401 before its body is read or parsed; a 64 MiB body sent to the real server does not
  grow its memory.
- 7: /api/openapi.json needs a viewer's token.
- 9: the dashboard's sign-in checks Origin (or Referer), its cookie holds a server-side session id
  (not the token), signing out ends the session, revoking the token ends its sessions, the CSRF
  token is the session's, and the sessions kept are bounded."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from kiln.access import digest, new_token
from kiln.server.app import MAX_BODY, Config, make_app
from kiln.server.auth import COOKIE, SESSION_SECONDS, Auth
from kiln.server.plane import Plane
from unit.world import World

MIB = 1024 * 1024
SECRET = "webhook-secret"
DEPLOY = "/api/v1/apps/shop/envs/production/deploy"
FORM = "application/x-www-form-urlencoded"


@pytest.fixture
def app(w: World) -> FastAPI:
    """The whole server: control plane, dashboard and GitHub's webhook."""
    return make_app(w.ctx, Config(repo="/srv/r.git", spec="kiln.yaml", github=SECRET), start_runner=False,
                    plane=Plane(w.ctx, [w.root / "kiln.yaml"]))


def _token(w: World, name: str, role: str) -> str:
    value = new_token()
    w.ctx.ledger.tokens.create(name, role, (), value)
    return value


def _call(app: FastAPI, method: str, path: str, headers: list[tuple[bytes, bytes]],
          chunks: Iterator[bytes]) -> tuple[int, int, bytes]:
    """Drive the ASGI app with a body of `chunks`; returns (status, chunks read, response body)."""
    read = 0
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal read
        chunk = next(chunks, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        read += 1
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"kiln:8600"), *headers], "client": ("203.0.113.9", 4000),
             "server": ("kiln", 8600)}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], read, body


def _mebibytes(n: int) -> Iterator[bytes]:
    """n chunks of 1 MiB (an endless body, for the app, when n is larger than it would read)."""
    return (b" " * MIB for _ in range(n))


def _form_fields(n: int) -> Iterator[bytes]:
    """n chunks of 1 MiB, each a form field just under the form parser's own 1 MiB limit per field."""
    return (b"f=" + b"x" * (MIB - 3) + b"&" for _ in range(n))


def _bearer(token: str) -> tuple[bytes, bytes]:
    return b"authorization", f"Bearer {token}".encode()


# --- finding 4: one body cap for every route, and authentication before parsing -----------------


def test_a_declared_64_mib_body_is_413_on_every_route_and_nothing_is_read(w, app):
    admin = _token(w, "ada", "admin")
    declared = (b"content-length", str(64 * MIB).encode())
    routes = [(DEPLOY, [_bearer(admin), (b"content-type", b"application/json")]),
              ("/api/v1/tokens", [_bearer(admin), (b"content-type", b"application/json")]),
              ("/apps/shop/envs/production/deploy", [(b"content-type", FORM.encode())]),
              ("/login", [(b"origin", b"http://kiln:8600"), (b"content-type", FORM.encode())]),
              ("/hooks/github", [(b"x-github-event", b"push"), (b"x-github-delivery", b"big")])]
    for path, headers in routes:
        status, read, body = _call(app, "POST", path, [declared, *headers], _mebibytes(64))
        assert (path, status, read) == (path, 413, 0)
        if path.startswith(("/api/", "/hooks/")):
            assert json.loads(body)["error"] == f"the request body is larger than the {MAX_BODY} bytes kiln serve accepts"
    status, _, page = _call(app, "POST", "/login", [declared, (b"origin", b"http://kiln:8600")], _mebibytes(1))
    assert status == 413 and b"<h1>413</h1>" in page  # the dashboard's own error page


def test_an_endless_chunked_body_stops_right_after_the_cap_on_every_route(w, app):
    admin = _token(w, "ada", "admin")
    routes = [(DEPLOY, [_bearer(admin), (b"content-type", b"application/json")], _mebibytes),
              ("/login", [(b"origin", b"http://kiln:8600"), (b"content-type", FORM.encode())], _form_fields),
              ("/hooks/github", [(b"x-github-event", b"push"), (b"x-github-delivery", b"endless")], _mebibytes)]
    assert MAX_BODY == 5 * MIB
    for path, headers, body in routes:
        status, read, _ = _call(app, "POST", path, [(b"transfer-encoding", b"chunked"), *headers], body(64))
        assert (path, status, read) == (path, 413, 6)  # the first chunk past 5 MiB stops it
    lying = [(b"content-length", b"10"), _bearer(admin), (b"content-type", b"application/json")]
    assert _call(app, "POST", DEPLOY, lying, _mebibytes(64))[:2] == (413, 6)


def test_an_api_request_without_a_valid_token_is_401_before_its_body_is_read(w, app):
    for method, path in (("POST", DEPLOY), ("POST", "/api/v1/tokens"), ("DELETE", "/api/v1/tokens/ada"),
                         ("PUT", DEPLOY), ("PATCH", "/api/v1/anything")):
        for auth in ([], [_bearer("kiln_nope")], [(b"cookie", f"{COOKIE}=forged".encode())]):
            headers = [*auth, (b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")]
            status, read, body = _call(app, method, path, headers, _mebibytes(64))
            assert (method, path, status, read) == (method, path, 401, 0)
            assert set(json.loads(body)) == {"error", "hint"}
    # a malformed body is not parsed either: 401, not the 422 of a parsed body
    client = TestClient(app)
    r = client.post(DEPLOY, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert "no API token" in r.json()["error"]


def test_each_api_request_looks_its_token_up_once(w, app, monkeypatch):
    deployer = _token(w, "dee", "deployer")
    looked_up: list[str] = []
    find = w.ctx.ledger.tokens.find
    monkeypatch.setattr(w.ctx.ledger.tokens, "find", lambda raw: looked_up.append(raw) or find(raw))
    client = TestClient(app, headers={"Authorization": f"Bearer {deployer}"})
    assert client.get("/api/v1/apps").status_code == 200
    assert client.post(DEPLOY, json={"image": "kiln/shop:none"}).status_code == 400  # parsed, then refused
    assert looked_up == [deployer, deployer]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SERVER = """
import sys, uvicorn
from pathlib import Path
from kiln.server.app import make_app
from kiln.server.plane import Plane
from unit.world import World
w = World.make(Path(sys.argv[1]))
uvicorn.run(make_app(w.ctx, None, plane=Plane(w.ctx, [w.root / "kiln.yaml"])), host="127.0.0.1",
            port=int(sys.argv[2]), log_level="warning")
"""


def _kib(pid: int, field: str) -> int:
    """A field of /proc/PID/status in KiB (VmRSS: resident now; VmHWM: the most it ever was)."""
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1])


def test_64_mib_without_a_token_grows_the_real_servers_memory_by_less_than_20_mb(tmp_path):
    port = _free_port()
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": f"{root / 'src'}{os.pathsep}{root / 'tests'}"}
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(tmp_path), str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    requests = [(DEPLOY, {"Content-Type": "application/json"}, _mebibytes),
                ("/login", {"Content-Type": FORM, "Origin": url}, _form_fields)]
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            deadline = time.monotonic() + 20
            while True:
                try:
                    client.get("/health")
                    break
                except httpx.TransportError:
                    assert server.poll() is None and time.monotonic() < deadline, server.stderr and server.stderr.read()
                    time.sleep(0.05)
            for path, headers, _ in requests:  # warm: the first request of each kind imports what it needs
                client.post(path, content=b"token=x", headers=headers)
            before = _kib(server.pid, "VmRSS"), _kib(server.pid, "VmHWM")
            statuses = []
            for path, headers, body in requests:
                statuses.append(client.post(path, content=body(64), headers=headers).status_code)
                declared = {**headers, "Content-Length": str(64 * MIB)}
                statuses.append(client.post(path, content=body(64), headers=declared).status_code)
            after = _kib(server.pid, "VmRSS"), _kib(server.pid, "VmHWM")
    finally:
        server.kill()
        server.wait(5)
    grown = after[0] - before[0], after[1] - before[1]  # KiB: resident, and the peak
    assert max(grown) < 20 * 1024, (statuses, before, after)
    assert statuses == [401, 413, 413, 413]  # /api: 401 before anything, or 413 from Content-Length


# --- finding 7: the OpenAPI description needs a token -------------------------------------------------


def test_the_openapi_description_needs_a_viewers_token(w, app):
    viewer = _token(w, "vic", "viewer")
    client = TestClient(app)
    anon = client.get("/api/openapi.json")
    assert anon.status_code == 401 and "no API token" in anon.json()["error"]
    assert client.get("/api/openapi.json", headers={"Authorization": "Bearer kiln_nope"}).status_code == 401
    seen = client.get("/api/openapi.json", headers={"Authorization": f"Bearer {viewer}"})
    assert seen.status_code == 200 and "/api/v1/apps/{app}/envs/{env}/deploy" in seen.json()["paths"]
    assert "/api/openapi.json" not in seen.json()["paths"]


# --- finding 9: sign-in's Origin check, server-side sessions, sign-out and revocation ---------------


def _sign_in(client: TestClient, token: str, **headers: str) -> httpx.Response:
    return client.post("/login", data={"token": token, "next": "/ci"}, headers=headers, follow_redirects=False)


def _csrf(client: TestClient) -> str:
    page = client.get("/ci", follow_redirects=False)
    assert page.status_code == 200, page.text
    return page.text.split('name="csrf" value="')[1].split('"')[0]


def test_a_cross_origin_sign_in_is_403_and_sets_no_cookie(w, app):
    token = _token(w, "dee", "deployer")
    client = TestClient(app)
    for headers in ({"Origin": "https://evil.example"}, {"Origin": "http://testserver.evil.example"},
                    {"Origin": "null"}, {"Origin": "http://testserver:8080"},
                    {"Referer": "https://evil.example/kiln"}, {},
                    {"Origin": "https://evil.example", "Referer": "http://testserver/login"}):
        r = _sign_in(client, token, **headers)
        assert (headers, r.status_code) == (headers, 403)
        assert "set-cookie" not in r.headers and "did not come from the sign-in page" in r.text
    assert not client.cookies and w.ctx.ledger.tokens.all()[0].last_used_at is None


def test_a_same_origin_sign_in_works_and_its_cookie_holds_neither_the_token_nor_its_digest(w, app):
    token = _token(w, "dee", "deployer")
    for headers in ({"Origin": "http://testserver"}, {"Origin": "HTTP://TestServer:80"},
                    {"Referer": "http://testserver/login?next=/ci"}):
        client = TestClient(app)
        r = _sign_in(client, token, **headers)
        assert (headers, r.status_code, r.headers["location"]) == (headers, 303, "/ci")
        cookie = client.cookies[COOKIE]
        assert len(cookie) >= 43 and token not in cookie and digest(token) not in cookie
        assert token.removeprefix("kiln_") not in cookie
        assert "HttpOnly" in r.headers["set-cookie"] and "SameSite=strict" in r.headers["set-cookie"]
        assert _csrf(client)


def test_a_signed_out_sessions_cookie_replayed_is_refused(w, app):
    token = _token(w, "dee", "deployer")
    client = TestClient(app)
    _sign_in(client, token, Origin="http://testserver")
    cookie, csrf = client.cookies[COOKIE], _csrf(client)
    r = client.post("/logout", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    replay = TestClient(app, cookies={COOKIE: cookie})
    r = replay.get("/ci", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    r = replay.post("/api/v1/apps/shop/envs/production/rollback", json={}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 401 and "signed out" in r.json()["error"]


def test_revoking_a_token_ends_its_sessions(w, app):
    token = _token(w, "dee", "deployer")
    client = TestClient(app)
    _sign_in(client, token, Origin="http://testserver")
    assert client.get("/api/v1/apps").status_code == 200
    assert w.ctx.ledger.tokens.revoke("dee")
    assert client.get("/api/v1/apps").status_code == 401
    assert client.get("/ci", follow_redirects=False).headers["location"].startswith("/login")


def test_the_csrf_token_is_the_sessions_and_dies_with_it(w, app):
    token = _token(w, "dee", "deployer")
    first, second = TestClient(app), TestClient(app)
    _sign_in(first, token, Origin="http://testserver")
    _sign_in(second, token, Origin="http://testserver")
    assert first.cookies[COOKIE] != second.cookies[COOKIE]
    csrf = _csrf(first)
    assert csrf != _csrf(second)  # one token, two sessions: each its own CSRF token
    r = second.post("/ci/1/cancel", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 403 and "CSRF check failed" in r.text  # another session's CSRF token is refused
    cookie = first.cookies[COOKIE]
    assert first.post("/logout", data={"csrf": csrf}, follow_redirects=False).status_code == 303
    replayed = TestClient(app, cookies={COOKIE: cookie}).post("/ci/1/cancel", data={"csrf": csrf})
    assert replayed.status_code == 401  # the session and its CSRF token are gone together
    assert second.get("/ci").status_code == 200  # signing out ends that session only


def test_sessions_expire_and_are_bounded(w):
    token = _token(w, "dee", "deployer")
    found = w.ctx.ledger.tokens.find(token)
    clock = [1000.0]
    auth = Auth(w.ctx, clock=lambda: clock[0], max_sessions=3)
    sessions = [auth.open_session(found) for _ in range(5)]
    assert [auth.session_token(s) for s in sessions] == [None, None, found, found, found]  # the oldest dropped
    clock[0] += SESSION_SECONDS - 1
    assert auth.session_token(sessions[-1]) == found
    clock[0] += 1
    assert auth.session_token(sessions[-1]) is None  # 12 h after sign-in
    assert auth.open_session(found) and len(auth._sessions) == 1  # the expired ones are gone


@pytest.mark.parametrize("target, kept", [("/ci", "/ci"), ("/apps/a/envs/b?x=1", "/apps/a/envs/b?x=1"),
                                          ("//evil.example", "/"), ("/\\evil.example", "/"), ("/a\\b", "/"),
                                          ("https://evil.example", "/"), ("evil", "/")])
def test_a_sign_ins_next_stays_on_this_server(target, kept):
    """Browsers read `/\\evil.example` as `//evil.example`: a backslash never passes."""
    from kiln.server.dashboard import _local

    assert _local(target) == kept
