"""Who is asking `kiln serve`: an API token in `Authorization: Bearer …`, or a dashboard session.
No token, an unknown (revoked) one or an ended session is 401; a token whose role may not is 403
(kiln.access decides).

Signing in to the dashboard (server/dashboard.py) opens a session: a random id
(`secrets.token_urlsafe(32)`) in a cookie (HttpOnly, SameSite=Strict, Secure over HTTPS) that
never holds the token nor its digest. The server keeps session id -> (the token's digest, the end
of the session, SESSION_SECONDS after sign-in) in this process's memory, so a restarted
`kiln serve` signs everyone out. Each request resolves its session to the token through the
ledger again: revoking the token (`kiln token revoke`) ends its sessions, and signing out ends the
session on the server (its cookie no longer works, wherever a copy of it is). At most
MAX_SESSIONS are kept: ended ones are forgotten at the next sign-in and, beyond that, the oldest,
so sign-ins cannot grow memory without bound.

A request authenticated by a session that changes anything must also carry the session's CSRF
token (form field `csrf` or header X-CSRF-Token): an HMAC of the session id under a key this
server drew at start, compared in constant time, so a CSRF token read from a page dies with its
session. A bearer token is never sent by a browser on its own, so API clients need none."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Request

from kiln.access import Token, allows
from kiln.context import Context
from kiln.errors import Forbidden
from kiln.usecases import tokens

COOKIE = "kiln_token"  # the name the cookie had when it held the token; it now holds a session id
SESSION_SECONDS = 12 * 3600  # from sign-in, not from the last request
MAX_SESSIONS = 10_000
USED_EVERY = 60.0  # seconds between two records of a token's last use
CSRF_HEADER = "x-csrf-token"


@dataclass(frozen=True)
class Caller:
    token: Token
    session: str | None = None  # the dashboard session the request came with; None for a bearer token

    @property
    def by_cookie(self) -> bool:
        return self.session is not None


@dataclass(frozen=True)
class _Session:
    digest: str  # the token's SHA-256, found in the ledger again at each request
    ends: float  # on Auth's clock


class Auth:
    def __init__(self, ctx: Context, clock: Callable[[], float] = time.monotonic,
                 max_sessions: int = MAX_SESSIONS) -> None:
        self.ctx = ctx.derive(ctx.out)  # tokens are looked up through usecases/tokens.py; its ledger opened now
        self._key = secrets.token_bytes(32)
        self._used: dict[str, float] = {}  # token name -> when its last use was recorded
        self._clock = clock
        self._max_sessions = max_sessions
        self._sessions: OrderedDict[str, _Session] = OrderedDict()  # oldest first, so first to end
        self._lock = threading.Lock()  # requests are served on the threadpool's threads

    def caller(self, request: Request) -> Caller:
        """The request's bearer token, else its session's; Forbidden(401) when there is none,
        kiln does not know the token, or the session has ended."""
        header = request.headers.get("authorization", "")
        bearer = header[7:].strip() if header.lower().startswith("bearer ") else ""
        session = None if bearer else request.cookies.get(COOKIE) or None
        if bearer:
            token = tokens.find(self.ctx, bearer)
            if token is None:
                raise Forbidden("this API token is not valid (unknown or revoked).", 401)
        elif session is not None:
            token = self.session_token(session)
            if token is None:
                raise Forbidden("this dashboard session has ended: signed out, 12 hours old, its token revoked, "
                                "or kiln serve restarted.", 401, "Sign in again.")
        else:
            raise Forbidden("no API token: send `Authorization: Bearer TOKEN` or sign in.", 401,
                            "An admin makes one: `kiln token create NAME --role viewer`.")
        self._record_use(token)
        return Caller(token, session)

    def require(self, caller: Caller, need: str, env: str | None = None) -> Token:
        """caller's token if its role allows `need` (on `env`); Forbidden(403) otherwise."""
        if not allows(caller.token, need, env):
            where = f" on {env}" if env else ""
            raise Forbidden(f"token {caller.token.name} ({caller.token.role}) may not {need}{where}.", 403)
        return caller.token

    # --- dashboard sessions --------------------------------------------------------------------------

    def sign_in(self, raw: str) -> str | None:
        """A new session for the token `raw`, or None when kiln does not know it."""
        token = tokens.find(self.ctx, raw)
        if token is None:
            return None
        self._record_use(token)
        return self.open_session(token)

    def open_session(self, token: Token) -> str:
        session = secrets.token_urlsafe(32)
        with self._lock:
            while self._sessions and next(iter(self._sessions.values())).ends <= self._clock():
                self._sessions.popitem(last=False)  # ended: every session lasts as long, so the oldest end first
            while len(self._sessions) >= self._max_sessions:
                self._sessions.popitem(last=False)
            self._sessions[session] = _Session(token.digest, self._clock() + SESSION_SECONDS)
        return session

    def session_token(self, session: str) -> Token | None:
        """The token of a session that has not ended; None, and the session is forgotten, once it
        has ended or its token was revoked."""
        with self._lock:
            kept = self._sessions.get(session)
        token = tokens.with_digest(self.ctx, kept.digest) if kept and kept.ends > self._clock() else None
        if token is None:
            self.end_session(session)
        return token

    def end_session(self, session: str) -> None:
        with self._lock:
            self._sessions.pop(session, None)

    # --- CSRF -------------------------------------------------------------------------------------------

    def csrf(self, caller: Caller) -> str:
        """The CSRF token of caller's session ("" for a bearer token, which needs none)."""
        if caller.session is None:
            return ""
        return hmac.new(self._key, caller.session.encode(), hashlib.sha256).hexdigest()

    def check_csrf(self, caller: Caller, sent: str | None) -> None:
        """Forbidden(403) when a change made with a session lacks the session's CSRF token."""
        if caller.by_cookie and not hmac.compare_digest(self.csrf(caller), sent or ""):
            raise Forbidden("this form is stale or did not come from kiln's dashboard (CSRF check failed); "
                            "reload the page.", 403)

    def _record_use(self, token: Token) -> None:
        """`kiln token list` shows a token's last use: to the minute, not a write per request."""
        if self._clock() - self._used.get(token.name, -USED_EVERY) >= USED_EVERY:
            self._used[token.name] = self._clock()
            tokens.used(self.ctx, token.name)
