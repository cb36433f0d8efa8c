"""How two environments differ, key by key. Pure.

Two environments built from one kiln.yaml are identical by construction except where an
environment's overlay says otherwise (its port, replicas, env values, resource limits…): those keys are
*declared* differences. Anything else that differs between what two environments run (their
releases' resolved configs, their image digests) is drift between them, and `kiln env diff`
exits 1 on it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kiln.spec.models import Spec

ALWAYS_DECLARED = ("env", "port", "bind", "preview_port")  # an environment's own name and address
ABSENT = "(absent)"


@dataclass(frozen=True)
class KeyDiff:
    key: str  # dotted path in the resolved config, services by name: services.web.replicas
    a: Any
    b: Any
    declared: bool  # an environment overlay sets this key


def flatten(config: dict[str, Any]) -> dict[str, Any]:
    """A resolved config as dotted keys; the services list becomes services.NAME.…"""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else key, item)
        else:
            out[prefix] = value

    for key, value in config.items():
        if key == "services":
            for svc in value:
                walk(f"services.{svc['name']}", {k: v for k, v in svc.items() if k != "name"})
        else:
            walk(key, value)
    return out


def declared_keys(spec: Spec, env: str) -> set[str]:
    """The keys environment `env`'s overlay sets (only the always-declared ones for an environment
    kiln.yaml does not declare, such as a preview)."""
    keys = set(ALWAYS_DECLARED)
    overlay = spec.environments.get(env)
    if overlay is None:
        return keys
    for name, over in overlay.services.items():
        if over.replicas is not None:
            keys.add(f"services.{name}.replicas")
        if over.command is not None:
            keys.add(f"services.{name}.command")
        keys |= {f"services.{name}.environment.{k}" for k in over.environment}
        if over.resources is not None:
            keys |= {f"services.{name}.resources.{k}" for k in over.resources.model_dump(exclude_none=True)}
    return keys


def diff(a: dict[str, Any], b: dict[str, Any], declared: set[str]) -> list[KeyDiff]:
    """Every key whose value differs between configs `a` and `b`, in key order."""
    fa, fb = flatten(a), flatten(b)
    rows = []
    for key in sorted(fa.keys() | fb.keys()):
        va, vb = fa.get(key, ABSENT), fb.get(key, ABSENT)
        if va != vb and not (_expanded(key, va, fb) or _expanded(key, vb, fa)):
            rows.append(KeyDiff(key, _plain(va), _plain(vb), key in declared))
    return rows


def _expanded(key: str, value: Any, other: dict[str, Any]) -> bool:
    """An empty mapping on one side whose keys the other side lists one by one (environment: {}
    against environment.MODE): those keys are the differences, the mapping itself is not one."""
    return value == {} and any(k.startswith(key + ".") for k in other)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
