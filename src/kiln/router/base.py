"""What the rollout executor needs from a router: the servers it has, add one, weigh them, take one out."""

from __future__ import annotations

from typing import Protocol

from kiln.router.runtime import ServerStat
from kiln.spec.resolve import EnvConfig


class Traffic(Protocol):
    cfg: EnvConfig

    def servers(self, preview: bool = False) -> dict[str, ServerStat]: ...
    def add(self, server: str, address: str, port: int, check_interval: float, weight: int = ...,
            preview: bool = False) -> None: ...
    def set_weights(self, weights: dict[str, int]) -> None: ...
    def drain_and_remove(self, server: str, drain_timeout: float, dead: bool = False) -> float: ...
    def remove_preview(self, server: str) -> None: ...
