"""Refuse to bake files that look like secrets. Pure: takes names and leading bytes."""

from __future__ import annotations

import fnmatch
import re

_KEY_NAMES = ("id_rsa", "id_dsa", "id_ecdsa", "id_ed25519", "*.pem", "*.key", "*.p12", "*.pfx", ".netrc", ".pgpass")
_PRIVATE_KEY = re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )?PRIVATE KEY-----")
_ENV_ASSIGNMENT = re.compile(rb"^[ \t]*(?:export[ \t]+)?[A-Za-z_][A-Za-z0-9_]*[ \t]*=[ \t]*\S", re.M)


def secret_reason(path: str, head: bytes) -> str | None:
    """Why `path` looks like a secret, or None. `head` is the start of the file (64 KiB is plenty)."""
    name = path.rsplit("/", 1)[-1]
    if _PRIVATE_KEY.search(head):
        return "holds a private key"
    if name == ".env" or name.startswith(".env.") or name.endswith(".env"):
        if name.endswith((".example", ".sample", ".template")):
            return None
        if _ENV_ASSIGNMENT.search(head):
            return "is an .env file with values"
        return None
    for pattern in _KEY_NAMES:
        if fnmatch.fnmatch(name, pattern):
            return f"is named like a key file ({pattern})"
    return None


def is_allowed(path: str, allow: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(path, pattern) for pattern in allow)
