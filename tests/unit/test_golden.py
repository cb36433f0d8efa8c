"""Golden values: what kiln computes from fixed inputs, pinned as literals.

Releases record the inputs hash of their image and the digest of their resolved config, and
`kiln recreate` / "Nothing to do" / image reuse compare them with freshly computed ones. A change
to how either is computed (a new field in the resolved config, another JSON layout, another
file order) silently makes every recorded release look different: these tests must then fail,
and whoever changes the function decides, knowingly, whether RECIPE_VERSION needs a bump and
what old releases become. Do not "fix" a failure here by pasting the new value.

The container create arguments are pinned for the same reason: they are what hardening means
on the engine. The parsers are checked against real captures (tests/unit/data, see the
capture_*.py scripts there for how each was made)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from kiln.agent.drift import exec_detail
from kiln.bake.context import ContextFile, hash_context, list_context, read_dockerignore
from kiln.bake.inputs import RECIPE_VERSION, app_inputs_hash, base_inputs_hash, render_dockerfile
from kiln.output import Output
from kiln.providers.base import ContainerFacts, EngineEvent
from kiln.providers.docker_api import _facts, create_args, parse_event
from kiln.rollout.instances import instance_spec
from kiln.router import haproxy
from kiln.router.haproxy_api import ServerStat, parse_conns, parse_stat
from kiln.spec.loader import parse_spec
from kiln.spec.models import Base
from kiln.spec.resolve import EnvConfig, canonical_json, resolve

DATA = Path(__file__).parent / "data"

# --- the inputs hash ---------------------------------------------------------------------------

CONTEXT = {  # path: (content, mode)
    ".dockerignore": ("*.log\nsecret/\n!keep.log\n", 0o644),
    "app.py": ("print('hello')\n", 0o644),
    "bin/run": ("#!/bin/sh\nexec python3 /app/app.py\n", 0o755),
    "requirements.txt": ("flask==3.0.0\n", 0o644),
    "debug.log": ("noise\n", 0o644),  # ignored by *.log
    "keep.log": ("kept\n", 0o600),  # re-included by !keep.log
    "secret/key": ("k\n", 0o600),  # ignored with its directory
}
BASE = Base(suite="bookworm", mirror="http://deb.debian.org/debian", packages=("python3", "curl"))
BASE_DIGEST = "sha256:" + "ab" * 32
STEPS = ("COPY . /app", "RUN chmod +x /app/bin/run")
ARGS = {"VERSION": "1.2.3", "MODE": "prod"}


@pytest.fixture
def context(tmp_path: Path) -> Path:
    for rel, (text, mode) in CONTEXT.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        os.chmod(path, mode)  # not left to the umask
    return tmp_path


def test_recipe_version_is_pinned():
    assert RECIPE_VERSION == "1"  # bumping it is how a changed recipe invalidates baked images


def test_context_listing_and_file_digests(context):
    paths = list_context(context, read_dockerignore(context))
    assert paths == [".dockerignore", "app.py", "bin/run", "keep.log", "requirements.txt"]
    assert hash_context(context, paths) == [
        ContextFile(".dockerignore", 0o644, "df13914cf861de144ebb99605d84d30856e09f0eac0e3949adc6b001055c842b"),
        ContextFile("app.py", 0o644, "03e693d9f2f687e0f40e36a8df7fcb4d1c22974012b7c2a55c000eb30f305824"),
        ContextFile("bin/run", 0o755, "ee4d475c4161b662b0916c90b355aa9e7158e8f183f32b646c5e11633592e7db"),
        ContextFile("keep.log", 0o600, "78051faade059d70866df6a3fb83ef348721fd74a87e93ef95c493f87d0d236b"),
        ContextFile("requirements.txt", 0o644, "2fb5f25b9caf361a02d485d4d43ed2a6bdba9c1ba828d4e9632c5a3d8767e52d"),
    ]


def test_app_inputs_hash_of_a_fixed_context(context):
    files = hash_context(context, list_context(context, read_dockerignore(context)))
    dockerfile = render_dockerfile(STEPS)
    assert dockerfile == "ARG KILN_BASE\nFROM ${KILN_BASE}\nCOPY . /app\nRUN chmod +x /app/bin/run\n"
    assert app_inputs_hash(files, dockerfile, ARGS, BASE_DIGEST) == \
        "dc63aac1359416abf9b6bd5d0fab6b7ba04296b967a2e18ccf3db56d6d395cb7"


def test_base_inputs_hash_of_a_fixed_base():
    assert base_inputs_hash(BASE) == "8fa015a016c762d147fb6e543e5c705cb1cfd2139842ccc7e72fb9fbdb198843"


# --- the resolved config digest ---------------------------------------------------------------

SPEC = """\
app: shop
build:
  steps: [COPY . /app]
