"""`kiln serve`'s API tokens, for `kiln token …`, the API's /tokens and the server's sign-in:
make one (its value shown once, only its SHA-256 kept), list, revoke; find the token a request
or a dashboard session names, and record its use (kiln.access holds the rules)."""

from __future__ import annotations

from kiln import views
from kiln.access import Token, check_new, new_token
from kiln.context import Context
from kiln.errors import NotFound


def create(ctx: Context, name: str, role: str, envs: tuple[str, ...]) -> views.NewToken:
    """A new token for `name` with `role` (a deployer limited to `envs`, if any); UsageError for
    a wrong name, role or environments, or a name taken."""
    check_new(name, role, envs)
    value = new_token()
    made = ctx.ledger.tokens.create(name, role, envs, value)
    return views.NewToken(**views.Token.of(made).model_dump(), token=value)


def listing(ctx: Context) -> list[views.Token]:
    """The tokens by name (never their values)."""
    return [views.Token.of(t) for t in ctx.ledger.tokens.all()]


def revoke(ctx: Context, name: str) -> views.Revoked:
    """Revoke token `name`; NotFound when there is none."""
    if not ctx.ledger.tokens.revoke(name):
        raise NotFound(f"there is no token {name!r}.", "`kiln token list` shows them.")
    return views.Revoked(revoked=name)


def find(ctx: Context, value: str) -> Token | None:
    """The stored token `value` is (compared in constant time), or None."""
    return ctx.ledger.tokens.find(value)


def with_digest(ctx: Context, wanted: str) -> Token | None:
    """The stored token whose SHA-256 is `wanted` (a dashboard session keeps only that)."""
    return ctx.ledger.tokens.with_digest(wanted)


def used(ctx: Context, name: str) -> None:
    """Record that token `name` was used just now."""
    ctx.ledger.tokens.used(name)

