"""The router contract (tests/contract/router.py) held against the HAProxy router on a real dockerd:
the router container kiln runs (on the host's network, as on one Docker host), its runtime API,
and instances that are containers of the python3 base serving HTTP on the environment network."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import SESSION
from contract.router import PORT, RouterContract, instance_spec

from kiln.bake.base import ensure_base
from kiln.errors import RouterError
from kiln.output import Output
from kiln.providers.base import ContainerFacts
from kiln.providers.docker import DockerProvider
from kiln.router.haproxy import HaproxyRouter, haproxy_routers
from kiln.router.haproxy_api import remove_server
from kiln.spec.models import Base
from kiln.spec.resolve import EnvConfig

# An instance: its name as the body of every answer, 500 for /fail.
SERVE = f"""
import http.server, sys
class Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = sys.argv[1].encode()
        self.send_response(500 if self.path == "/fail" else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("", {PORT}), Answer).serve_forever()
"""


class TestHaproxyRouter(RouterContract):
    @pytest.fixture
    def engine(self, engine) -> DockerProvider:  # the session's dockerd check (conftest), then the provider
        return DockerProvider({"kiln.test": SESSION})

    @pytest.fixture
    def make_router(self, engine: DockerProvider, tmp_path_factory: pytest.TempPathFactory):
        """kiln's own RouterFactory on a kiln home of this test's (a short path: the admin socket
        lives under it, and a unix socket path has 108 bytes)."""
        routers = haproxy_routers(tmp_path_factory.mktemp("rc"), Output(quiet=True))
        return lambda cfg: routers(engine, cfg)

    @pytest.fixture
    def image(self, engine: DockerProvider, tmp_path: Path) -> str:
        # The quickstart's base (Debian + python3), baked once by scripts/test.sh and cached.
        return ensure_base(engine, Base(packages=("python3",)), Output(quiet=True), tmp_path).tag

    @pytest.fixture
    def instance(self, engine: DockerProvider, image: str):
        def start(cfg: EnvConfig, name: str, answers: bool = True,
                  labels: dict[str, str] | None = None) -> ContainerFacts:
            command = ("python3", "-c", SERVE, name) if answers else ("sleep", "300")
            return engine.start(instance_spec(cfg, name, image, command, labels))
        return start

    @pytest.fixture
    def occupy(self):
        @contextmanager
        def hold(bind: str, port: int) -> Iterator[None]:
            with socket.socket() as sock:
                sock.bind((bind, port))
                sock.listen()
                yield
        return hold

    # --- HAProxy's own rule, which no Router method can break ---------------------------------------

    def test_haproxy_deletes_only_a_server_in_maintenance(self, router: HaproxyRouter, up):
        """Not part of the contract (every Router method that removes a server puts it in
        maintenance first, haproxy_api.remove_server): the rule that order rests on."""
        a = up("a")
        backend = router.backend or ""
        with pytest.raises(RouterError, match="Only servers in maintenance mode can be deleted"):
            router.client.run([f"del server {backend}/{a}"])
        assert router.servers()[a].status == "UP"
        router.client.run(remove_server(backend, a))
        assert a not in router.servers()
