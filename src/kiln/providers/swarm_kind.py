"""The `swarm` engine's declaration: a Docker Swarm whose manager DOCKER_HOST reaches, its
instances spread over the nodes. Its provider is providers/swarm.py."""

from __future__ import annotations

from kiln.providers.docker_kind import BAKE_CONTAINER
from kiln.providers.kind import CONTAINER_IMAGE, EngineKind

SWARM = EngineKind(
    name="swarm",
    description="a Docker Swarm whose manager DOCKER_HOST reaches: instances are tasks spread over its "
                "nodes, images travel through `registry` (docs/fleet.md)",
    artifact=CONTAINER_IMAGE,
    builder=BAKE_CONTAINER,
    provider="kiln.providers.swarm:open_provider",
    logs="the task's output, through the manager (service logs)",
    needs_registry=True,
    records_registry=True,
    has_nodes=True,
    # Tasks sit on an overlay only its members reach: the router joins it, and kiln's own requests
    # to a task go from inside the router.
    probes_from_router=True,
    stop_removes=True,  # an instance is a service of one task: stopping it removes the service
)
