"""How docker_inspect_running.json, docker_inspect_exited.json and docker_events.jsonl were
captured (not a test; run by hand, once, against a real engine):

    flock /tmp/kiln-integration.lock env PYTHONPATH=src .venv/bin/python tests/unit/data/capture_docker.py

It imports a tiny rootfs (dash, sleep, true, false, cat and libc from the host), starts
containers through DockerProvider.start (so with kiln's own create arguments) on the kiln
network kiln-golden-capture, makes them produce the events the agent reads (health_status,
exec_start, die, oom), stores the engine's raw answers byte for byte, and removes everything
it created (all of it is labelled kiln.test=golden).

The events are read from a live /events stream opened before the first container starts (the
engine keeps only its last 256 events for `since`, and an OOM kill on cgroup v1 alone sent ~240
`oom` events for one container). Of those repeated `oom` lines only the first per container is
kept; every other line is stored as the engine sent it."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
from pathlib import Path

from kiln.providers.docker import DockerProvider
from kiln.rollout.instances import instance_spec
from kiln.spec.loader import parse_spec
from kiln.spec.resolve import resolve

HERE = Path(__file__).parent
TAG = "kiln-golden/rootfs:capture"
NET = "kiln-golden-capture"
SPEC = """\
app: golden
build: {steps: ["COPY . /app"]}
services:
  web:
    command: [sleep, "3600"]
    port: 8000
    replicas: 1
    environment: {GREETING: hello}
    healthcheck: {command: [/bin/true], interval: 1s, timeout: 1s}
environments:
  capture: {port: 18999}
"""
RUNNING = "kiln-golden-capture-web-v1-0a1b2c"
SICK = "kiln-golden-capture-web-v1-3d4e5f"
EXITED = "kiln-golden-capture-web-v1-6a7b8c"
OOM = "kiln-golden-capture-web-v1-9d0e1f"


def rootfs(tmp: Path) -> Path:
    root = tmp / "root"
    for binary, inside in (("/usr/bin/dash", "bin/sh"), ("/usr/bin/sleep", "bin/sleep"), ("/usr/bin/true", "bin/true"),
                           ("/usr/bin/false", "bin/false"), ("/usr/bin/cat", "bin/cat"),
                           ("/lib/x86_64-linux-gnu/libc.so.6", "lib/x86_64-linux-gnu/libc.so.6"),
                           ("/lib64/ld-linux-x86-64.so.2", "lib64/ld-linux-x86-64.so.2")):
        (root / inside).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(binary).resolve(), root / inside)
    (root / "tmp").mkdir()
    tarball = tmp / "rootfs.tar"
    with tarfile.open(tarball, "w") as tar:
        tar.add(root, arcname=".")
    return tarball


def wait_for(check, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise TimeoutError(check)
        time.sleep(0.2)


def main() -> None:
    docker = DockerProvider(extra_labels={"kiln.test": "golden"})
    cfg = resolve(parse_spec(SPEC), "capture")
    web = cfg.service("web")
    api = docker.docker.api
    stream = api.events(filters={"type": "container", "label": ["kiln.test=golden"]}, decode=False)
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(stream), daemon=True)
    reader.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            image = docker.import_rootfs(rootfs(Path(tmp)), TAG, {"kiln.test": "golden"}, ['CMD ["sh"]'])
        docker.ensure_network(NET, {"kiln.app": "golden", "kiln.env": "capture"})
        docker.start(instance_spec(cfg, web, 1, image, RUNNING))
        docker.start(instance_spec(cfg, web.model_copy(update={"healthcheck": web.healthcheck.model_copy(
            update={"command": ("/bin/false",)})}), 1, image, SICK))
        docker.start(instance_spec(cfg, web.model_copy(update={"command": ("sh", "-c", "exit 3")}), 1, image, EXITED))
        wait_for(lambda: docker.container(RUNNING).health == "healthy")
        wait_for(lambda: docker.container(SICK).health == "unhealthy")
        wait_for(lambda: docker.container(EXITED).state == "exited")
        subprocess.run(["docker", "exec", RUNNING, "sh", "-c", "echo hi"], check=True, capture_output=True)
        # The provider sets no memory limit; the CLI does, with the same labels and network.
        labels = instance_spec(cfg, web, 1, image, OOM).labels
        subprocess.run(["docker", "run", "-d", "--name", OOM, "--network", NET, "--memory", "16m",
                        "--memory-swap", "16m", "--label", "kiln.test=golden",
                        *[f"--label={k}={v}" for k, v in labels.items()],
                        image, "sh", "-c", "x=$(cat /dev/urandom)"], check=True, capture_output=True)
        wait_for(lambda: docker.container(OOM).state == "exited", timeout=120)
        for name, file in ((RUNNING, "docker_inspect_running.json"), (EXITED, "docker_inspect_exited.json")):
            (HERE / file).write_text(api.get(f"{api.base_url}/containers/{name}/json").text)
        time.sleep(1.0)
        stream.close()
        reader.join(5)
        lines, ooms = [], set()
        for line in b"".join(chunks).splitlines(keepends=True):
            if b'"Action":"oom"' in line:
                name = json.loads(line)["Actor"]["Attributes"]["name"]
                if name in ooms:
                    continue
                ooms.add(name)
            lines.append(line)
        (HERE / "docker_events.jsonl").write_bytes(b"".join(lines))
    finally:
        for name in (RUNNING, SICK, EXITED, OOM):
            docker.remove(name)
        docker.remove_network(NET)
        with contextlib.suppress(Exception):
            docker.remove_image(TAG)


if __name__ == "__main__":
    main()
