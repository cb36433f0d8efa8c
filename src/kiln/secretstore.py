"""The encrypted secret store behind `kiln secret` and `secret:NAME` references.

Each secret is a Fernet token (AES-128-CBC + HMAC-SHA256, from the `cryptography` package) in
KILN_HOME/secrets/NAME, mode 0600. The key is KILN_SECRET_KEY when set, else the file
KILN_HOME/secret.key (made on first `set`, mode 0600). Values never reach argv, the ledger or a
log line: pipeline logs are masked with `Masker`."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from kiln.errors import KilnError, SecretError
from kiln.private import write_private
from kiln.secretref import (  # NAME: the names references accept
    KEY_ENV,
    NAME,
    env_var,
    refuse_reserved,
)
from kiln.settings import Settings

if TYPE_CHECKING:  # imported on use: ~50 ms
    from cryptography.fernet import Fernet

MASK = "********"


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise SecretError(f"{name!r} is not a valid secret name.",
                          "Use lowercase letters, digits, '-', '_' or '.', starting with a letter or digit.")
    return refuse_reserved(name)


class SecretStore:
    def __init__(self, settings: Settings, environ: dict[str, str] | None = None) -> None:
        self.dir = settings.home / "secrets"
        self.key_file = settings.home / "secret.key"
        self._env = os.environ if environ is None else environ

    def _fernet(self, create: bool) -> Fernet | None:
        from cryptography.fernet import Fernet

        key = self._env.get(KEY_ENV)
        if key is None:
            if not self.key_file.exists():
                if not create:
                    return None
                write_private(self.key_file, Fernet.generate_key())
            _refuse_loose(self.key_file)
            key = self.key_file.read_text().strip()
        try:
            return Fernet(key.encode() if isinstance(key, str) else key)
        except (ValueError, TypeError):
            where = KEY_ENV if self._env.get(KEY_ENV) is not None else str(self.key_file)
            raise SecretError(f"the secret key in {where} is not a Fernet key (32 url-safe base64-encoded bytes).",
                              "Make one with `python3 -c 'from cryptography.fernet import Fernet; "
                              "print(Fernet.generate_key().decode())'`.") from None

    def set(self, name: str, value: str) -> None:
        fernet = self._fernet(create=True)
        assert fernet is not None  # create=True makes a key when there is none
        write_private(self.dir / check_name(name), fernet.encrypt(value.encode()))

    def get(self, name: str) -> str | None:
        path = self.dir / check_name(name)
        if not path.exists():
            return None
        fernet = self._fernet(create=False)
        if fernet is None:
            raise SecretError(f"secret {name!r} is stored but the key to decrypt it is gone ({self.key_file}).",
                              f"Restore the key file, or set {KEY_ENV}; else set the secret again.")
        from cryptography.fernet import InvalidToken

        try:
            value: str = fernet.decrypt(path.read_bytes()).decode()
            return value
        except InvalidToken:
            raise SecretError(f"secret {name!r} cannot be decrypted with this key.",
                              f"It was stored with another key (check {KEY_ENV} and {self.key_file}); "
                              "set it again with `kiln secret set`.") from None

    def names(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        return sorted(p.name for p in self.dir.iterdir() if NAME.match(p.name))

    def delete(self, name: str) -> bool:
        path = self.dir / check_name(name)
        if not path.exists():
            return False
        path.unlink()
        return True


def lookup(settings: Settings, name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The value of secret `name`, or None when it is not set anywhere. A reserved name raises
    SecretError (whatever the store or the environment hold)."""
    refuse_reserved(name)
    env = os.environ if environ is None else environ
    stored = SecretStore(settings, dict(env)).get(name)
    return stored if stored is not None else env.get(env_var(name))


def _refuse_loose(path: Path) -> None:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise SecretError(f"{path} is readable by others (mode {mode:o}).", f"Run `chmod 600 {path}`.")


SHORT = 4  # values (and lines of values) shorter than this are masked only as whole words


def masker_for(names: Iterable[str], lookup: Callable[[str], str | None]) -> Masker:
    """A Masker of the values `lookup` gives `names`; a name it cannot read (reserved, or not
    decryptable) was given to no container, so there is nothing of it to mask."""
    values = []
    for name in sorted(names):
        try:
            value = lookup(name)
        except KilnError:
            continue
        if value:
            values.append(value)
    return Masker(values)


class Masker:
    """Replaces every known secret value in a text with a mask. Pure.

    A value of SHORT (4) characters or more is masked wherever it appears. A shorter one (1 to 3
    characters, blanks aside) is masked only where it stands as a whole word, not touching a
    letter, digit or '_': masking every `a` or `1` would wreck the output and, by the pattern of
    masks, show the value anyway. Such a secret cannot really be kept out of output; make
    secrets long. Each line of a multi-line value is masked too, since logs are stored line by
    line. Longest first, so a value containing another is masked whole."""

    def __init__(self, values: Iterable[str]) -> None:
        parts = {v for value in values if value for v in [value, *value.splitlines()] if v.strip()}
        self.values = sorted((v for v in parts if len(v.strip()) >= SHORT), key=len, reverse=True)
        short = sorted((v for v in parts if len(v.strip()) < SHORT), key=len, reverse=True)
        self.words = re.compile("|".join(rf"(?<!\w){re.escape(v)}(?!\w)" for v in short)) if short else None

    def __call__(self, text: str) -> str:
        for value in self.values:
            if value in text:
                text = text.replace(value, MASK)
        if self.words is not None:
            text = self.words.sub(MASK, text)
        return text
