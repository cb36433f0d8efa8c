"""kiln.spec.resolve: one environment's resolved config, as a release records it."""

from __future__ import annotations

import json

import pytest

from kiln.errors import UsageError
from kiln.spec.loader import parse_spec
from kiln.spec.models import HealthCheck
from kiln.spec.resolve import EnvConfig, canonical_json, pick_env, resolve

SPEC = """\
app: shop
build:
  steps: [COPY . /app]
services:
  web:
    command: [python3, app.py]
    port: 8000
    replicas: 3
    environment: {A: "1", B: "2"}
  worker:
    command: [python3, worker.py]
    read_only: false
    no_new_privileges: false
    cap_add: [NET_BIND_SERVICE, NET_RAW]
    healthcheck:
      command: [/bin/check]
environments:
  production:
    port: 8080
  staging:
    port: 8081
    bind: 0.0.0.0
    services:
      web: {replicas: 1, environment: {B: "x", C: "3"}, command: [python3, dev.py]}
"""


@pytest.fixture(scope="module")
def spec():
    return parse_spec(SPEC)


def test_overlay_changes_only_its_environment(spec):
    prod, staging = resolve(spec, "production"), resolve(spec, "staging")
    pw, sw = prod.service("web"), staging.service("web")
    assert (pw.replicas, pw.command, pw.environment) == (3, ("python3", "app.py"), {"A": "1", "B": "2"})
    assert (sw.replicas, sw.command) == (1, ("python3", "dev.py"))
    # environment is merged: the overlay adds and overrides, the rest is inherited
    assert sw.environment == {"A": "1", "B": "x", "C": "3"}
    # the other service is untouched in both environments
    assert prod.service("worker") == staging.service("worker")
    assert staging.service("worker").replicas == 1


def test_overlay_keeps_what_it_does_not_name(spec):
    sw = resolve(spec, "staging").service("web")
    assert (sw.port, sw.writable, sw.read_only, sw.public) == (8000, ("/tmp",), True, True)


def test_overlay_with_only_replicas_keeps_command():
    text = SPEC.replace("web: {replicas: 1, environment: {B: \"x\", C: \"3\"}, command: [python3, dev.py]}", "web: {replicas: 0}")
    sw = resolve(parse_spec(text), "staging").service("web")
    assert (sw.replicas, sw.command, sw.environment) == (0, ("python3", "app.py"), {"A": "1", "B": "2"})


def test_environment_level_values(spec):
    prod, staging = resolve(spec, "production"), resolve(spec, "staging")
    assert (prod.app, prod.env, prod.port, prod.bind) == ("shop", "production", 8080, "127.0.0.1")
    assert (staging.env, staging.port, staging.bind) == ("staging", 8081, "0.0.0.0")
    assert prod.url == "http://127.0.0.1:8080"
    assert staging.url == "http://127.0.0.1:8081"  # a wildcard bind is reached on loopback


def test_services_keep_spec_order(spec):
    assert [s.name for s in resolve(spec, "production").services] == ["web", "worker"]


def test_default_tcp_healthcheck_when_port_and_none_declared(spec):
    cfg = resolve(spec, "production")
    assert cfg.service("web").healthcheck == HealthCheck(tcp=True)
    assert cfg.service("web").healthcheck.kind == "tcp"


def test_no_default_healthcheck_without_a_port():
    text = SPEC.replace("    healthcheck:\n      command: [/bin/check]\n", "")
    assert resolve(parse_spec(text), "production").service("worker").healthcheck is None


def test_declared_healthcheck_is_kept(spec):
    hc = resolve(spec, "production").service("worker").healthcheck
    assert hc.kind == "command" and hc.command == ("/bin/check",)


def test_single_service_with_a_port_is_public(spec):
    cfg = resolve(spec, "production")
    assert cfg.public_service.name == "web"
    assert [s.public for s in cfg.services] == [True, False]


def test_explicit_public_service_is_chosen():
    text = SPEC.replace("    replicas: 3\n", "    replicas: 3\n    public: false\n").replace(
        "    command: [python3, worker.py]\n", "    command: [python3, worker.py]\n    port: 9000\n    public: true\n")
    cfg = resolve(parse_spec(text), "production")
    assert cfg.public_service.name == "worker"
    assert [s.public for s in cfg.services] == [False, True]


def test_no_public_service_without_ports():
    text = """\
app: batch
build: {steps: [RUN true]}
services:
  worker: {command: [w]}
environments:
  production: {port: 8080}
"""
    cfg = resolve(parse_spec(text), "production")
    assert cfg.public_service is None
    assert cfg.service("worker").public is False


