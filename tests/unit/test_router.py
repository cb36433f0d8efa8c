"""kiln.router: HAProxy's static config (golden) and its runtime API (commands, parsers, client)."""

from __future__ import annotations

import os
import socketserver
import tempfile
import threading
from pathlib import Path

import pytest

from kiln.errors import RouterError
from kiln.router.config import backend_name, render_config
from kiln.router.haproxy_api import (
    RuntimeClient,
    ServerStat,
    add_server,
    drain_server,
    parse_conns,
    parse_stat,
    remove_server,
    set_weights,
)
from kiln.spec.loader import parse_spec
from kiln.spec.resolve import resolve

SPEC = """\
app: shop
build: {steps: [COPY . /app]}
services:
  web:
    port: 8000
    HEALTH
  worker:
    command: [w]
environments:
  production: {port: 8080}
"""


def cfg(health="", spec=SPEC):
    text = spec.replace("    HEALTH\n", health)
    return resolve(parse_spec(text), "production")


def lines(text):
    return text.splitlines()


# --- static config ------------------------------------------------------------------------------


def test_config_frontend_and_retries():
    out = lines(render_config(cfg()))
    assert out[0].startswith("# written by kiln")
    for line in [
        "global",
        "    stats socket /run/kiln/admin.sock mode 600 level admin",
        "defaults",
        "    mode http",
        "    retries 3",
        "    option redispatch 1",
        "    retry-on conn-failure empty-response response-timeout",
        "frontend public",
        "    bind :8080",
        "    http-request return status 200 content-type text/plain string ok if { path /_kiln/router }",
        "    default_backend svc-web",
        "backend svc-web",
        "    balance roundrobin",
    ]:
        assert line in out, line
    # the retry settings live in defaults, so they apply to the backend too
    assert out.index("defaults") < out.index("    retries 3") < out.index("frontend public")
    assert out.index("frontend public") < out.index("    bind :8080") < out.index("backend svc-web")


def test_config_binds_the_given_port():
    c = cfg().model_copy(update={"port": 9999})
    assert "    bind :9999" in lines(render_config(c))
    assert "    bind :8080" not in lines(render_config(c))


def test_config_ends_with_newline_and_has_no_tabs():
    text = render_config(cfg())
    assert text.endswith("\n") and "\t" not in text


def test_http_healthcheck_adds_httpchk_with_its_path():
    out = lines(render_config(cfg("    healthcheck: {http: /healthz}\n")))
    assert "    option httpchk GET /healthz" in out
    assert "    http-check expect status 200-399" in out
    assert out.index("backend svc-web") < out.index("    option httpchk GET /healthz")


@pytest.mark.parametrize("health", ["", "    healthcheck: {tcp: true}\n", "    healthcheck: {command: [/bin/check]}\n"])
def test_other_healthchecks_have_no_httpchk(health):
    text = render_config(cfg(health))
    assert "httpchk" not in text and "http-check" not in text
    assert "backend svc-web" in text


def test_public_service_chooses_the_backend():
    spec = SPEC.replace("    command: [w]\n", "    command: [w]\n    port: 9000\n    public: true\n")
    out = lines(render_config(cfg(spec=spec)))
    assert "    default_backend svc-worker" in out and "backend svc-worker" in out
    assert "backend svc-web" not in out


def test_no_backend_without_a_public_service():
    spec = SPEC.replace("    port: 8000\n    HEALTH\n", "    command: [web]\n")
    text = render_config(cfg(spec=spec))
    assert "backend" not in text  # neither a backend section nor default_backend
    assert '    http-request return status 503 content-type text/plain string "no public service"' in lines(text)
    assert "    bind :8080" in lines(text)


def test_backend_name():
    assert backend_name("web") == "svc-web"


# --- runtime commands -------------------------------------------------------------------------------


