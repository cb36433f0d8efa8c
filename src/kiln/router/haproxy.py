"""The router of one environment: an HAProxy container, the only thing listening on a port.

kiln starts it once per environment; from then on servers come and go through its runtime
API. It restarts with the engine and keeps serving when no kiln process runs."""

from __future__ import annotations

import errno
import hashlib
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path

from kiln import faults
from kiln.bake.base import ensure_base
from kiln.errors import PortInUse, RouterError
from kiln.output import Output
from kiln.private import private_dir
from kiln.probe import http_get
from kiln.providers.base import (
    ROUTER,
    ContainerFacts,
    ContainerSpec,
    Engine,
    Limits,
    check_owner,
    network_name,
    router_name,
    selector,
)
from kiln.router.base import Router
from kiln.router.config import PREVIEW_PORT, SOCKET_DIR, SOCKET_NAME, backend_name, render_config
from kiln.router.haproxy_api import (
    FULL_WEIGHT,
    POOL_MAX_CONN,
    POOL_PURGE_MS,
    RuntimeClient,
    ServerStat,
    add_server,
    drain_server,
    remove_server,
    set_weights,
    stop_server,
)
from kiln.spec.hardening import Hardening
from kiln.spec.models import Base
from kiln.spec.resolve import EnvConfig, url_host

ROUTER_BASE = Base(packages=("haproxy",))
ROUTER_PORT = 8080  # inside the router container; published on the environment's bind:port
# maxconn 4096 streams of two 16 KiB buffers is 128M at worst: 512M leaves room for the rest; one
# core carries far more requests than one host's instances serve; HAProxy runs a master and one
# worker with at most 64 threads.
ROUTER_LIMITS = Limits(memory=512 * 1024**2, cpus=1.0, pids=256)


