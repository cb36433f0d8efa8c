"""The `docker` engine's declaration: one Docker engine (DOCKER_HOST, else the local socket)
running containers. Its provider is providers/docker.py."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from kiln.providers.kind import CONTAINER_IMAGE, Baked, EngineKind

if TYPE_CHECKING:
    from kiln.output import Output
    from kiln.providers.base import Engine, Images
    from kiln.secretref import Lookup
    from kiln.settings import Settings
    from kiln.spec.loader import LoadedSpec


def bake_container(images: Images, loaded: LoadedSpec, out: Output, scratch: Path, _home: Path) -> Baked:
    """The app image (bake/baker.py): what an engine of containers runs."""
    from kiln.bake.baker import bake

    image = bake(images, loaded, out, scratch)
    return Baked(image.id, image.tag, image.inputs_hash, image.commit, image.dirty)


def _open(settings: Settings, secrets: Lookup) -> Engine:
    from kiln.providers.docker import DockerProvider

    return DockerProvider(settings.extra_labels, secrets=secrets)


DOCKER = EngineKind(
    name="docker",
    description="the Docker engine of DOCKER_HOST (else the local socket), one host",
    artifact=CONTAINER_IMAGE,
    bake=bake_container,
    open=_open,
    logs="the container's output",
    # A container on the host's network reaches instances at their addresses (one host's bridges):
    # the router then listens on the host itself, without Docker's userland proxy in the way.
    host_network=True,
)
