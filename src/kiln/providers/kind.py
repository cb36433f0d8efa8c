"""What an engine is, declared once, so that the core asks an engine's capabilities instead of
comparing its name.

Each engine's declaration sits in a module of its own (`docker_kind.py`, `swarm_kind.py`,
`qemu_kind.py`) and `kiln/engines.py` lists them. A declaration is light: it imports neither the
Docker SDK nor its provider (`open` and `bake` import what they need when called), so the spec
(`kiln validate`) reads engine names, descriptions and rules from here without Docker."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


def _entry(ref: str) -> Any:
    """What an entry point `module:attr` names, imported now: a declaration names its engine's
    code as a Python entry point does, so whoever reads declarations (the spec) imports none of it."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def no_grace(_spec: Spec) -> float:
    return 0.0


@dataclass(frozen=True)
class EngineKind:
    """One engine, as the core and the spec see it."""

    name: str  # what environments.NAME.engine says
    description: str  # the spec reference's words for it (docs/spec.md)
    artifact: str  # what its instances run: CONTAINER_IMAGE or VM_IMAGE
    # Entry points (`module:function`), imported when first called:
    builder: str  # (images, loaded spec, output, scratch dir, KILN_HOME) -> Baked: bakes that artifact
    provider: str  # (settings, how `secret:NAME` resolves) -> the real provider, connected
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

    def bake(self, images: Images, loaded: LoadedSpec, out: Output, scratch: Path, home: Path) -> Baked:
        """Bake this engine's artifact from `loaded` (kiln deploy, recreate, previews)."""
        baked: Baked = _entry(self.builder)(images, loaded, out, scratch, home)
        return baked

    def open(self, settings: Settings, secrets: Lookup) -> Engine:
        """The real provider, connected."""
        engine: Engine = _entry(self.provider)(settings, secrets)
        return engine