class HaproxyRouter:
    """The Router of one environment on one engine (router/base.py's protocol)."""

    def __init__(self, engine: Engine, cfg: EnvConfig, state_dir: Path, out: Output, scratch: Path) -> None:
        self.runtime = engine
        self.cfg = cfg
        self.dir = state_dir
        self.out, self.scratch = out, scratch
        self.name = router_name(cfg.app, cfg.env)
        self.client = RuntimeClient(state_dir / SOCKET_NAME)
        svc = cfg.public_service
        self.backend = backend_name(svc.name) if svc else None
        self.preview = backend_name(svc.name, preview=True) if svc and cfg.preview_port else None

    @property
    def on_host(self) -> bool:
        return self.runtime.host_network

    def _config_text(self) -> str:
        if self.on_host:
            return render_config(self.cfg, on_host=True)
        return render_config(self.cfg.model_copy(update={"port": ROUTER_PORT}))

    def labels(self) -> dict[str, str]:
        return selector(self.cfg.app, self.cfg.env, ROUTER)

    def facts(self) -> ContainerFacts | None:
        """The router container, if there is one; NameTaken if that name is another environment's."""
        found = self.runtime.container(self.name)
        if found is not None:
            check_owner("router", self.name, found.labels, self.labels())
        return found

    def _digest(self, text: str) -> str:
        return hashlib.sha256(f"{text}{self.cfg.bind}:{self.cfg.port}:{self.cfg.preview_port}".encode()).hexdigest()[:16]

    def _ports(self) -> list[int]:
        return [self.cfg.port, *([self.cfg.preview_port] if self.cfg.preview_port else [])]

    def _publish(self) -> dict[int, tuple[str, int]]:
        """What the engine publishes: nothing for a router on the host's network. A published port
        goes through Docker's userland proxy, which copies every byte (bench/results/report.md
        measures that path beside the router's) and stops with dockerd even under live-restore."""
        if self.on_host:
            return {}
        publish = {ROUTER_PORT: (self.cfg.bind, self.cfg.port)}
        if self.cfg.preview_port:
            publish[PREVIEW_PORT] = (self.cfg.bind, self.cfg.preview_port)
        return publish

    def check(self) -> None:
        """Cheap, before a bake: the ports a new router would need are free (or already its own)."""
        mine = self.facts()
        if mine is not None and mine.running:
            return  # its ports are its own (a new config replaces it on the same ports)
        for port in self._ports():
            _check_port_free(self.cfg.bind, port)

    def ensure(self) -> bool:
        """Start the router unless one with the same config is running. True if it was started."""
        image = ensure_base(self.runtime, ROUTER_BASE, self.out, self.scratch).id
        text = self._config_text()
        digest = self._digest(text)
        current = self.facts()
        if current and current.running and current.labels.get("kiln.router.config") == digest:
            return False
        if current:
            # A changed port or config needs a new router; this briefly interrupts the environment.
            self.runtime.remove(self.name)
        for port in self._ports():
            _check_port_free(self.cfg.bind, port)
        private_dir(self.dir.parent)  # KILN_HOME and routers/ owner only; the mounted directory as before
        self.dir.mkdir(exist_ok=True)
        (self.dir / "haproxy.cfg").write_text(text)
        self.runtime.start(ContainerSpec(
            name=self.name,
            image=image,
            network="host" if self.on_host else network_name(self.cfg.app, self.cfg.env),
            labels={**self.labels(), "kiln.router.config": digest},
            command=("haproxy", "-W", "-db", "-f", f"{SOCKET_DIR}/haproxy.cfg"),
            # On the host's network a port below 1024 is the host's own: binding it takes this capability.
            hardening=Hardening(writable=("/tmp", "/run/haproxy"),
                                cap_add=("NET_BIND_SERVICE",) if self.on_host and min(self._ports()) < 1024 else ()),
            publish=self._publish(),
            binds={str(self.dir): SOCKET_DIR},
            stop_grace_period=5,
            restart=True,
            limits=ROUTER_LIMITS,
        ))
        self._wait_ready()
        return True

    def get(self, path: str, timeout: float) -> tuple[int, str]:
        """One GET through the preview port, as a client of the environment would send it."""
        if not self.cfg.preview_port:
            raise RouterError(f"{self.cfg.app}/{self.cfg.env} has no preview port.")
        return http_get(url_host(self.cfg.bind), self.cfg.preview_port, path, timeout)

    def remove(self) -> bool:
        """Remove the router and its state (config, admin socket). True if a router was there."""
        there = self.facts() is not None
        self.runtime.remove(self.name)
        shutil.rmtree(self.dir, ignore_errors=True)
        return there

    def _wait_ready(self, timeout: float = 15.0) -> None:
        end = time.monotonic() + timeout
        while True:
            try:
                self.client.ask("show info")
                return
            except RouterError:
                facts = self.facts()
                if time.monotonic() > end or (facts and not facts.running):
                    state = facts.state if facts else "missing"
                    raise RouterError(f"the router {self.name} did not come up (container {state}).",
                                      f"See `docker logs {self.name}`.") from None
                time.sleep(0.1)

    def servers(self, preview: bool = False) -> dict[str, ServerStat]:
        backend = self.preview if preview else self.backend
        if not backend:
            return {}
        return {s.name: s for s in self.client.stats() if s.backend == backend}

    def add(self, server: str, address: str, port: int, check_interval: float, weight: int = FULL_WEIGHT,
            preview: bool = False) -> None:
        backend = self.preview if preview else self.backend
        if backend is None:
            raise RouterError(f"{self.cfg.app}/{self.cfg.env} has no {'preview ' if preview else ''}backend to add {server} to.")
        self.client.run(add_server(backend, server, address, port, max(100, int(check_interval * 1000)), weight))

    def set_weights(self, weights: dict[str, int]) -> None:
        """All at once: one request to HAProxy, so the switch lands between two requests."""
        self.client.run_at_once(set_weights(self._backend(), weights))

    def drain_and_remove(self, server: str, drain_timeout: float, dead: bool = False) -> float:
        """No new requests, wait for in-flight ones (bounded), then delete. Returns the wait.
        A `dead` server's sessions can only be stuck connecting to it: they are waited for too,
        since they move to another server when their connect times out."""
        backend = self._backend()
        start = time.monotonic()
        if server not in self.servers():
            self.remove_preview(server)
            return 0.0
        self.client.run((stop_server if dead else drain_server)(backend, server))
        faults.point("draining")
        busy = 0
        while time.monotonic() - start < drain_timeout:
            busy = self.client.in_flight(backend).get(server, 0)
            if dead:
                stat = self.servers().get(server)
                busy += stat.current_sessions if stat else 0
            if busy == 0:
                break
            time.sleep(0.05)
        waited = time.monotonic() - start
        if busy and not dead:  # long-lived streams and slow uploads: the user should know they were cut
            self.out.warn(f"{server}: {busy} connection(s) still busy after drain_timeout ({drain_timeout:g}s) are closed")
        self._remove(backend, server)
        self.remove_preview(server)
        return waited

    def _backend(self) -> str:
        if self.backend is None:
            raise RouterError(f"{self.cfg.app}/{self.cfg.env} has no public service, so its router has no servers.")
        return self.backend

    def remove_preview(self, server: str) -> None:
        if self.preview and server in self.servers(preview=True):
            self._remove(self.preview, server)

    def _remove(self, backend: str, server: str) -> None:
        """Delete the server. HAProxy refuses while connections are still attached to it (its idle
        pool among them); they are cut again and the delete retried until the pool is purged. An
        instance that went away without closing them (its host was lost) leaves its whole pool
        idle, and each purge closes only half of what is idle: up to log2(POOL_MAX_CONN) + 1 purges."""
        deadline = time.monotonic() + POOL_PURGE_MS / 1000 * (POOL_MAX_CONN.bit_length() + 1) + 2.0
        while True:
            try:
                self.client.run(remove_server(backend, server))
                return
            except RouterError as exc:
                if "still has connections" not in exc.message or time.monotonic() > deadline:
                    raise
            time.sleep(0.1)


def haproxy_routers(home: Path, out: Output) -> Callable[[Engine, EnvConfig], HaproxyRouter]:
    """The RouterFactory of a kiln home: router state (config, admin socket) lives under it."""
    return lambda engine, cfg: HaproxyRouter(engine, cfg, home / "routers" / f"{cfg.app}-{cfg.env}", out,
                                             home / "tmp")


def _check_port_free(bind: str, port: int) -> None:
    """Nothing listens on bind:port. Connections a killed router leaves in TIME_WAIT (60 s on
    Linux) do not count: HAProxy binds with SO_REUSEADDR too, and without it here a router the
    agent restarts waited a minute for its own port (bench/results/behaviour.md)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((bind, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(f"port {port} on {bind} is already in use by another program.",
                                "Stop that program, or choose another 'port' for this environment in kiln.yaml.") from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise PortInUse(f"cannot listen on {bind}: no such address on this host.",
                                "Fix 'bind' for this environment in kiln.yaml.") from None
            raise


def _implements(router: HaproxyRouter) -> Router:
    """Never called: mypy checks here that HaproxyRouter implements every method of Router."""
    return router
