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
import os
from pathlib import Path

import pytest

from kiln.bake.context import ContextFile, hash_context, list_context, read_dockerignore
from kiln.bake.inputs import RECIPE_VERSION, app_inputs_hash, base_inputs_hash, render_dockerfile
from kiln.providers.docker import create_args
from kiln.rollout.instances import instance_spec
from kiln.router import haproxy
from kiln.router.runtime import ServerStat, parse_conns, parse_stat
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


def test_resolved_config_canonical_form_and_digest():
    cfg = resolve(parse_spec(SPEC), "production")
    assert canonical_json(cfg.model_dump(mode="json")) == PRODUCTION_JSON
    assert cfg.digest() == PRODUCTION_DIGEST
    assert hashlib.sha256(PRODUCTION_JSON.encode()).hexdigest() == PRODUCTION_DIGEST


def test_a_recorded_config_keeps_its_digest():
    # A release row holds the config as JSON; read back, it must give the digest it was recorded with.
    import json

    assert EnvConfig.model_validate(json.loads(PRODUCTION_JSON)).digest() == PRODUCTION_DIGEST


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
    }


class _Recorder:
    """A runtime with no router running: records the spec Router.ensure starts."""

    def __init__(self) -> None:
        self.started: list = []

    def container(self, name: str) -> None:
        return None

    def start(self, spec) -> None:
        self.started.append(spec)


def test_create_args_of_the_router(tmp_path, monkeypatch):
    monkeypatch.setattr(haproxy, "_check_port_free", lambda bind, port: None)
    monkeypatch.setattr(haproxy.Router, "_wait_ready", lambda self, timeout=15.0: None)
    runtime = _Recorder()
    cfg = resolve(parse_spec(SPEC), "staging")
    assert haproxy.Router(runtime, cfg, tmp_path / "routers").ensure("sha256:" + "4a" * 32) is True
    [spec] = runtime.started
    assert create_args(spec, {"kiln.test": "x"}, dict(spec.environment)) == {
        "name": "kiln-shop-staging-router",
        "labels": {"kiln.app": "shop", "kiln.env": "staging", "kiln.role": "router",
                   "kiln.router.config": "6f11db9325baaaa8", "kiln.test": "x"},
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
    }


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
