"""What kiln needs from a router: `Traffic` is what a rollout moves (servers, weights), `Router`
adds what keeps the router itself running. A `RouterFactory` makes the router of an environment
on its engine; the Context holds one, so use cases never name HAProxy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from kiln.providers.base import ContainerFacts, Engine
from kiln.router.haproxy_api import ServerStat
from kiln.spec.resolve import EnvConfig


class Traffic(Protocol):
    cfg: EnvConfig

    def servers(self, preview: bool = False) -> dict[str, ServerStat]: ...
    def add(self, server: str, address: str, port: int, check_interval: float, weight: int = ...,
            preview: bool = False) -> None: ...
    def set_weights(self, weights: dict[str, int]) -> None: ...
    def drain_and_remove(self, server: str, drain_timeout: float, dead: bool = False) -> float: ...
    def remove_preview(self, server: str) -> None: ...


class Router(Traffic, Protocol):
    name: str  # its container's name

    def get(self, path: str, timeout: float) -> tuple[int, str]: ...  # GET on the preview port
    def facts(self) -> ContainerFacts | None: ...
    def check(self) -> None: ...  # PortInUse when ensure() would need a port that is taken
    def ensure(self) -> bool: ...
    def remove(self) -> bool: ...


RouterFactory = Callable[[Engine, EnvConfig], Router]