def test_unknown_service_is_a_usage_error_naming_the_services(spec):
    cfg = resolve(spec, "production")
    assert cfg.find("nope") is None
    with pytest.raises(UsageError, match="has no service 'nope'") as caught:
        cfg.service("nope")
    assert caught.value.hint == f"Its services: {', '.join(s.name for s in cfg.services)}."


# --- the recorded form ---------------------------------------------------------------------------


def test_round_trip_through_json(spec):
    for env, command in (("production", ("python3", "app.py")), ("staging", ("python3", "dev.py"))):
        cfg = resolve(spec, env)
        doc = json.loads(json.dumps(cfg.model_dump(mode="json")))  # as stored in the ledger
        back = EnvConfig.model_validate(doc)
        assert back == cfg
        assert back.digest() == cfg.digest()
        assert back.service("worker").healthcheck.kind == "command"
        assert back.service("web").command == command


def test_digest_is_pinned(spec):
    # Releases record this value and compare it with fresh ones (see test_golden for why it is pinned).
    assert resolve(spec, "production").digest() == "0d4c57599adca444ed00dfd81c4066850c68b0c3532efdf207a54c404984560c"
    assert resolve(parse_spec(SPEC), "production").digest() == resolve(spec, "production").digest()


def test_digest_ignores_mapping_order():
    swapped = SPEC.replace('environment: {A: "1", B: "2"}', 'environment: {B: "2", A: "1"}')
    assert resolve(parse_spec(swapped), "production").digest() == resolve(parse_spec(SPEC), "production").digest()


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('A: "1"', 'A: "2"'),
        ("replicas: 3", "replicas: 4"),
        ("port: 8080", "port: 8090"),
        ("[python3, app.py]", "[python3, app2.py]"),
        ("[/bin/check]", "[/bin/check2]"),
        ("read_only: false", "read_only: true"),
    ],
)
def test_digest_changes_when_a_value_changes(spec, old, new):
    assert old in SPEC
    changed = parse_spec(SPEC.replace(old, new, 1))
    assert resolve(changed, "production").digest() != resolve(spec, "production").digest()


def test_environments_have_different_digests(spec):
    assert resolve(spec, "production").digest() != resolve(spec, "staging").digest()


def test_canonical_json_is_compact_and_sorted():
    assert canonical_json({"b": 1, "a": [1, 2]}) == '{"a":[1,2],"b":1}'


# --- pick_env and relaxations ----------------------------------------------------------------------


def test_pick_env_defaults_to_first(spec):
    assert pick_env(spec, None) == "production"


def test_pick_env_named(spec):
    assert pick_env(spec, "staging") == "staging"


def test_pick_env_unknown_is_a_usage_error(spec):
    with pytest.raises(UsageError) as info:
        pick_env(spec, "prod")
    assert info.value.exit_code == 2
    assert "'prod'" in info.value.message
    assert "production, staging" in info.value.hint


def test_relaxations(spec):
    cfg = resolve(spec, "production")
    assert cfg.service("web").relaxations == []
    assert cfg.service("worker").relaxations == [
        "read_only: false", "no_new_privileges: false", "cap_add: NET_BIND_SERVICE", "cap_add: NET_RAW",
    ]


LIMITED = SPEC.replace("    replicas: 3\n", "    replicas: 3\n    resources: {memory: 256M, cpus: 0.5, pids: 128}\n").replace(
    "      web: {replicas: 1,", "      web: {resources: {memory: 1G}, replicas: 1,")


def test_resources_resolve_with_an_overlay_that_changes_only_what_it_names():
    spec = parse_spec(LIMITED)
    prod, staging = resolve(spec, "production"), resolve(spec, "staging")
    assert prod.service("web").resources.model_dump() == {"memory": 256 * 1024**2, "cpus": 0.5, "pids": 128}
    assert staging.service("web").resources.model_dump() == {"memory": 1024**3, "cpus": 0.5, "pids": 128}
    assert prod.service("worker").resources.model_dump() == {"memory": 512 * 1024**2, "cpus": 1.0, "pids": 512}
    assert staging.service("web").limits == "memory 1G, cpus 0.5, pids 128"
    assert prod.service("worker").limits == "memory 512M, cpus 1, pids 512"
    # a release records them, and reads them back as they were
    recorded = json.loads(canonical_json(staging.model_dump(mode="json")))
    assert recorded["services"][0]["resources"] == {"memory": 1073741824, "cpus": 0.5, "pids": 128}
    assert EnvConfig.model_validate(recorded) == staging
    assert prod.digest() != resolve(parse_spec(SPEC), "production").digest()
