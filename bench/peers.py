"""The peers, run for real on the same images: Debian's docker-compose (`up -d` to a new image)
and Docker Swarm on this machine (`docker service update --update-order start-first` with a
health check, through the routing mesh); and the floor (N plain containers started in parallel,
each answering its health check once)."""

from __future__ import annotations

import concurrent.futures
import json
import os
import time
import urllib.request
from pathlib import Path

import docker

from bench.harness import LABEL, LABEL_ARG, engine, log, sh

COMMAND = ["python3", "/app/app.py"]
USER = "65534"  # as examples/hello's kiln.yaml
# A health check as cheap as the image allows (it has bash, no curl): one HTTP request per check.
HEALTH = ("bash -c 'exec 3<>/dev/tcp/127.0.0.1/8000 && printf \"GET /health HTTP/1.0\\r\\n\\r\\n\" >&3 "
          "&& head -1 <&3 | grep -q \" 200 \"'")
INTERVAL = "500ms"  # the same interval as examples/hello's kiln.yaml


class Compose:
    """One `web` service publishing the port, as a compose user runs it; `up -d` with a new IMAGE
    recreates the container (stop the old one, start the new one)."""

    def __init__(self, root: Path, port: int) -> None:
        self.dir = root / "compose"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port
        label = {LABEL[0]: LABEL[1]}
        web = {"image": "${IMAGE}", "command": COMMAND, "user": USER, "init": True, "read_only": True,
               "ports": [f"127.0.0.1:{port}:8000"], "labels": label, "stop_grace_period": "10s",
               "healthcheck": {"test": ["CMD-SHELL", HEALTH], "interval": INTERVAL}}
        spec = {"version": "2.4", "services": {"web": web}, "networks": {"default": {"labels": label}}}
        (self.dir / "docker-compose.yml").write_text(json.dumps(spec, indent=2))  # JSON is YAML

    def _run(self, image: str, *args: str) -> str:
        env = {**os.environ, "IMAGE": image}
        return sh("docker-compose", "-p", "kilnbench", "-f", str(self.dir / "docker-compose.yml"), *args, env=env)

    def up(self, image: str) -> None:
        self._run(image, "up", "-d")

    def down(self) -> None:
        self._run("none", "down", "-v", "--remove-orphans")

    @staticmethod
    def version() -> str:
        return sh("docker-compose", "version", "--short").strip()


class Swarm:
    """A single-node swarm made for the bench and left again afterwards."""

    def __init__(self) -> None:
        self.ours = False

    def init(self) -> None:
        state = engine().info()["Swarm"]["LocalNodeState"]
        if state == "active":
            log("this engine is already a swarm manager: using it, and not leaving it afterwards")
            return
        sh("docker", "swarm", "init", "--advertise-addr", "127.0.0.1")
        self.ours = True

    def leave(self) -> None:
        if self.ours:
            sh("docker", "swarm", "leave", "--force", check=False)
            self.ours = False

    def create(self, name: str, image: str, replicas: int, port: int | None = None) -> None:
        publish = ["--publish", f"published={port},target=8000"] if port else []
        sh("docker", "service", "create", "--detach", "--no-resolve-image", "--name", name,
           "--label", LABEL_ARG, "--container-label", LABEL_ARG, "--replicas", str(replicas), *publish,
           "--update-order", "start-first", "--update-parallelism", "0", "--update-delay", "0s",
           "--health-cmd", HEALTH, "--health-interval", INTERVAL, "--health-retries", "1",
           "--health-timeout", "2s", "--user", USER, "--init", "--read-only", "--stop-grace-period", "10s",
           image, *COMMAND)
        self.wait(name, image, replicas)

    def update(self, name: str, image: str, replicas: int) -> float:
        """`docker service update` to `image`; seconds until every task runs (healthy) on the new
        image and no old task still runs."""
        began = time.monotonic()
        sh("docker", "service", "update", "--detach", "--no-resolve-image", "--image", image, name)
        self.wait(name, image, replicas)
        return time.monotonic() - began

    def wait(self, name: str, image: str, replicas: int, timeout: float = 180) -> None:
        client = engine()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            tasks = client.services.get(name).tasks()
            new = [t for t in tasks if t["Spec"]["ContainerSpec"]["Image"] == image
                   and t["DesiredState"] == "running" and t["Status"]["State"] == "running"]
            old = [t for t in tasks if t["Spec"]["ContainerSpec"]["Image"] != image
                   and t["Status"]["State"] in ("running", "starting", "preparing", "assigned", "accepted", "ready")]
            if len(new) == replicas and not old:
                return
            time.sleep(0.05)
        raise RuntimeError(f"swarm service {name} did not converge on {image} within {timeout:.0f}s")

    def remove(self, name: str) -> None:
        sh("docker", "service", "rm", name, check=False)
        client = engine()
        deadline = time.monotonic() + 60  # its containers go away asynchronously
        while time.monotonic() < deadline and client.containers.list(
                all=True, sparse=True, filters={"label": f"com.docker.swarm.service.name={name}"}):
            time.sleep(0.2)


def floor(image: str, replicas: int, network: str) -> float:
    """Seconds to create and start `replicas` containers of `image` in parallel (the Engine API,
    as kiln uses it) and see each answer GET /health once: the least any deploy tool can take."""
    client = engine()

    def one(i: int) -> None:
        c = client.containers.run(image, COMMAND, detach=True, user=USER, init=True, read_only=True,
                                  network=network, labels={LABEL[0]: LABEL[1], "kiln.bench": "floor"},
                                  name=f"kilnbench-floor-{os.getpid()}-{i}")
        c.reload()
        ip = c.attrs["NetworkSettings"]["Networks"][network]["IPAddress"]
        while True:
            try:
                with urllib.request.urlopen(f"http://{ip}:8000/health", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.01)

    began = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=replicas) as pool:
        list(pool.map(one, range(replicas)))
    took = time.monotonic() - began
    for c in client.containers.list(all=True, sparse=True, filters={"label": "kiln.bench=floor"}):
        c.remove(force=True)
    return took


def bench_network() -> str:
    name = f"kilnbench-{os.getpid()}"
    try:
        engine().networks.get(name)
    except docker.errors.NotFound:
        engine().networks.create(name, labels={LABEL[0]: LABEL[1]})
    return name
