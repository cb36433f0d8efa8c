"""Refuse to bake files that look like secrets. Pure: takes names and contents (whole files, in
chunks: a key at the end of a large file is found too).

Names are matched case-insensitively (ID_RSA, x.KEY); contents are searched for private keys (PEM,
OpenSSH, PGP, PuTTY), AWS secret keys and registry tokens; .env and .envrc files count when they
assign values."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable

CHUNK = 1024 * 1024  # bytes read at a time
_OVERLAP = 256  # bytes of the previous chunk searched again: a marker split across chunks is found

_KEY_NAMES = ("id_rsa", "id_dsa", "id_ecdsa", "id_ed25519", "*.pem", "*.key", "*.p12", "*.pfx", "*.ppk", "*.jks",
              "*.keystore", ".netrc", "_netrc", ".pgpass", ".pypirc", ".git-credentials", "secring.*",
              "*.kdbx")
_KEY_PATHS = ("*.aws/credentials", ".aws/credentials", "*.docker/config.json", ".docker/config.json")
_PRIVATE_KEY = re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|PuTTY-User-Key-File-\d+:")
_AWS_SECRET = re.compile(rb"aws_secret_access_key[ \t]*[=:][ \t]*\S", re.I)
_NPM_TOKEN = re.compile(rb"(?:_authToken|_auth|_password)[ \t]*=[ \t]*\S", re.I)
_ENV_ASSIGNMENT = re.compile(rb"^[ \t]*(?:export[ \t]+)?[A-Za-z_][A-Za-z0-9_]*[ \t]*=[ \t]*\S", re.M)


def _is_env_file(name: str) -> bool:
    return name in (".env", ".envrc") or name.startswith(".env.") or name.endswith(".env")


def _content_reasons(name: str, data: bytes) -> str | None:
    if _PRIVATE_KEY.search(data):
        return "holds a private key"
    if _AWS_SECRET.search(data):
        return "holds an AWS secret access key"
    if name == ".npmrc" and _NPM_TOKEN.search(data):
        return "is an .npmrc with a registry token"
    return None


def secret_reason(path: str, content: bytes | Iterable[bytes]) -> str | None:
    """Why `path` looks like a secret, or None. `content` is the file's bytes, whole or as chunks
    (read them all: a secret may sit anywhere)."""
    name = path.rsplit("/", 1)[-1].lower()
    chunks = [content] if isinstance(content, bytes) else content
    env_file = _is_env_file(name) and not name.endswith((".example", ".sample", ".template"))
    tail, assigns = b"", False
    for chunk in chunks:
        window = tail + chunk
        reason = _content_reasons(name, window)
        if reason:
            return reason
        assigns = assigns or (env_file and _ENV_ASSIGNMENT.search(window) is not None)
        tail = window[-_OVERLAP:]
    if env_file and assigns:
        return f"is an {'.envrc' if name == '.envrc' else '.env'} file with values"
    if _is_env_file(name):
        return None
    lower_path = path.lower()
    for pattern in _KEY_NAMES:
        if fnmatch.fnmatchcase(name, pattern):
            return f"is named like a key file ({pattern})"
    for pattern in _KEY_PATHS:
        if fnmatch.fnmatchcase(lower_path, pattern):
            return f"is named like a credentials file ({pattern})"
    return None


def read_chunks(path: str) -> Iterable[bytes]:
    """A file's bytes, CHUNK at a time (for `secret_reason`)."""
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            yield chunk


def is_allowed(path: str, allow: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(path, pattern) for pattern in allow)
