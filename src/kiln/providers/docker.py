"""The Docker provider (`engine: docker`, declared in docker_kind.py): an environment's instances
as containers on one Docker engine (DOCKER_HOST, else the local socket).

Everything it does is what its `DockerApi` does on that engine; it adds only the engine's own
answers: an image is released as the id the engine already has, every part of a ContainerSpec is
enforced, and kiln's own requests go straight to an instance's address on this host's bridges."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from kiln.providers.base import (
    ContainerDetails,
    ContainerFacts,
    ContainerSpec,
    Engine,
    EngineEvent,
    Finished,
)
from kiln.providers.docker_api import DockerApi
from kiln.providers.docker_kind import DOCKER
from kiln.secretref import Lookup
from kiln.settings import Settings
from kiln.spec.models import HealthCheck


class DockerProvider:
    """One Docker engine: images, networks, containers, each through its `DockerApi`."""

    name = DOCKER.name
    host_network = DOCKER.host_network

    def __init__(self, extra_labels: dict[str, str] | None = None, secrets: Lookup | None = None) -> None:
        self.docker = DockerApi(extra_labels, secrets)

    # --- images -------------------------------------------------------------------------------

    def image_id(self, ref: str) -> str | None:
        return self.docker.image_id(ref)

    def image_env(self, image: str) -> dict[str, str]:
        return self.docker.image_env(image)

    def find_image(self, tag: str, labels: dict[str, str]) -> str | None:
        return self.docker.find_image(tag, labels)

    def images(self, labels: dict[str, str]) -> list[tuple[str, tuple[str, ...]]]:
        return self.docker.images(labels)

    def remove_image(self, image: str) -> None:
        self.docker.remove_image(image)

    def import_rootfs(self, tarball: Path, tag: str, labels: dict[str, str], changes: list[str]) -> str:
        return self.docker.import_rootfs(tarball, tag, labels, changes)

    def export_rootfs(self, image: str, dest: Path) -> None:
        self.docker.export_rootfs(image, dest)

    def build(self, context: BinaryIO, dockerfile: str, tag: str, args: dict[str, str],
              labels: dict[str, str], on_line: Callable[[str], None]) -> str:
        return self.docker.build(context, dockerfile, tag, args, labels, on_line)

    def push(self, image: str, repository: str) -> str:
        return self.docker.push(image, repository)

    def pull(self, ref: str) -> str:
        return self.docker.pull(ref)

    def publish(self, image: str, repository: str | None) -> str:
        """The reference instances start from: on one engine, the image id it already has."""
        return image

    # --- networks -------------------------------------------------------------------------------

    def ensure_network(self, name: str, labels: dict[str, str]) -> None:
        self.docker.ensure_network(name, labels)

    def remove_network(self, name: str, labels: dict[str, str] | None = None) -> None:
        self.docker.remove_network(name, labels)

    # --- containers -----------------------------------------------------------------------------

    def start(self, spec: ContainerSpec) -> ContainerFacts:
        return self.docker.start(spec)

    def containers(self, labels: dict[str, str]) -> list[ContainerFacts]:
        return self.docker.containers(labels)

    def container(self, name: str) -> ContainerFacts | None:
        return self.docker.container(name)

    def logs(self, name: str, tail: int = 20) -> str:
        return self.docker.logs(name, tail)

    def stop(self, name: str, grace: float) -> None:
        self.docker.stop(name, grace)

    def remove(self, name: str) -> None:
        self.docker.remove(name)

    def run_once(self, spec: ContainerSpec, timeout: float) -> tuple[int | None, str]:
        return self.docker.run_once(spec, timeout)

    def run_streamed(self, spec: ContainerSpec, on_line: Callable[[str], None], timeout: float,
                     cancelled: Callable[[], bool]) -> Finished:
        return self.docker.run_streamed(spec, on_line, timeout, cancelled)

    # --- kiln's own requests to instances: straight to their address on the environment network --

    def probe(self, c: ContainerFacts, check: HealthCheck | None, port: int | None) -> bool:
        return self.docker.probe(c, check, port)

    def get(self, c: ContainerFacts, port: int, path: str, timeout: float) -> tuple[int, str]:
        return self.docker.get(c, port, path, timeout)

    # --- observation ----------------------------------------------------------------------------

    def enforceable(self, spec: ContainerSpec) -> ContainerSpec:
        """`spec` as this engine applies it: all of it."""
        return spec

    def details(self, name: str) -> ContainerDetails | None:
        return self.docker.details(name)

    def changes(self, name: str) -> list[str]:
        return self.docker.changes(name)

    def events(self, labels: dict[str, str], since: float | None = None,
               until: float | None = None) -> Iterator[EngineEvent]:
        return self.docker.events(labels, since, until)


def _implements(provider: DockerProvider) -> Engine:
    """Never called: mypy checks here that the provider implements every method of Engine."""
    return provider


def open_provider(settings: Settings, secrets: Lookup) -> DockerProvider:
    """The `docker` engine's provider (its declaration's entry point, providers/docker_kind.py)."""
    return DockerProvider(settings.extra_labels, secrets=secrets)
