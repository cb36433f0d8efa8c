"""The `swarm` engine's declaration: a Docker Swarm whose manager DOCKER_HOST reaches, its
instances spread over the nodes. Its provider is providers/swarm.py."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kiln.providers.docker_kind import bake_container
from kiln.providers.kind import CONTAINER_IMAGE, EngineKind

if TYPE_CHECKING:
    from kiln.providers.base import Engine
    from kiln.secretref import Lookup
    from kiln.settings import Settings


def _open(settings: Settings, secrets: Lookup) -> Engine:
    from kiln.providers.swarm import SwarmProvider

    return SwarmProvider(settings.extra_labels, secrets=secrets)


SWARM = EngineKind(
    name="swarm",
    description="a Docker Swarm whose manager DOCKER_HOST reaches: instances are tasks spread over its "
                "nodes, images travel through `registry` (docs/fleet.md)",
    artifact=CONTAINER_IMAGE,
    bake=bake_container,
    open=_open,
    logs="the task's output, through the manager (service logs)",
    needs_registry=True,
    records_registry=True,
    has_nodes=True,
    # Tasks sit on an overlay only its members reach: the router joins it, and kiln's own requests
    # to a task go from inside the router.
    probes_from_router=True,
    stop_removes=True,  # an instance is a service of one task: stopping it removes the service
)