services:
  web:
    command: [python3, app.py]
    port: 8000
    replicas: 3
    environment: {GREETING: hello, DB_PASSWORD: "secret:db_password"}
    healthcheck: {http: /health, interval: 500ms, deadline: 30s}
  worker:
    command: [python3, worker.py]
    read_only: false
    cap_add: [NET_BIND_SERVICE]
    healthcheck: {command: [/bin/check]}
environments:
  production:
    port: 8080
  staging:
    port: 8081
    bind: 0.0.0.0
    preview_port: 8091
    services:
      web: {replicas: 1, environment: {GREETING: hi}}
"""

PRODUCTION_JSON = (
    '{"app":"shop","bind":"127.0.0.1","env":"production","port":8080,"preview_port":null,"services":['
    '{"cap_add":[],"command":["python3","app.py"],"drain_timeout":5.0,'
    '"environment":{"DB_PASSWORD":"secret:db_password","GREETING":"hello"},'
    '"healthcheck":{"command":null,"deadline":30.0,"http":"/health","interval":0.5,"tcp":false,"timeout":2.0},'
    '"name":"web","no_new_privileges":true,"port":8000,"public":true,"read_only":true,"replicas":3,'
    '"stop_grace_period":10.0,"user":null,"writable":["/tmp"]},'
    '{"cap_add":["NET_BIND_SERVICE"],"command":["python3","worker.py"],"drain_timeout":5.0,"environment":{},'
    '"healthcheck":{"command":["/bin/check"],"deadline":60.0,"http":null,"interval":1.0,"tcp":false,"timeout":2.0},'
    '"name":"worker","no_new_privileges":true,"port":null,"public":false,"read_only":false,"replicas":1,'
    '"stop_grace_period":10.0,"user":null,"writable":["/tmp"]}]}'
)
PRODUCTION_DIGEST = "c629427c9b4d8678929cdb3416c708f26a33fae17b86d99a02bbe17f25f02e4a"


DEFAULT_RESOURCES = '"resources":{"cpus":1.0,"memory":536870912,"pids":512},'


def test_resolved_config_canonical_form_and_digest():
    cfg = resolve(parse_spec(SPEC), "production")
    # What a release records: the digested form plus the engine, the cluster's registry and
    # placement, and each service's resources, which the digest leaves out while they are the
    # defaults (so releases recorded before engines, clusters and limits existed keep their digest).
    assert canonical_json(cfg.model_dump(mode="json")) == PRODUCTION_JSON.replace(
        '"preview_port":null,', '"preview_port":null,"registry":null,').replace(
        '"bind":"127.0.0.1",', '"bind":"127.0.0.1","constraints":[],"engine":"docker",').replace(
        '"replicas":3,', '"replicas":3,' + DEFAULT_RESOURCES).replace(
        '"replicas":1,', '"replicas":1,' + DEFAULT_RESOURCES)
    assert cfg.digest() == PRODUCTION_DIGEST
    assert hashlib.sha256(PRODUCTION_JSON.encode()).hexdigest() == PRODUCTION_DIGEST


def test_a_recorded_config_keeps_its_digest():
    # A release row holds the config as JSON; read back, it must give the digest it was recorded
    # with: a config recorded before the engine field existed, and one recorded with it.
    old = json.loads(PRODUCTION_JSON)
    assert EnvConfig.model_validate(old).digest() == PRODUCTION_DIGEST
    assert EnvConfig.model_validate({**old, "engine": "docker"}).digest() == PRODUCTION_DIGEST
    assert EnvConfig.model_validate({**old, "registry": None, "constraints": []}).digest() == PRODUCTION_DIGEST
    # recorded before limits existed: read as the defaults, which its digest stands for
    read = EnvConfig.model_validate(old)
    assert [s.limits for s in read.services] == ["memory 512M, cpus 1, pids 512"] * 2
    recorded = resolve(parse_spec(SPEC), "production").model_dump(mode="json")
    assert EnvConfig.model_validate(recorded).digest() == PRODUCTION_DIGEST
    assert EnvConfig.model_validate(recorded) == read


def test_limits_other_than_the_defaults_change_the_digest():
    limited = SPEC.replace("    replicas: 3\n", "    replicas: 3\n    resources: {memory: 1G}\n")
    cfg = resolve(parse_spec(limited), "production")
    assert cfg.service("web").resources.memory == 1024**3
    assert cfg.digest() == "17c48f5ac923fbae3a4e199b76a22d5cc3b845a1afec464dd31d13f3934081fa"
    # only web's (non-default) resources enter the digested form
    digested = PRODUCTION_JSON.replace('"replicas":3,', '"replicas":3,"resources":{"cpus":1.0,"memory":1073741824,"pids":512},')
    assert hashlib.sha256(digested.encode()).hexdigest() == cfg.digest()
    # the default written out is the default: no new digest
    explicit = SPEC.replace("    replicas: 3\n", "    replicas: 3\n    resources: {memory: 512M, cpus: 1, pids: 512}\n")
    assert resolve(parse_spec(explicit), "production").digest() == PRODUCTION_DIGEST


def test_overlay_environment_digest():
    assert resolve(parse_spec(SPEC), "staging").digest() == \
        "db5c62dcf8abe963ad817531b221d7ff9b957048f7b71f14994cfa12b3c9fa62"


# --- docker create arguments -----------------------------------------------------------------

IMAGE = "sha256:" + "5e" * 32
STAGING_DIGEST = "db5c62dcf8abe963ad817531b221d7ff9b957048f7b71f14994cfa12b3c9fa62"
HARDENED = {
    "cap_drop": ["ALL"],
    "init": True,
    "stop_signal": "SIGTERM",
    "detach": True,
}
INSTANCE_LIMITS = {  # an instance's default resources: 512M, 1 core, 512 pids
    "mem_limit": 536_870_912,
    "memswap_limit": 536_870_912,
    "nano_cpus": 1_000_000_000,
    "pids_limit": 512,
}


def test_create_args_of_a_hardened_instance():
    cfg = resolve(parse_spec(SPEC), "staging")
    name = "kiln-shop-staging-web-v7-a1b2c3"
    spec = instance_spec(cfg, cfg.service("web"), 7, IMAGE, name)
    resolved_env = {**spec.environment, "DB_PASSWORD": "hunter2"}  # as the provider resolves secret:db_password
    assert create_args(spec, {"team": "payments"}, resolved_env) == {
        "name": name,
        "labels": {"kiln.app": "shop", "kiln.env": "staging", "kiln.role": "instance", "kiln.service": "web",
                   "kiln.release": "7", "kiln.instance": name, "kiln.config": STAGING_DIGEST, "team": "payments"},
        "network": "kiln-shop-staging",
        "environment": {"GREETING": "hi", "DB_PASSWORD": "hunter2", "KILN_APP": "shop", "KILN_ENV": "staging",
                        "KILN_SERVICE": "web", "KILN_RELEASE": "7", "KILN_INSTANCE": name, "PORT": "8000"},
        "read_only": True,
        "tmpfs": {"/tmp": "rw,nosuid,nodev,size=64m"},
        "cap_add": None,
        "security_opt": ["no-new-privileges:true"],
        "command": ["python3", "app.py"],
        **HARDENED,
        **INSTANCE_LIMITS,
    }
    assert spec.environment["DB_PASSWORD"] == "secret:db_password"  # the spec itself never holds the value


def test_create_args_of_a_relaxed_instance_with_a_command_healthcheck():
    cfg = resolve(parse_spec(SPEC), "staging")
    name = "kiln-shop-staging-worker-v7-d4e5f6"
    spec = instance_spec(cfg, cfg.service("worker"), 7, IMAGE, name)
    assert create_args(spec, {}, dict(spec.environment)) == {
        "name": name,
        "labels": {"kiln.app": "shop", "kiln.env": "staging", "kiln.role": "instance", "kiln.service": "worker",
                   "kiln.release": "7", "kiln.instance": name, "kiln.config": STAGING_DIGEST},
        "network": "kiln-shop-staging",
        "environment": {"KILN_APP": "shop", "KILN_ENV": "staging", "KILN_SERVICE": "worker", "KILN_RELEASE": "7",
                        "KILN_INSTANCE": name},
        "read_only": False,
        "tmpfs": {"/tmp": "rw,nosuid,nodev,size=64m"},
        "cap_add": ["NET_BIND_SERVICE"],
        "security_opt": ["no-new-privileges:true"],
        "command": ["python3", "worker.py"],
        "healthcheck": {"test": ["CMD", "/bin/check"], "interval": 1_000_000_000, "timeout": 2_000_000_000,
                        "retries": 1},
        **HARDENED,
        **INSTANCE_LIMITS,
    }


class _Recorder:
    """A runtime with no router running: records the spec HaproxyRouter.ensure starts."""

    def __init__(self, host_network: bool = False) -> None:
        self.started: list = []
        self.host_network = host_network

    def container(self, name: str) -> None:
        return None

    def start(self, spec) -> None:
        self.started.append(spec)


def _router_args(tmp_path, monkeypatch, host_network: bool) -> dict:
    monkeypatch.setattr(haproxy, "_check_port_free", lambda bind, port: None)
    monkeypatch.setattr(haproxy, "ensure_base", lambda *args: SimpleNamespace(id="sha256:" + "4a" * 32))
    monkeypatch.setattr(haproxy.HaproxyRouter, "_wait_ready", lambda self, timeout=15.0: None)
    runtime = _Recorder(host_network)
    cfg = resolve(parse_spec(SPEC), "staging")
    router = haproxy.HaproxyRouter(runtime, cfg, tmp_path / "routers", Output(quiet=True), tmp_path / "scratch")
    assert router.ensure() is True
    [spec] = runtime.started
    return create_args(spec, {"kiln.test": "x"}, dict(spec.environment))


def test_create_args_of_the_router(tmp_path, monkeypatch):
    """On an engine whose router cannot join the host's network (Swarm's overlay)."""
    assert _router_args(tmp_path, monkeypatch, host_network=False) == {
        "name": "kiln-shop-staging-router",
        "labels": {"kiln.app": "shop", "kiln.env": "staging", "kiln.role": "router",
                   "kiln.router.config": "79a66addb22e6e75", "kiln.test": "x"},
        "network": "kiln-shop-staging",
        "environment": {},
        "read_only": True,
        "tmpfs": {"/tmp": "rw,nosuid,nodev,size=64m", "/run/haproxy": "rw,nosuid,nodev,size=64m"},
        "cap_add": None,
        "security_opt": ["no-new-privileges:true"],
        "command": ["haproxy", "-W", "-db", "-f", "/run/kiln/haproxy.cfg"],
        # the public port and the preview port, on the environment's bind address
        "ports": {"8080/tcp": ("0.0.0.0", 8081), "8081/tcp": ("0.0.0.0", 8091)},
        "volumes": {str(tmp_path / "routers"): {"bind": "/run/kiln", "mode": "rw"}},
        "restart_policy": {"Name": "unless-stopped"},
        **HARDENED,
        # the router's fixed limits: 512M, 1 core, 256 pids
        "mem_limit": 536_870_912,
        "memswap_limit": 536_870_912,
        "nano_cpus": 1_000_000_000,
        "pids_limit": 256,
    }


def test_create_args_of_a_router_on_the_host_network(tmp_path, monkeypatch):
    """One Docker host: the router listens on the host itself (its config binds 0.0.0.0:8081 and
    0.0.0.0:8091), nothing is published, and it joins no kiln network."""
    args = _router_args(tmp_path, monkeypatch, host_network=True)
    assert args["network"] == "host" and "ports" not in args and args["cap_add"] is None
    assert args["labels"]["kiln.router.config"] != "79a66addb22e6e75"  # another config: another router
    text = (tmp_path / "routers" / "haproxy.cfg").read_text()
    assert "    bind 0.0.0.0:8081" in text and "    bind 0.0.0.0:8091" in text


# --- HAProxy runtime API captures ---------------------------------------------------------------


def test_parse_stat_of_a_real_show_stat():
    # capture_haproxy.py: 20 requests, round robin over a (200 after ~20 ms) and b (500 at once);
    # c DOWN (nothing listens), d drained, e in maintenance. FRONTEND and BACKEND rows are skipped.
    stats = parse_stat((DATA / "haproxy_show_stat.csv").read_text())
    assert stats == [
        ServerStat("svc-web", "a", "UP", 0, 0, 10, 100, "127.0.0.1:45949", responses=10, errors=0, response_ms=22),
        ServerStat("svc-web", "b", "UP", 0, 0, 10, 100, "127.0.0.1:35901", responses=10, errors=10, response_ms=1),
        ServerStat("svc-web", "c", "DOWN", 0, 0, 0, 100, "127.0.0.1:1"),
        ServerStat("svc-web", "d", "DRAIN", 0, 0, 0, 100, "127.0.0.1:45949"),
        ServerStat("svc-web", "e", "MAINT", 0, 0, 0, 100, "127.0.0.1:45949"),
    ]
    assert [s.serving for s in stats] == [True, True, False, False, False]


def test_parse_conns_of_a_real_show_servers_conn():
    # capture_haproxy.py: taken while one 2 s request was in flight on a.
    assert parse_conns((DATA / "haproxy_show_servers_conn.txt").read_text()) == {"a": 1, "b": 0, "c": 0, "d": 0, "e": 0}


# --- Docker engine captures --------------------------------------------------------------------
# capture_docker.py: containers started by DockerProvider.start on the network kiln-golden-capture
# (Docker 20.10, cgroup v1), from a tiny imported rootfs.

CAPTURE_IMAGE = "sha256:d02ea7004fb19883470f3d6599002ab9ff88248d7d1a9685a9b5636e6646760a"
CAPTURE_CONFIG = "1421dd2fa959f6682a7b0968cc65bae1238eafdc505c07cfce91c17ec05511a4"


def capture_labels(suffix: str) -> dict[str, str]:
    name = f"kiln-golden-capture-web-v1-{suffix}"
    return {"kiln.app": "golden", "kiln.config": CAPTURE_CONFIG, "kiln.env": "capture", "kiln.instance": name,
            "kiln.release": "1", "kiln.role": "instance", "kiln.service": "web", "kiln.test": "golden"}


def test_facts_of_a_real_running_healthy_instance():
    attrs = json.loads((DATA / "docker_inspect_running.json").read_text())
    assert _facts(attrs) == ContainerFacts(
        id="1c5de47306ca3c132c55829f298672d93fd8247489d026b6c4283b231424fcc7",
        name="kiln-golden-capture-web-v1-0a1b2c",  # the engine's "/name", without its slash
        image=CAPTURE_IMAGE,
        labels=capture_labels("0a1b2c"),
        state="running",
        health="healthy",
        ip="172.25.0.2",  # its address on the kiln- network
        exit_code=None,
    )


def test_facts_of_a_real_exited_instance():
    # `sh -c "exit 3"` with a command healthcheck that never ran: the engine still says "unhealthy",
    # and the network entry stays with an empty address.
    attrs = json.loads((DATA / "docker_inspect_exited.json").read_text())
    assert list(attrs["NetworkSettings"]["Networks"]) == ["kiln-golden-capture"]
    assert _facts(attrs) == ContainerFacts(
        id="f92e38c53ea0ee67f6e64e3ff1df79b90e8187dc9879a7f433ac8ef876b935b5",
        name="kiln-golden-capture-web-v1-6a7b8c",
        image=CAPTURE_IMAGE,
        labels=capture_labels("6a7b8c"),
        state="exited",
        health="unhealthy",
        ip=None,
        exit_code=3,
    )


def events() -> list[EngineEvent]:
    return [parse_event(json.loads(line)) for line in (DATA / "docker_events.jsonl").read_text().splitlines()]


def test_parse_event_of_a_real_event_stream():
    # 0a1b2c healthy (/bin/true check, then `docker exec … sh -c "echo hi"`), 3d4e5f unhealthy
    # (/bin/false check), 6a7b8c exits 3, 9d0e1f is OOM-killed (16 MiB limit, set by the CLI).
    assert [(e.action, e.detail, e.name.removeprefix("kiln-golden-capture-web-v1-")) for e in events()] == [
        ("create", "", "0a1b2c"),
        ("start", "", "0a1b2c"),
        ("create", "", "3d4e5f"),
        ("start", "", "3d4e5f"),
        ("create", "", "6a7b8c"),
        ("start", "", "6a7b8c"),
        ("die", "", "6a7b8c"),
        ("exec_create", "/bin/true", "0a1b2c"),
        ("exec_start", "/bin/true", "0a1b2c"),
        ("exec_die", "", "0a1b2c"),
        ("health_status", "healthy", "0a1b2c"),
        ("exec_create", "/bin/false", "3d4e5f"),
        ("exec_start", "/bin/false", "3d4e5f"),
        ("exec_die", "", "3d4e5f"),
        ("health_status", "unhealthy", "3d4e5f"),
        ("exec_create", "sh -c echo hi", "0a1b2c"),
        ("exec_start", "sh -c echo hi", "0a1b2c"),
        ("exec_die", "", "0a1b2c"),
        ("create", "", "9d0e1f"),
        ("exec_create", "/bin/true", "0a1b2c"),
        ("exec_start", "/bin/true", "0a1b2c"),
        ("start", "", "9d0e1f"),
        ("exec_die", "", "0a1b2c"),
        ("oom", "", "9d0e1f"),
        ("die", "", "9d0e1f"),
        ("exec_create", "/bin/false", "3d4e5f"),
        ("exec_start", "/bin/false", "3d4e5f"),
        ("exec_die", "", "3d4e5f"),
        ("exec_create", "/bin/true", "0a1b2c"),
        ("exec_start", "/bin/true", "0a1b2c"),
        ("exec_die", "", "0a1b2c"),
    ]


def test_parse_event_die_oom_exec_and_health_in_full():
    by_kind = {}
    for e in events():
        by_kind.setdefault((e.action, e.detail, e.name[-6:]), e)
    image = {"image": CAPTURE_IMAGE}
    # `labels` holds every actor attribute but the name: the container's labels, and the image,
    # exitCode (die) or execID (exec_*) the engine adds.
    assert by_kind["die", "", "6a7b8c"] == EngineEvent(
        "die", "", "kiln-golden-capture-web-v1-6a7b8c", {**capture_labels("6a7b8c"), **image, "exitCode": "3"},
        1795959948.902105)
    assert by_kind["oom", "", "9d0e1f"] == EngineEvent(
        "oom", "", "kiln-golden-capture-web-v1-9d0e1f", {**capture_labels("9d0e1f"), **image}, 1795959950.3462808)
    assert by_kind["die", "", "9d0e1f"].labels["exitCode"] == "137"  # SIGKILL by the OOM killer
    assert by_kind["health_status", "unhealthy", "3d4e5f"] == EngineEvent(
        "health_status", "unhealthy", "kiln-golden-capture-web-v1-3d4e5f", {**capture_labels("3d4e5f"), **image},
        1795959949.5852468)
    assert by_kind["exec_start", "sh -c echo hi", "0a1b2c"] == EngineEvent(
        "exec_start", "sh -c echo hi", "kiln-golden-capture-web-v1-0a1b2c",
        {**capture_labels("0a1b2c"), **image,
         "execID": "3ca76e2dd38af76db4b7f4d4154c9777b3ccf48228cffc0c12dfc4cda7a6ca40"},
        1795959949.7254725)
    assert by_kind["die", "", "6a7b8c"].label("service") == "web"


def test_a_healthcheck_exec_is_named_as_drift_expects():
    # The engine names a healthcheck's exec "exec_start: /bin/true " (trailing space); parse_event
    # strips it, so the agent can tell kiln's own exec from someone's `docker exec`.
    raw = [json.loads(line) for line in (DATA / "docker_events.jsonl").read_text().splitlines()]
    assert raw[8]["Action"] == "exec_start: /bin/true "
    assert parse_event(raw[8]).detail == exec_detail(("/bin/true",)) == "/bin/true"
    assert parse_event(raw[16]).detail == "sh -c echo hi" != exec_detail(("/bin/true",))
