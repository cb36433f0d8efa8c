"""What an engine is, declared once, so that the core asks an engine's capabilities instead of
comparing its name.

Each engine's declaration sits in a module of its own (`docker_kind.py`, `swarm_kind.py`,
`qemu_kind.py`) and `kiln/engines.py` lists them. A declaration is light: it imports neither the
Docker SDK nor its provider (`open` and `bake` import what they need when called), so the spec
(`kiln validate`) reads engine names, descriptions and rules from here without Docker."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kiln.output import Output
    from kiln.providers.base import Engine, Images
    from kiln.secretref import Lookup
    from kiln.settings import Settings
    from kiln.spec.loader import LoadedSpec
    from kiln.spec.models import Spec

# What an engine's instances run, as messages name it.
CONTAINER_IMAGE = "container image"
VM_IMAGE = "VM image"
HEALTH_KINDS = frozenset({"http", "tcp", "command"})  # spec/models.HealthCheck.kind


@dataclass(frozen=True)
class Baked:
    """An artifact an engine's builder baked (or found by its inputs): what a release records."""

    image: str  # what instances start from: an image id, or a VM image's kiln-vm/APP@sha256:…
    tag: str
    inputs_hash: str
    commit: str | None
    dirty: bool


# (the engine that bakes, the spec, progress, a scratch directory, KILN_HOME) -> the artifact
Builder = Callable[["Images", "LoadedSpec", "Output", Path, Path], Baked]
# (settings, how `secret:NAME` references resolve) -> the provider, connected
Opener = Callable[["Settings", "Lookup"], "Engine"]


def no_grace(_spec: Spec) -> float:
    return 0.0


@dataclass(frozen=True)
class EngineKind:
    """One engine, as the core and the spec see it."""

    name: str  # what environments.NAME.engine says
    description: str  # the spec reference's words for it (docs/spec.md)
    artifact: str  # what its instances run: CONTAINER_IMAGE or VM_IMAGE
    bake: Builder  # bakes that artifact from a spec (kiln deploy, recreate, previews)
    open: Opener  # the real provider (imports it on first use)
    logs: str  # where an instance's logs come from (Runtime.logs)
    # Its images travel to its nodes through kiln.yaml's `registry`: `kiln validate` requires one,
    # and a deploy pushes the baked image there (Images.publish).
    needs_registry: bool = False
    # Its releases record kiln.yaml's `registry` (EnvConfig.registry, part of the config digest).
    records_registry: bool = False
    has_nodes: bool = False  # it is a cluster: `kiln node`, `placement` (it implements providers/base.Nodes)
    health_kinds: frozenset[str] = HEALTH_KINDS  # the healthcheck kinds it can probe
    boot_grace: Callable[[Spec], float] = no_grace  # seconds added to health deadlines: a new instance boots first
    host_network: bool = False  # the router runs on the host's network (Engine.host_network)
    probes_from_router: bool = False  # kiln's checks of an instance run from inside the environment's router
    stop_removes: bool = False  # stopping an instance removes it: it is not listed afterwards
    needs_command: bool = False  # each service must give its argv (`command`): nothing else starts it
    one_line_env: bool = False  # environment values reach an instance one per line
    volumes: bool = False  # accessories' named volumes (none yet)
