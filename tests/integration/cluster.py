"""The three-node Docker Swarm and TLS registry of scripts/cluster.sh, for tests that need them.

`cluster` is a session fixture (conftest.py makes it available to every integration test): it runs
`scripts/cluster.sh up` once, when the first test asks for it, and `scripts/cluster.sh down` when the
session ends (KILN_CLUSTER_KEEP=1 leaves it up, to rerun tests against it quickly). One test session
at a time has it: another one waits for it (up to KILN_CLUSTER_WAIT seconds, 1800). Tests that use
it are marked `cluster`.

The nodes are named as the script names them: "local" is the machine's own dockerd (the swarm's
manager, label kiln.router=true), "kiln-n1" and "kiln-n2" are one dockerd each in a network
namespace (workers, label pool=web), with swarm hostnames kiln-n1 and kiln-n2. The registry is
https://10.77.0.1:5000 (no auth, delete enabled); every dockerd here trusts its CA.

This kernel has no IPVS: services must use --endpoint-mode dnsrr (a VIP never answers) and
host-mode published ports (the ingress routing mesh does not work)."""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "cluster.sh"
LOCAL = "local"


def _script(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)


def _env() -> dict[str, str]:
    """`scripts/cluster.sh env`'s KEY=VALUE lines."""
    out = _script("env", timeout=30)
    if out.returncode != 0:
        raise AssertionError(f"scripts/cluster.sh env exited {out.returncode}\n{out.stderr}")
    pairs = (shlex.split(line)[0].split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    return {key: value for key, value in pairs}


@dataclass
class Cluster:
    registry: str  # "10.77.0.1:5000"
    nodes: dict[str, str]  # "local", "kiln-n1", "kiln-n2" -> docker host URL (unix://…)
    ca: Path  # the registry's CA certificate
    probe_image: str | None  # what `up` pushed and pulled by digest (registry/kiln/probe@sha256:…)

    @classmethod
    def from_script(cls) -> Cluster:
        env = _env()
        nodes = {LOCAL: env["KILN_CLUSTER_MANAGER"]}
        for item in env["KILN_CLUSTER_NODES"].split():
            name, url = item.split("=", 1)
            nodes[name] = url
        return cls(env["KILN_CLUSTER_REGISTRY"], nodes, Path(env["KILN_CLUSTER_CA"]),
                   env.get("KILN_CLUSTER_PROBE_IMAGE") or None)

    @property
    def workers(self) -> list[str]:
        return [name for name in self.nodes if name != LOCAL]

    def hostname(self, node: str) -> str:
        """The node's hostname as the swarm lists it (`docker node ls`, {{.Node.Hostname}}): a
        worker's is its name (the script gives each node's dockerd its own UTS namespace), the
        manager's the machine's."""
        if node != LOCAL:
            return node
        return self.docker(LOCAL, "info", "--format", "{{.Name}}").stdout.strip()

    def docker(self, node: str, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        """The docker CLI against one node's dockerd ("local" is the manager)."""
        proc = subprocess.run(["docker", "-H", self.nodes[node], *args], capture_output=True, text=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"docker -H {self.nodes[node]} {' '.join(args)} exited {proc.returncode}\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    def docker_json(self, node: str, *args: str) -> list[dict]:
        """A docker command run with --format '{{json .}}': one object a line."""
        out = self.docker(node, *args, "--format", "{{json .}}").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def node_dockerd_stop(self, name: str) -> None:
        """Stop one worker's dockerd as `scripts/cluster.sh node-stop` does (SIGTERM, then SIGKILL
        after 30 s); the manager lists the node Down a few seconds later."""
        self._node("node-stop", name)

    def node_dockerd_start(self, name: str) -> None:
        """Start it again (`scripts/cluster.sh node-start`): returns once its dockerd answers; it
        rejoins the swarm as the same node (see `wait_node`)."""
        self._node("node-start", name)

    def _node(self, verb: str, name: str) -> None:
        if name == LOCAL:
            raise ValueError("the manager is the machine's own dockerd: only the workers stop and start")
        out = _script(verb, name, timeout=120)
        if out.returncode != 0:
            raise AssertionError(f"scripts/cluster.sh {verb} {name} exited {out.returncode}\n{out.stderr}")

    def registry_stop(self) -> None:
        """An outage: the registry's process stops (`scripts/cluster.sh registry-stop`)."""
        self._run("registry-stop")

    def registry_start(self) -> None:
        self._run("registry-start")

    @property
    def manager(self) -> str:
        """The manager's hostname as the swarm lists it."""
        return self.hostname(LOCAL)

    def node_stop(self, hostname: str) -> None:
        """Stop the dockerd of the worker the swarm calls `hostname` (kiln status names it so)."""
        self.node_dockerd_stop(self._node_named(hostname))

    def node_start(self, hostname: str) -> None:
        self.node_dockerd_start(self._node_named(hostname))
        self.wait_node(self._node_named(hostname), "Ready")

    def _node_named(self, hostname: str) -> str:
        return next(n for n in self.workers if self.hostname(n) == hostname)

    def remove_services(self, labels: dict[str, str]) -> None:
        """Services a test left (kiln instances of a cluster environment), then their tasks' networks."""
        selector = [f"label={k}={v}" for k, v in labels.items()]
        filters = [arg for item in selector for arg in ("--filter", item)]
        ids = self.docker(LOCAL, "service", "ls", "-q", *filters).stdout.split()
        if ids:
            self.docker(LOCAL, "service", "rm", *ids, check=False)
        for _ in range(50):  # a network can go once no task is attached to it any more
            nets = self.docker(LOCAL, "network", "ls", "-q", *filters).stdout.split()
            if not nets or self.docker(LOCAL, "network", "rm", *nets, check=False).returncode == 0:
                return
            time.sleep(0.2)

    def _run(self, verb: str) -> None:
        out = _script(verb, timeout=120)
        if out.returncode != 0:
            raise AssertionError(f"scripts/cluster.sh {verb} exited {out.returncode}\n{out.stderr}")

    def node_status(self) -> dict[str, str]:
        """Swarm hostname -> status ("Ready", "Down", …) as the manager has it."""
        return {n["Hostname"]: n["Status"] for n in self.docker_json(LOCAL, "node", "ls")}

    def wait_node(self, name: str, status: str, timeout: float = 60) -> float:
        """Wait until the manager lists the node with this status; the seconds it took."""
        began = time.monotonic()
        while (seen := self.node_status().get(self.hostname(name))) != status:
            if time.monotonic() - began > timeout:
                raise AssertionError(f"{name} is {seen!r}, not {status!r}, after {timeout:.0f}s")
            time.sleep(0.2)
        return time.monotonic() - began


# Held by the test session that uses the cluster, from its `up` to its `down`: the machine has one
# cluster, and a second session (another checkout's pytest) must neither tear it down under the
# first nor stop its nodes in the middle of the first's tests. Not /tmp/kiln-integration.lock:
# pytest itself may run under `flock /tmp/kiln-integration.lock`, and would then wait for itself.
SESSION_LOCK = Path("/run/kiln-cluster-session.lock")
SESSION_LOCK_WAIT = float(os.environ.get("KILN_CLUSTER_WAIT", "1800"))


@contextmanager
def _session_lock() -> Iterator[None]:
    with open(SESSION_LOCK, "a") as held:  # not inherited by the script's daemons (O_CLOEXEC)
        began = time.monotonic()
        while True:
            try:
                fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() - began > SESSION_LOCK_WAIT:
                    pytest.fail(f"another test session has held {SESSION_LOCK} (the cluster) for "
                                f"{SESSION_LOCK_WAIT:.0f}s")
                time.sleep(1)
        yield


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The cluster, up for the rest of the session (once), down at its end; one session at a time."""
    with _session_lock():
        up = _script("up")
        if up.returncode != 0:
            _script("down")  # leave no half-built cluster behind
            pytest.fail(f"scripts/cluster.sh up exited {up.returncode}\n{up.stderr[-4000:]}")
        try:
            yield Cluster.from_script()
        finally:
            if os.environ.get("KILN_CLUSTER_KEEP") != "1":
                down = _script("down")
                if down.returncode != 0:
                    raise AssertionError(f"scripts/cluster.sh down exited {down.returncode}\n{down.stderr[-4000:]}")
