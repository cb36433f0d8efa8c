"""The engines kiln knows: one table from the names `environments.NAME.engine` may say to each
engine's declaration (providers/kind.EngineKind), which also opens its provider.

Adding an engine is one entry here (ARCHITECTURE.md, "Adding an engine"). Light on purpose: the
spec imports it, and nothing here imports the Docker SDK."""

from __future__ import annotations

from kiln.errors import UsageError
from kiln.providers.docker_kind import DOCKER
from kiln.providers.kind import EngineKind
from kiln.providers.qemu_kind import QEMU
from kiln.providers.swarm_kind import SWARM

ENGINES: dict[str, EngineKind] = {kind.name: kind for kind in (DOCKER, SWARM, QEMU)}
NAMES = tuple(ENGINES)
# An environment that names no engine runs on this one; a config digest leaves it out, so the
# releases recorded before engines existed keep their digests.
DEFAULT_ENGINE = DOCKER.name


def kind(name: str) -> EngineKind:
    """The declaration of the engine called `name`."""
    found = ENGINES.get(name)
    if found is None:
        raise UsageError(f"unknown engine {name!r}.", f"Engines kiln knows: {', '.join(NAMES)}.")
    return found


def clustered() -> EngineKind:
    """The engine whose nodes `kiln node` lists and drains."""
    return next(k for k in ENGINES.values() if k.has_nodes)


def description() -> str:
    """The spec reference's words for environments.NAME.engine."""
    return "what runs its instances: " + "; ".join(f"`{k.name}`, {k.description}" for k in ENGINES.values())
