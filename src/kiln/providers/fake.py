"""In-memory stand-ins for the Runtime provider and the router, for fast tests of the engine.

They keep the same facts the real ones report (container state, labels, an address; router
servers and their status) and let a test break things: `kill` an instance, make one unhealthy."""

from __future__ import annotations

import itertools

from kiln.providers.base import ContainerFacts, ContainerSpec
from kiln.router.runtime import FULL_WEIGHT, ServerStat
from kiln.spec.resolve import EnvConfig


class FakeRuntime:
    def __init__(self) -> None:
        self.specs: dict[str, ContainerSpec] = {}
        self.state: dict[str, str] = {}
        self.unhealthy: set[str] = set()  # instances whose health check fails
        self.crash_on_start: set[int] = set()  # releases whose instances exit at once
        self.networks: set[str] = set()
        self.log: list[tuple[str, str]] = []  # (verb, container) in order
        self._ips = itertools.count(2)
        self.ips: dict[str, str] = {}

    def ensure_network(self, name: str, labels: dict[str, str]) -> None:
        self.networks.add(name)

    def remove_network(self, name: str) -> None:
        self.networks.discard(name)

    def start(self, spec: ContainerSpec) -> ContainerFacts:
        self.specs[spec.name] = spec
        release = int(spec.labels.get("kiln.release", "0"))
        self.state[spec.name] = "exited" if release in self.crash_on_start else "running"
        self.ips[spec.name] = f"10.0.0.{next(self._ips)}"
        self.log.append(("start", spec.name))
        facts = self.container(spec.name)
        assert facts is not None
        return facts

    def containers(self, labels: dict[str, str]) -> list[ContainerFacts]:
        out = []
        for name, spec in self.specs.items():
            if all(spec.labels.get(k) == v for k, v in labels.items()):
                facts = self.container(name)
                assert facts is not None
                out.append(facts)
        return out

    def container(self, name: str) -> ContainerFacts | None:
        spec = self.specs.get(name)
        if spec is None:
            return None
        state = self.state[name]
        return ContainerFacts(id=f"id-{name}", name=name, image=spec.image, labels=dict(spec.labels), state=state,
                              health=None, ip=self.ips[name], exit_code=1 if state == "exited" else None)

    def logs(self, name: str, tail: int = 20) -> str:
        return "fake crash" if self.state.get(name) == "exited" else ""

    def stop(self, name: str, grace: float) -> None:
        if name in self.state:
            self.state[name] = "exited"
            self.log.append(("stop", name))

    def remove(self, name: str) -> None:
        if self.specs.pop(name, None) is not None:
            self.state.pop(name)
            self.log.append(("remove", name))

    def run_once(self, spec: ContainerSpec, timeout: float) -> tuple[int | None, str]:
        self.log.append(("run", spec.name))
        failing = int(spec.labels.get("kiln.release", "0")) in self.crash_on_start
        return (1, "fake hook failed") if failing else (0, "fake hook ok")

    def kill(self, name: str) -> None:
        self.state[name] = "exited"

    def healthy(self, name: str) -> bool:
        return self.state.get(name) == "running" and name not in self.unhealthy


class FakeRouter:
    def __init__(self, cfg: EnvConfig, runtime: FakeRuntime) -> None:
        self.cfg = cfg
        self.runtime = runtime
        self.added: dict[str, str] = {}  # server -> address:port
        self.weights: dict[str, int] = {}
        self.preview: set[str] = set()
        self.maint: set[str] = set()  # servers left in maintenance (added by a kiln killed before enabling them)
        self.log: list[tuple[str, str]] = []

    def servers(self, preview: bool = False) -> dict[str, ServerStat]:
        out = {}
        for name, address in self.added.items():
            if preview and name not in self.preview:
                continue
            status = "MAINT" if name in self.maint else "UP" if self.runtime.healthy(name) else "DOWN"
            weight = FULL_WEIGHT if preview else self.weights[name]
            out[name] = ServerStat("svc", name, status, 0, 0, 0, weight, address)
        return out

    def add(self, server: str, address: str, port: int, check_interval: float, weight: int = FULL_WEIGHT,
            preview: bool = False) -> None:
        if preview:
            self.preview.add(server)
        else:
            self.added[server] = f"{address}:{port}"
            self.weights[server] = weight
            self.maint.discard(server)
        self.log.append(("add-preview" if preview else "add", server))

    def set_weights(self, weights: dict[str, int]) -> None:
        self.weights.update(weights)
        self.log += [("weight", f"{name}={w}") for name, w in sorted(weights.items())]

    def drain_and_remove(self, server: str, drain_timeout: float, dead: bool = False) -> float:
        self.added.pop(server, None)
        self.weights.pop(server, None)
        self.remove_preview(server)
        self.log.append(("remove", server))
        return 0.0

    def remove_preview(self, server: str) -> None:
        self.preview.discard(server)
