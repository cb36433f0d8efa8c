"""How one container is confined, as one value from the spec to the engine. Pure.

Every container kiln starts drops every capability, runs an init and is never privileged; what
varies is a `Hardening`: the user it runs as, a read-only root with tmpfs only at `writable`
paths, the capabilities it keeps, no-new-privileges. A service's comes from its resolved config
(`ServiceConfig.hardening`, derived from the flat fields a release records, so recorded
releases keep their digests), a CI step's and a sidecar's from the pipeline, the router's from
router/haproxy.py; `ContainerSpec.hardening` carries it to the providers, which turn it into
their engine's settings, and drift detection (agent/drift.py) compares a running container with
it. A new setting is a new field here, read by those few places."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_WRITABLE = ("/tmp",)  # services.NAME.writable's default: a tmpfs there relaxes nothing


def runs_as_root(user: str | None) -> bool:
    """Whether `user` (services.NAME.user: NAME, UID, NAME:GROUP or UID:GID) names root outright."""
    return (user or "").partition(":")[0].strip() in ("0", "root")


@dataclass(frozen=True)
class Hardening:
    """The defaults are the strictest: a read-only root with nothing writable, no capability kept,
    no-new-privileges, the image's user."""

    user: str | None = None  # NAME, UID, NAME:GROUP or UID:GID; None: the image's USER
    read_only: bool = True  # the root filesystem
    writable: tuple[str, ...] = ()  # paths mounted as tmpfs (writable even on a read-only root)
    cap_add: tuple[str, ...] = ()  # capabilities kept (every other one is dropped)
    no_new_privileges: bool = True

    def relaxed(self) -> list[tuple[str, str]]:
        """What this gives up of a service's defaults, as the spec says it: (its key, what it says),
        e.g. ("cap_add", "cap_add: NET_RAW"). A pushed kiln.yaml needs a right for each (ci/trust.py)."""
        out = [("read_only", "read_only: false")] * (not self.read_only)
        out += [("no_new_privileges", "no_new_privileges: false")] * (not self.no_new_privileges)
        out += [("user", "user: root")] * runs_as_root(self.user)
        out += [("cap_add", f"cap_add: {cap}") for cap in self.cap_add]
        out += [("writable", f"writable: {path}") for path in self.writable if path not in DEFAULT_WRITABLE]
        return out
