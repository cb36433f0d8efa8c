"""kiln.rollout.instances.instance_spec: what an instance looks like to the engine."""

from __future__ import annotations

import pytest

from kiln.rollout.instances import instance_labels, instance_spec, new_instance_name
from kiln.spec.hardening import Hardening
from kiln.spec.loader import parse_spec
from kiln.spec.resolve import resolve

SPEC = """\
app: shop
build: {steps: [COPY . /app]}
services:
  web:
    command: [python3, app.py]
    port: 8000
    environment: {GREETING: hello}
    healthcheck: {http: /health, interval: 500ms, timeout: 1s}
  worker:
    command: [python3, worker.py]
    user: "65534"
    read_only: false
    no_new_privileges: false
    cap_add: [NET_RAW]
    writable: [/tmp, /var/cache/app]
    stop_grace_period: 30s
    healthcheck: {command: [/bin/check, --quick], interval: 2s, timeout: 3s}
  cron:
    command: [cron]
environments:
  production: {port: 8080}
"""

NAME = "kiln-shop-production-web-v7-abc123"


@pytest.fixture(scope="module")
def cfg():
    return resolve(parse_spec(SPEC), "production")


def test_hardened_defaults(cfg):
    spec = instance_spec(cfg, cfg.service("web"), 7, "sha256:img", NAME)
    assert spec.hardening == Hardening(user=None, read_only=True, writable=("/tmp",), cap_add=(), no_new_privileges=True)
    assert spec.publish == {}  # only the router publishes a port
    assert spec.binds == {}  # no host paths, no Docker socket
    assert spec.restart is False


def test_identity(cfg):
    spec = instance_spec(cfg, cfg.service("web"), 7, "sha256:img", NAME)
    assert (spec.name, spec.image, spec.network, spec.command) == (
        NAME, "sha256:img", "kiln-shop-production", ("python3", "app.py"))


def test_labels(cfg):
    spec = instance_spec(cfg, cfg.service("web"), 7, "sha256:img", NAME)
    assert spec.labels == {
        "kiln.app": "shop",
        "kiln.env": "production",
        "kiln.role": "instance",
        "kiln.service": "web",
        "kiln.release": "7",
        "kiln.instance": NAME,
        "kiln.config": cfg.digest(),
    }
    assert instance_labels(cfg, "web", 7, NAME) == spec.labels


def test_environment_variables(cfg):
    env = instance_spec(cfg, cfg.service("web"), 7, "sha256:img", NAME).environment
    assert env == {"GREETING": "hello", "KILN_APP": "shop", "KILN_ENV": "production", "KILN_SERVICE": "web",
                   "KILN_RELEASE": "7", "KILN_INSTANCE": NAME, "PORT": "8000"}


def test_no_port_variable_without_a_port(cfg):
    env = instance_spec(cfg, cfg.service("worker"), 3, "sha256:img", "n").environment
    assert "PORT" not in env and env["KILN_RELEASE"] == "3" and env["KILN_SERVICE"] == "worker"


def test_user_port_variable_wins_but_kiln_variables_do_not_yield():
    text = SPEC.replace("environment: {GREETING: hello}", "environment: {PORT: '9999', KILN_RELEASE: fake}")
    c = resolve(parse_spec(text), "production")
    env = instance_spec(c, c.service("web"), 7, "sha256:img", NAME).environment
    assert env["PORT"] == "9999"
    assert env["KILN_RELEASE"] == "7"


def test_health_command_only_for_command_healthchecks(cfg):
    web = instance_spec(cfg, cfg.service("web"), 1, "i", "a")
    worker = instance_spec(cfg, cfg.service("worker"), 1, "i", "b")
    cron = instance_spec(cfg, cfg.service("cron"), 1, "i", "c")
    assert web.health_command is None
    assert (web.health_interval, web.health_timeout) == (0.5, 1.0)
    assert worker.health_command == ("/bin/check", "--quick")
    assert (worker.health_interval, worker.health_timeout) == (2.0, 3.0)
    assert cron.health_command is None
    assert (cron.health_interval, cron.health_timeout) == (1.0, 2.0)


def test_default_tcp_healthcheck_runs_no_command():
    text = SPEC.replace("    healthcheck: {http: /health, interval: 500ms, timeout: 1s}\n", "")
    c = resolve(parse_spec(text), "production")
    assert instance_spec(c, c.service("web"), 1, "i", "a").health_command is None


def test_relaxations_flow_through(cfg):
    spec = instance_spec(cfg, cfg.service("worker"), 1, "sha256:img", "n")
    assert spec.hardening == Hardening(user="65534", read_only=False, writable=("/tmp", "/var/cache/app"),
                                       cap_add=("NET_RAW",), no_new_privileges=False)
    assert spec.stop_grace_period == 30.0


def test_hardening_is_one_value_from_the_record_to_the_container(cfg):
    """The release records the flat fields (its JSON form and digest are as before); the one
    Hardening value is derived from them, and the container spec carries it whole."""
    worker = cfg.service("worker")
    recorded = cfg.model_dump(mode="json")["services"][1]
    assert "hardening" not in recorded
    assert {k: recorded[k] for k in ("user", "read_only", "writable", "cap_add", "no_new_privileges")} == {
        "user": "65534", "read_only": False, "writable": ["/tmp", "/var/cache/app"], "cap_add": ["NET_RAW"],
        "no_new_privileges": False}
    assert instance_spec(cfg, worker, 1, "sha256:img", "n").hardening == worker.hardening
    assert worker.relaxed() == worker.hardening.relaxed() == [
        ("read_only", "read_only: false"), ("no_new_privileges", "no_new_privileges: false"),
        ("cap_add", "cap_add: NET_RAW"), ("writable", "writable: /var/cache/app")]


def test_new_instance_names_are_unique_and_descriptive(cfg):
    names = {new_instance_name(cfg, "web", 4) for _ in range(50)}
    assert len(names) == 50
    for name in names:
        assert name.startswith("kiln-shop-production-web-v4-") and len(name) == len("kiln-shop-production-web-v4-") + 6


def test_limits_come_from_the_service_resources():
    from kiln.providers.base import Limits

    text = SPEC.replace("    stop_grace_period: 30s\n", "    stop_grace_period: 30s\n    resources: {memory: 2G, cpus: 2, pids: 64}\n")
    cfg = resolve(parse_spec(text), "production")
    assert instance_spec(cfg, cfg.service("worker"), 1, "sha256:x", "n").limits == Limits(2 * 1024**3, 2.0, 64)
    assert instance_spec(cfg, cfg.service("web"), 1, "sha256:x", "n").limits == Limits(512 * 1024**2, 1.0, 512)
