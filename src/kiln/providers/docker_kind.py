"""The `docker` engine's declaration: one Docker engine (DOCKER_HOST, else the local socket)
running containers. Its provider is providers/docker.py."""

from __future__ import annotations

from kiln.providers.kind import CONTAINER_IMAGE, EngineKind

# The app image (bake/baker.py): what an engine of containers runs.
BAKE_CONTAINER = "kiln.bake.baker:bake_container"

DOCKER = EngineKind(
    name="docker",
    description="the Docker engine of DOCKER_HOST (else the local socket), one host",
    artifact=CONTAINER_IMAGE,
    builder=BAKE_CONTAINER,
    provider="kiln.providers.docker:open_provider",
    logs="the container's output",
    # A container on the host's network reaches instances at their addresses (one host's bridges):
    # the router then listens on the host itself, without Docker's userland proxy in the way.
    host_network=True,
)
