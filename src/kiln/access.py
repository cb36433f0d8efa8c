"""Who may do what through `kiln serve`: roles, API tokens and the one rule that grants an action.
Pure: tokens are made from the OS's randomness and stored only as their SHA-256.

    viewer    reads everything (status, releases, rollouts, events, CI runs and logs, locks)
    deployer  reads, and acts (deploy, rollback, promote, abort, approve, cancel) on the
              environments it is granted (none listed: every environment)
    admin     everything, and manages tokens

A token is "kiln_" + 43 URL-safe characters (256 bits): its SHA-256 is a safe lookup key (no
salt needed: nothing is to be guessed from a high-entropy value), and the stored digest is compared
in constant time."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from kiln.errors import UsageError

VIEWER, DEPLOYER, ADMIN = "viewer", "deployer", "admin"
ROLES = (VIEWER, DEPLOYER, ADMIN)
PREFIX = "kiln_"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")

READ, ACT, MANAGE = "read", "act", "manage"  # what a request needs


@dataclass(frozen=True)
class Token:
    """A stored token (its digest only)."""

    name: str
    role: str
    envs: tuple[str, ...]  # where a deployer may act; () = everywhere
    digest: str
    created_at: datetime
    last_used_at: datetime | None = None


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def matches(token: str, stored_digest: str) -> bool:
    return hmac.compare_digest(digest(token), stored_digest)


def check_new(name: str, role: str, envs: tuple[str, ...]) -> None:
    """UsageError unless `name`, `role` and `envs` make a valid token."""
    if not NAME.match(name):
        raise UsageError(f"{name!r} is not a valid token name: letters, digits, '_', '.', '@', '-', at most 64.")
    if role not in ROLES:
        raise UsageError(f"unknown role {role!r}.", f"Roles: {', '.join(ROLES)}.")
    if envs and role != DEPLOYER:
        raise UsageError("--env limits where a deployer acts; a viewer acts nowhere and an admin everywhere.")


def allows(token: Token, need: str, env: str | None = None) -> bool:
    """Whether `token` may do something that needs `need` (READ, ACT, MANAGE) on `env`."""
    if token.role == ADMIN:
        return True
    if need == READ:
        return token.role in ROLES
    if need == ACT and token.role == DEPLOYER:
        return not token.envs or (env is not None and env in token.envs)
    return False
