"""Integration fixtures: a real dockerd, the real kiln CLI, HAProxy in its router container, wrk.

Every test makes what it needs: `app` is a fresh private copy of examples/hello (its own name,
ports, kiln home and ledger) for each test, and `deployed` is one already deployed to production.
No test relies on what another one left, so they pass in any order and one failing breaks no other;
release numbers are read back from `kiln releases --json` / `kiln status --json`, never assumed.

Every container and network a test creates carries the label kiln.test=<session id> (through
KILN_EXTRA_LABELS) and is removed by label when the test's app is torn down, with the app's images."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
from cluster import cluster  # noqa: F401  (the session's 3-node swarm and registry: cluster.py)
from ruamel.yaml import YAML

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello"
SESSION = uuid.uuid4().hex[:8]
TEST_LABEL = f"kiln.test={SESSION}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def engine() -> docker.DockerClient:
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(f"integration tests need a running dockerd (scripts/test.sh starts one): {exc}")
    if shutil.which("wrk") is None:
        pytest.fail("integration tests need wrk (scripts/prereqs.sh installs it)")
    yield client
    _remove_labelled(client, {"kiln.test": SESSION})


def _remove_images(client: docker.DockerClient, app: str) -> None:
    """The images kiln baked for `app` (labelled kiln.app; the shared bases are kept)."""
    for image in client.images.list(filters={"label": f"kiln.app={app}"}):
        try:
            client.images.remove(image.id, force=True)
        except docker.errors.APIError:
            pass  # already gone, or still used by a container the session's teardown removes


def _remove_labelled(client: docker.DockerClient, labels: dict[str, str]) -> None:
    selector = [f"{k}={v}" for k, v in labels.items()]
    for c in client.containers.list(all=True, filters={"label": selector}):
        c.remove(force=True, v=True)
    for n in client.networks.list(filters={"label": selector}):
        try:
            n.remove()
        except docker.errors.APIError as exc:  # a cluster's overlay may go away on its own meanwhile
            if "not found" not in str(exc):
                raise
    for v in client.volumes.list(filters={"label": selector}):
        v.remove(force=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class App:
    """A private copy of examples/hello with its own name, ports and kiln home."""

    dir: Path
    name: str
    ports: dict[str, int]
    home: Path

    @property
    def spec(self) -> Path:
        return self.dir / "kiln.yaml"

    def url(self, env: str = "production") -> str:
        return f"http://127.0.0.1:{self.ports[env]}"

    def kiln(self, *args: str, check: bool = True, timeout: float = 300, spec: bool = True) -> subprocess.CompletedProcess:
        """`kiln ARGS -f kiln.yaml` (without -f when not `spec`: commands that read no spec)."""
        env = {**os.environ, "KILN_HOME": str(self.home), "KILN_EXTRA_LABELS": TEST_LABEL}
        env.pop("KILN_LEDGER_URL", None)
        proc = subprocess.run([sys.executable, "-m", "kiln", *args, *(("-f", str(self.spec)) if spec else ())], env=env,
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"kiln {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def kiln_json(self, *args: str) -> object:
        return json.loads(self.kiln(*args, "--json").stdout)

    def releases(self, env: str = "production") -> list[dict]:
        """The environment's releases as the ledger has them, newest first."""
        return self.kiln_json("releases", "-e", env)

    def serving(self, env: str = "production") -> dict:
        """The release `kiln status` reports in service."""
        return self.kiln_json("status", "-e", env)["release"]

    def popen(self, *args: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
        env = {**os.environ, "KILN_HOME": str(self.home), "KILN_EXTRA_LABELS": TEST_LABEL, **(extra_env or {})}
        env.pop("KILN_LEDGER_URL", None)
        return subprocess.Popen([sys.executable, "-m", "kiln", *args, "-f", str(self.spec)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def edit_spec(self, change: Callable[[dict], None]) -> None:
        yaml = YAML()
        data = yaml.load(self.spec)
        change(data)
        yaml.dump(data, self.spec)

    def set_rollout(self, **policy: object) -> None:
        def change(data: dict) -> None:
            data["services"]["web"]["rollout"] = policy
        self.edit_spec(change)

    def set_code(self, old: str, new: str) -> None:
        """Change app.py (a bad release); `restore_code` puts the good one back."""
        path = self.dir / "app.py"
        self._good = getattr(self, "_good", None) or path.read_text()
        assert old in self._good, old
        path.write_text(self._good.replace(old, new, 1))

    def restore_code(self) -> None:
        if getattr(self, "_good", None):
            (self.dir / "app.py").write_text(self._good)
            self._good = None

    def set_message(self, message: str) -> None:
        path = self.dir / "app.py"
        path.write_text(re.sub(r'^MESSAGE = .*$', f"MESSAGE = {message!r}", path.read_text(), flags=re.M))


def make_app(root: Path) -> App:
    name = "t" + uuid.uuid4().hex[:7]
    target = root / name
    shutil.copytree(EXAMPLE, target)
    ports = {"production": free_port(), "staging": free_port()}
    text = (target / "kiln.yaml").read_text()
    text = text.replace("app: hello", f"app: {name}")
    text = text.replace("port: 8080", f"port: {ports['production']}").replace("port: 8081", f"port: {ports['staging']}")
    (target / "kiln.yaml").write_text(text)
    return App(target, name, ports, root / "home")


@pytest.fixture
def app(engine: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory) -> App:
    """A fresh app for this test alone: nothing deployed, an empty ledger. (A short directory, not
    tmp_path: HAProxy's admin socket lives under KILN_HOME and a unix socket path has 108 bytes.)"""
    made = make_app(tmp_path_factory.mktemp("app"))
    yield made
    _remove_labelled(engine, {"kiln.test": SESSION, "kiln.app": made.name})
    _remove_images(engine, made.name)


@pytest.fixture
def deployed(app: App) -> App:
    """A fresh app with one release serving in production; the test reads its number and image
    back (`app.serving()`, `app.releases()`) rather than assuming them."""
    app.kiln("deploy")
    return app


@dataclass(frozen=True)
class Load:
    requests: int
    non_2xx: int
    socket_errors: int
    rps: float
    text: str


class Wrk:
    """wrk sending keep-alive load for a fixed time; read the result after it ends."""

    def __init__(self, url: str, seconds: int, connections: int = 16) -> None:
        self.proc = subprocess.Popen(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", url],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def result(self) -> Load:
        out, _ = self.proc.communicate(timeout=120)
        requests = int(re.search(r"(\d+) requests in", out).group(1))
        non = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        return Load(requests, int(non.group(1)) if non else 0,
                    sum(int(g) for g in sock.groups()) if sock else 0, rps, out)
