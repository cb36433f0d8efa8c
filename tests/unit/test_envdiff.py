"""kiln.spec.envdiff: flattening resolved configs, declared overlay keys, key-by-key differences."""

from __future__ import annotations

from kiln.spec.envdiff import ABSENT, declared_keys, diff, flatten
from kiln.spec.loader import parse_spec
from kiln.spec.resolve import resolve

SPEC = """\
app: shop
build: {steps: ["COPY . /app"]}
services:
  web:
    port: 8000
    replicas: 2
    environment: {GREETING: hello, LEVEL: info}
environments:
  production: {port: 8080}
  staging:
    port: 8081
    services: {web: {replicas: 1, environment: {LEVEL: debug}}}
"""


def configs():
    spec = parse_spec(SPEC)
    return spec, resolve(spec, "production").model_dump(mode="json"), resolve(spec, "staging").model_dump(mode="json")


def test_flatten_names_services_by_name():
    _, prod, _ = configs()
    flat = flatten(prod)
    assert flat["services.web.replicas"] == 2
    assert flat["services.web.environment.GREETING"] == "hello"
    assert flat["port"] == 8080 and "services.web.name" not in flat


def test_declared_keys_come_from_the_overlay():
    spec, _, _ = configs()
    assert declared_keys(spec, "staging") == {"bind", "env", "port", "preview_port", "services.web.environment.LEVEL",
                                              "services.web.replicas"}
    assert "services.web.replicas" not in declared_keys(spec, "production")
    assert declared_keys(spec, "preview-1234") == {"env", "port", "bind", "preview_port"}


def test_environments_of_one_spec_differ_only_in_declared_keys():
    spec, prod, staging = configs()
    declared = declared_keys(spec, "production") | declared_keys(spec, "staging")
    rows = diff(prod, staging, declared)
    assert {r.key for r in rows} == {"env", "port", "services.web.replicas", "services.web.environment.LEVEL"}
    assert all(r.declared for r in rows)


def test_an_undeclared_change_is_named_and_a_missing_key_shown_absent():
    spec, prod, staging = configs()
    staging["services"][0]["environment"]["GREETING"] = "hi"
    staging["services"][0]["environment"]["NEW"] = "1"
    declared = declared_keys(spec, "production") | declared_keys(spec, "staging")
    undeclared = [r for r in diff(prod, staging, declared) if not r.declared]
    assert [(r.key, r.a, r.b) for r in undeclared] == [("services.web.environment.GREETING", "hello", "hi"),
                                                       ("services.web.environment.NEW", ABSENT, "1")]


def test_an_overlay_adding_the_first_variable_is_only_that_declared_key():
    # production's web has no environment at all ({} flattens to a leaf), staging's overlay adds one:
    # the difference is the variable alone, not also a phantom undeclared `environment: {} vs (absent)`.
    spec = parse_spec(SPEC.replace("    environment: {GREETING: hello, LEVEL: info}\n", ""))
    prod, staging = (resolve(spec, e).model_dump(mode="json") for e in ("production", "staging"))
    rows = diff(prod, staging, declared_keys(spec, "production") | declared_keys(spec, "staging"))
    assert [(r.key, r.a, r.b, r.declared) for r in rows if r.key.startswith("services.web.env")] == [
        ("services.web.environment.LEVEL", ABSENT, "debug", True)]
    assert [(r.key, r.a, r.b) for r in diff(staging, prod, set()) if "environment" in r.key] == [
        ("services.web.environment.LEVEL", "debug", ABSENT)]
    # An empty mapping against a value that is not a mapping is still a difference.
    assert [(r.key, r.a, r.b) for r in diff({"x": {}}, {"x": 1}, set())] == [("x", {}, 1)]


def test_resources_flatten_and_an_overlay_declares_only_the_limits_it_sets():
    spec = parse_spec(SPEC.replace("services: {web: {replicas: 1,", "services: {web: {resources: {memory: 1G}, replicas: 1,"))
    prod, staging = (resolve(spec, e).model_dump(mode="json") for e in ("production", "staging"))
    assert flatten(prod)["services.web.resources.memory"] == 536870912
    assert "services.web.resources.memory" in declared_keys(spec, "staging")
    assert "services.web.resources.cpus" not in declared_keys(spec, "staging")
    declared = declared_keys(spec, "production") | declared_keys(spec, "staging")
    assert [(r.key, r.a, r.b, r.declared) for r in diff(prod, staging, declared) if "resources" in r.key] == [
        ("services.web.resources.memory", 536870912, 1073741824, True)]
    # a limit no overlay declares is drift between the environments
    staging["services"][0]["resources"]["pids"] = 64
    assert [(r.key, r.a, r.b, r.declared) for r in diff(prod, staging, declared) if "resources" in r.key] == [
        ("services.web.resources.memory", 536870912, 1073741824, True),
        ("services.web.resources.pids", 512, 64, False)]