def test_add_server_commands():
    assert add_server("svc-web", "kiln-shop-production-web-v2-abc123", "172.18.0.5", 8000, 250) == [
        "add server svc-web/kiln-shop-production-web-v2-abc123 172.18.0.5:8000 weight 100 check inter 250 fall 2 rise 1 "
        "observe layer4 error-limit 2 on-error mark-down pool-max-conn 128 pool-purge-delay 1000",
        "enable health svc-web/kiln-shop-production-web-v2-abc123",
        "enable server svc-web/kiln-shop-production-web-v2-abc123",
    ]


def test_drain_server_commands():
    assert drain_server("svc-web", "a") == ["set server svc-web/a state drain"]


def test_remove_server_commands():
    assert remove_server("svc-web", "a") == [
        "set server svc-web/a state maint",
        "shutdown sessions server svc-web/a",
        "del server svc-web/a",
    ]


# --- parsers -----------------------------------------------------------------------------------------

STAT = """\
# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,act,bck,addr,
public,FRONTEND,,,3,10,4096,120,1000,2000,0,0,0,,,,,OPEN,,,,,
svc-web,kiln-shop-production-web-v1-aaaaaa,0,0,2,5,,60,500,900,,0,,0,0,0,0,UP,1,1,0,172.18.0.5:8000,
svc-web,kiln-shop-production-web-v2-bbbbbb,1,2,0,3,,7,100,200,,0,,0,0,0,0,DOWN 1/2,1,1,0,172.18.0.6:8000,
svc-web,kiln-shop-production-web-v2-cccccc,0,0,0,0,,0,0,0,,0,,0,0,0,0,MAINT,0,1,0,172.18.0.7:8000,
svc-web,BACKEND,1,2,2,8,410,67,600,1100,0,0,,0,0,0,0,UP,2,2,0,,

"""


def test_parse_stat_keeps_only_servers():
    stats = parse_stat(STAT)
    assert stats == [
        ServerStat("svc-web", "kiln-shop-production-web-v1-aaaaaa", "UP", 2, 0, 60, 1, "172.18.0.5:8000"),
        ServerStat("svc-web", "kiln-shop-production-web-v2-bbbbbb", "DOWN 1/2", 0, 1, 7, 1, "172.18.0.6:8000"),
        ServerStat("svc-web", "kiln-shop-production-web-v2-cccccc", "MAINT", 0, 0, 0, 0, "172.18.0.7:8000"),
    ]


def test_parse_stat_reads_columns_by_name():
    text = "# svname,pxname,status,scur\nsrv1,svc-api,UP,4\nBACKEND,svc-api,UP,4\n"
    assert parse_stat(text) == [ServerStat("svc-api", "srv1", "UP", 4, 0, 0, 0, "")]


def test_parse_stat_of_empty_reply():
    assert parse_stat("") == []


CONNS = (
    "# bkname/svname bkid/svid addr port - purge_delay used_cur used_max need_est unsafe_nb safe_nb idle_lim idle_cur idle_per_thr[2]\n"
    "svc-web/a 3/1 127.0.0.1 9101 - 0 0 21 21 0 0 0 0\n"
    "svc-web/b 3/2 127.0.0.1 9102 - 0 20 20 20 0 0 0 0"
)


def test_parse_conns():
    assert parse_conns(CONNS) == {"a": 0, "b": 20}


def test_parse_conns_without_a_header():
    assert parse_conns("") == {}
    assert parse_conns("Can't find backend.\n") == {}


def test_parse_conns_of_a_backend_without_servers():
    assert parse_conns(CONNS.splitlines()[0] + "\n") == {}


# --- the client, against a real unix socket -------------------------------------------------------------


class FakeHAProxy(socketserver.UnixStreamServer):
    """Answers one command per connection, like HAProxy's admin socket in non-interactive mode."""

    def __init__(self, path: str, replies: dict[str, str]):
        self.replies = replies
        self.received: list[str] = []
        super().__init__(path, Handler)


