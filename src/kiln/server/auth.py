"""Who is asking `kiln serve`: an API token in `Authorization: Bearer …`, or the dashboard's
sign-in cookie (HttpOnly, SameSite=Strict, holding the token). No token or an unknown one is 401;
a token whose role may not is 403 (kiln.access decides).

A request authenticated by the cookie that changes anything must also carry the CSRF token of its
page (form field `csrf` or header X-CSRF-Token): an HMAC of the token's digest under a key this
server drew at start, compared in constant time. A bearer token is never sent by a browser on its
own, so API clients need none."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from fastapi import Request

from kiln.access import Token, allows
from kiln.errors import Forbidden
from kiln.ledger.store import Ledger

COOKIE = "kiln_token"
USED_EVERY = 60.0  # seconds between two records of a token's last use
CSRF_HEADER = "x-csrf-token"


@dataclass(frozen=True)
class Caller:
    token: Token
    by_cookie: bool


class Auth:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._key = secrets.token_bytes(32)
        self._used: dict[str, float] = {}  # token name -> when its last use was recorded

    def caller(self, request: Request) -> Caller:
        """The token of the request; Forbidden(401) when there is none or kiln does not know it."""
        header = request.headers.get("authorization", "")
        by_cookie = False
        if header.lower().startswith("bearer "):
            raw = header[7:].strip()
        else:
            raw = request.cookies.get(COOKIE, "")
            by_cookie = bool(raw)
        if not raw:
            raise Forbidden("no API token: send `Authorization: Bearer TOKEN` or sign in.", 401,
                            "An admin makes one: `kiln token create NAME --role viewer`.")
        token = self.ledger.tokens.find(raw)
        if token is None:
            raise Forbidden("this API token is not valid (unknown or revoked).", 401)
        if time.monotonic() - self._used.get(token.name, -USED_EVERY) >= USED_EVERY:
            self._used[token.name] = time.monotonic()
            self.ledger.tokens.used(token.name)  # `kiln token list` shows it (to the minute, not a write per request)
        return Caller(token, by_cookie)

    def require(self, caller: Caller, need: str, env: str | None = None) -> Token:
        """caller's token if its role allows `need` (on `env`); Forbidden(403) otherwise."""
        if not allows(caller.token, need, env):
            where = f" on {env}" if env else ""
            raise Forbidden(f"token {caller.token.name} ({caller.token.role}) may not {need}{where}.", 403)
        return caller.token

    def csrf(self, token: Token) -> str:
        return hmac.new(self._key, token.digest.encode(), hashlib.sha256).hexdigest()

    def check_csrf(self, caller: Caller, sent: str | None) -> None:
        """Forbidden(403) when a cookie-authenticated change lacks its page's CSRF token."""
        if caller.by_cookie and not hmac.compare_digest(self.csrf(caller.token), sent or ""):
            raise Forbidden("this form is stale or did not come from kiln's dashboard (CSRF check failed); "
                            "reload the page.", 403)
