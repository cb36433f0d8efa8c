"""Secret references: an environment value written `secret:NAME` names a secret instead of
holding it. Specs, releases, the ledger, manifests and logs carry only the reference; the value
is looked up when a container starts (the Docker provider substitutes it) and nowhere else.

A value comes from kiln's encrypted store (`kiln secret set NAME`), else from the environment
variable KILN_SECRET_<NAME> of the kiln process (NAME upper-cased, `-` and `.` as `_`).

Names whose variable is kiln's own (KILN_SECRET_KEY, the store's master key) are reserved: a
spec naming one is refused when it is read (file:line), and secretstore.lookup refuses one, so no
reference ever resolves to kiln's key. The lookup itself is secretstore.py's; this module only
parses and resolves through a lookup it is given."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Annotated

from pydantic import BeforeValidator

from kiln.errors import SecretError, SecretMissing

PREFIX = "secret:"
NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")

KEY_ENV = "KILN_SECRET_KEY"  # the secret store's master key (secretstore.py)
RESERVED_ENV = frozenset({KEY_ENV})  # kiln's own variables that look like a secret's

Lookup = Callable[[str], str | None]


def reference(value: str) -> str | None:
    """The secret NAME when `value` is a reference `secret:NAME`, else None."""
    return value[len(PREFIX):] if value.startswith(PREFIX) else None


def validate_environment(value: object) -> object:
    """A kiln.yaml environment map: a value `secret:NAME` must name a secret validly."""
    if isinstance(value, dict):
        for key, item in value.items():
            name = reference(item) if isinstance(item, str) else None
            if name is not None and not NAME.match(name):
                raise ValueError(f"{key}: not a valid secret reference ({item!r}); write secret:NAME with NAME of "
                                 "lowercase letters, digits, '-', '_' or '.'")
            if name is not None and reserved(name):
                raise ValueError(f"{key}: secret:{name} is reserved ({env_var(name)} is kiln's own key); "
                                 "store the value under another name")
    return value


Environ = Annotated[dict[str, str], BeforeValidator(validate_environment)]  # environment values in kiln.yaml


def env_var(name: str) -> str:
    return "KILN_SECRET_" + re.sub(r"[-.]", "_", name).upper()


def reserved(name: str) -> bool:
    """Whether `name`'s variable is one of kiln's own (the store's key): never a secret's."""
    return env_var(name) in RESERVED_ENV


def refuse_reserved(name: str) -> str:
    if reserved(name):
        raise SecretError(f"secret name {name!r} is reserved: {env_var(name)} is kiln's own key, never a secret's value.",
                          "Store the value under another name (`kiln secret set OTHER`) and refer to secret:OTHER.")
    return name


def resolve(environment: Mapping[str, str], find: Lookup, where: str = "") -> dict[str, str]:
    """`environment` with every reference replaced by its value (raises SecretMissing naming
    `where.KEY`)."""
    out = {}
    for key, value in environment.items():
        name = reference(value)
        if name is None:
            out[key] = value
            continue
        secret = find(name)
        if secret is None:
            raise missing(f"{where}.{key}" if where else key, name)
        out[key] = secret
    return out


def missing(key: str, name: str) -> SecretMissing:
    return SecretMissing(f"{key} refers to secret {name!r}, which is not set.",
                         f"Store it with `kiln secret set {name}`, or set {env_var(name)} in kiln's environment "
                         "(never in kiln.yaml).")


def check(services: Mapping[str, Mapping[str, str]], find: Lookup) -> None:
    """Before anything starts: every reference in each service's environment has a value."""
    for service, environment in services.items():
        for key, value in environment.items():
            name = reference(value)
            if name is not None and find(name) is None:
                raise missing(f"services.{service}.environment.{key}", name)
