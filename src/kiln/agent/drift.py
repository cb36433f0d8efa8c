"""Drift rules: is a running instance still exactly what its release started? Pure.

An instance is *tainted* when anything about it differs from what kiln created: files in its
writable layer outside the declared writable paths (`docker diff`), a `docker exec` into it,
or an image, environment, label, hardening setting or resource limit other than its release's. A tainted
instance is no longer trusted: it is replaced, never repaired. Reasons name variables, never
their values, because values may be secrets."""

from __future__ import annotations

from kiln.providers.base import ContainerDetails, ContainerFacts, ContainerSpec, short_image
from kiln.spec.sizes import format_size

SHOWN = 5  # changed paths quoted in a reason; the rest are counted
ENGINE_PATHS = ("/usr/sbin/docker-init",)  # put there by the engine itself (the init process, `init: true`)


def taints(expected: ContainerSpec, image_env: dict[str, str], facts: ContainerFacts,
           details: ContainerDetails, changes: list[str], execs: list[str]) -> list[str]:
    """Why the instance differs from `expected` (its release's container spec); [] when it does not."""
    reasons: list[str] = []
    if facts.image != expected.image:
        reasons.append(f"runs image {short_image(facts.image)}, its release has {short_image(expected.image)}")
    for key, value in sorted(expected.labels.items()):
        if facts.labels.get(key) != value:
            reasons.append(f"label {key} is {facts.labels.get(key)!r}, its release sets {value!r}")
    want_env = {**image_env, **expected.environment}
    changed = sorted(k for k in want_env.keys() | details.env.keys() if want_env.get(k) != details.env.get(k))
    if changed:
        reasons.append("environment differs from its release: " + ", ".join(changed))
    reasons += _hardening(expected, details)
    files = changed_files(changes, expected.hardening.writable)
    if files:
        more = f" (+{len(files) - SHOWN} more)" if len(files) > SHOWN else ""
        reasons.append(f"filesystem changed: {', '.join(files[:SHOWN])}{more}")
    reasons += [f"docker exec: {e}" for e in execs]
    return reasons


def _hardening(expected: ContainerSpec, d: ContainerDetails) -> list[str]:
    """The container's confinement against its release's `Hardening` (and what every kiln
    container gets: all capabilities dropped, not privileged, no mounts), and its limits."""
    h = expected.hardening
    out = []
    if d.read_only != h.read_only:
        out.append(f"read-only root filesystem is {d.read_only}, its release says {h.read_only}")
    if "ALL" not in d.cap_drop:
        out.append("capabilities are not all dropped")
    if sorted(d.cap_add) != sorted(h.cap_add):
        out.append(f"capabilities added: {', '.join(d.cap_add) or 'none'}, its release adds {', '.join(h.cap_add) or 'none'}")
    nnp = any(o.startswith("no-new-privileges") and not o.endswith("false") for o in d.security_opt)
    if nnp != h.no_new_privileges:
        out.append(f"no-new-privileges is {nnp}, its release says {h.no_new_privileges}")
    if d.privileged:
        out.append("runs privileged")
    if sorted(d.tmpfs) != sorted(h.writable):
        out.append(f"tmpfs mounts {', '.join(d.tmpfs) or 'none'}, its release declares {', '.join(h.writable) or 'none'}")
    if d.mounts:
        out.append(f"mounts {', '.join(d.mounts)}, its release mounts nothing")
    out += _limits(expected, d)
    if h.user is not None and d.user != h.user:  # without one, the image's USER applies
        out.append(f"runs as user {d.user or 'root'}, its release says {h.user}")
    return out


def _limits(expected: ContainerSpec, d: ContainerDetails) -> list[str]:
    want, got = expected.limits, d.limits
    out = []
    if got.memory != want.memory:
        out.append(f"memory limit is {_size(got.memory)}, its release says {_size(want.memory)}")
    if abs(got.cpus - want.cpus) > 1e-9:  # the engine keeps nanocpus
        out.append(f"CPU limit is {f'{got.cpus:g}' if got.cpus else 'none'}, its release says {want.cpus:g}")
    if got.pids != want.pids:
        out.append(f"pids limit is {got.pids or 'none'}, its release says {want.pids}")
    return out


def _size(n: int) -> str:
    return format_size(n) if n else "none"


def changed_files(changes: list[str], writable: tuple[str, ...]) -> list[str]:
    """`docker diff` lines that taint: not the engine's own files, not under a declared writable
    path, and not a directory marked changed only because something inside it was."""
    paths = [c.split(" ", 1)[1] for c in changes]
    out = []
    for line, path in zip(changes, paths, strict=True):
        if line.startswith("C ") and any(p.startswith(path.rstrip("/") + "/") for p in paths):
            continue
        if _under(path, ENGINE_PATHS) or _under(path, writable):
            continue
        out.append(line)
    return out


def _under(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def exec_detail(command: tuple[str, ...] | None) -> str | None:
    """How the engine names the exec of a command healthcheck in its events (kiln's own exec)."""
    return " ".join(command) if command else None