class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        command = self.rfile.readline().decode().rstrip("\n")
        self.server.received.append(command)
        reply = self.server.replies.get(command, "Unknown command.")
        self.wfile.write(reply.encode() + b"\n\n")


@pytest.fixture
def haproxy(tmp_path):
    # AF_UNIX paths are limited to ~107 bytes; pytest's tmp_path can be longer.
    short = None
    path = tmp_path / "admin.sock"
    if len(str(path)) > 100:
        short = tempfile.mkdtemp(prefix="kiln-")
        path = Path(short) / "admin.sock"
    replies = {}
    server = FakeHAProxy(str(path), replies)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield server, path, replies
    server.shutdown()
    server.server_close()
    thread.join(timeout=2)
    if short:
        os.unlink(path)
        os.rmdir(short)


def test_client_run_accepts_ok_replies(haproxy):
    server, path, replies = haproxy
    commands = add_server("svc-web", "a", "10.0.0.2", 8000, 100)
    replies.update({commands[0]: "New server registered.", commands[1]: "", commands[2]: ""})
    RuntimeClient(path, timeout=2).run(commands)
    assert server.received == commands


def test_client_run_accepts_server_deleted(haproxy):
    server, path, replies = haproxy
    commands = remove_server("svc-web", "a")
    replies.update({commands[0]: "", commands[1]: "", commands[2]: "Server deleted."})
    RuntimeClient(path, timeout=2).run(commands)
    assert server.received == commands


def test_client_run_raises_on_unexpected_reply_and_stops(haproxy):
    server, path, replies = haproxy
    commands = add_server("svc-web", "a", "10.0.0.2", 8000, 100)
    replies[commands[0]] = "Already exists a server with the same name in backend."
    with pytest.raises(RouterError) as info:
        RuntimeClient(path, timeout=2).run(commands)
    assert commands[0] in info.value.message
    assert "Already exists a server" in info.value.message
    assert server.received == commands[:1]  # nothing after the refused command


def test_client_stats_and_in_flight(haproxy):
    server, path, replies = haproxy
    replies.update({"show stat": STAT, "show servers conn svc-web": CONNS})
    client = RuntimeClient(path, timeout=2)
    assert [s.name for s in client.stats()] == [
        "kiln-shop-production-web-v1-aaaaaa", "kiln-shop-production-web-v2-bbbbbb", "kiln-shop-production-web-v2-cccccc",
    ]
    assert client.in_flight("svc-web") == {"a": 0, "b": 20}
    assert server.received == ["show stat", "show servers conn svc-web"]


def test_client_without_a_socket_raises_router_error(tmp_path):
    with pytest.raises(RouterError) as info:
        RuntimeClient(tmp_path / "missing.sock", timeout=1).ask("show info")
    assert "cannot reach HAProxy's admin socket" in info.value.message
    assert info.value.hint


def test_set_weights_raises_before_it_lowers():
    # Lowering the old set first would leave a moment with no weight at all: 503s.
    assert set_weights("svc-web", {"a-old": 0, "b-new": 100, "c-new": 100}) == [
        "set server svc-web/b-new weight 100",
        "set server svc-web/c-new weight 100",
        "set server svc-web/a-old weight 0",
    ]


def test_the_default_router_factory_keeps_each_environments_state_under_kiln_home(tmp_path):
    from kiln.output import Output
    from kiln.providers.fake import FakeEngine
    from kiln.router.haproxy import haproxy_routers
    from kiln.spec.loader import parse_spec
    from kiln.spec.resolve import resolve

    cfg = resolve(parse_spec("app: shop\nbuild: {steps: ['COPY . /app']}\nservices: {web: {port: 8000}}\n"
                             "environments: {production: {port: 8080}}\n"), "production")
    router = haproxy_routers(tmp_path, Output(quiet=True))(FakeEngine(), cfg)
    assert router.dir == tmp_path / "routers" / "shop-production"
    assert router.name == "kiln-shop-production-router"
