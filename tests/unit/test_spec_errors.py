"""kiln.spec.loader.parse_spec: every problem is reported as `kiln.yaml:LINE: key.path: problem`."""

from __future__ import annotations

import math

import pytest

from kiln.errors import KilnError, SpecError
from kiln.spec.durations import parse_duration
from kiln.spec.loader import parse_spec

# Line numbers below refer to this text (line 1 is "app: shop").
VALID = """\
app: shop
build:
  steps:
    - COPY . /app
services:
  web:
    port: 8000
    replicas: 2
environments:
  production:
    port: 8080
"""


def issues(text: str, filename: str = "kiln.yaml") -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(text, filename)
    assert info.value.exit_code == 2
    assert isinstance(info.value, KilnError)
    return [str(i) for i in info.value.issues]


def only_issue(text: str) -> str:
    found = issues(text)
    assert len(found) == 1, found
    return found[0]


def with_web(extra: str) -> str:
    """VALID with `extra` (indented as keys of services.web) added after `replicas: 2` (line 8)."""
    return VALID.replace("    replicas: 2\n", "    replicas: 2\n" + extra)


# --- a valid spec ------------------------------------------------------------------------------


def test_minimal_spec_parses_with_defaults():
    spec = parse_spec(VALID)
    assert spec.app == "shop"
    assert spec.build.steps == ("COPY . /app",)
    assert spec.build.dockerfile is None
    web = spec.services["web"]
    assert (web.port, web.replicas, web.public, web.healthcheck) == (8000, 2, False, None)
    assert web.read_only is True and web.no_new_privileges is True and web.cap_add == ()
    assert web.writable == ("/tmp",)
    assert spec.environments["production"].port == 8080
    assert spec.environments["production"].bind == "127.0.0.1"
    assert spec.public_service == "web"


def test_durations_in_a_spec_become_seconds():
    spec = parse_spec(with_web("    healthcheck:\n      http: /health\n      interval: 500ms\n      deadline: 1m30s\n"))
    hc = spec.services["web"].healthcheck
    assert hc is not None
    assert (hc.kind, hc.http, hc.interval, hc.timeout, hc.deadline) == ("http", "/health", 0.5, 2.0, 90.0)


def test_dockerfile_instead_of_steps_is_valid():
    spec = parse_spec(VALID.replace("  steps:\n    - COPY . /app\n", "  dockerfile: Dockerfile\n"))
    assert spec.build.dockerfile == "Dockerfile" and spec.build.steps == ()


# --- type errors: line and dotted key path -------------------------------------------------------


def test_wrong_type_reports_line_and_key_path():
    msg = only_issue(VALID.replace("replicas: 2", "replicas: lots"))
    assert msg.startswith("kiln.yaml:8: services.web.replicas: ")
    assert "valid integer" in msg and "(got 'lots')" in msg


def test_filename_is_used_in_the_report():
    found = issues(VALID.replace("replicas: 2", "replicas: lots"), "deploy/kiln.yaml")
    assert found[0].startswith("deploy/kiln.yaml:8: services.web.replicas: ")


def test_out_of_range_value_reports_its_line():
    msg = only_issue(VALID.replace("replicas: 2", "replicas: -1"))
    assert msg.startswith("kiln.yaml:8: services.web.replicas: ")
    assert "greater than or equal to 0" in msg


def test_wrong_type_in_environment_overlay():
    text = VALID + "    services:\n      web:\n        replicas: many\n"
    msg = only_issue(text)
    assert msg.startswith("kiln.yaml:14: environments.production.services.web.replicas: ")


def test_wrong_type_of_environment_port():
    msg = only_issue(VALID.replace("port: 8080", "port: abc"))
    assert msg.startswith("kiln.yaml:11: environments.production.port: ")


def test_list_expected_is_called_a_list():
    msg = only_issue(with_web("    command: 5\n"))
    assert msg == "kiln.yaml:9: services.web.command: Input should be a list (got 5)"


def test_list_item_reports_its_index():
    msg = only_issue(with_web("    command:\n      - python3\n      - {x: 1}\n"))
    assert msg.startswith("kiln.yaml:11: services.web.command[1]: ")


def test_non_string_environment_value_names_the_variable():
    msg = only_issue(with_web("    environment:\n      DEBUG: 1\n"))
    assert msg.startswith("kiln.yaml:10: services.web.environment.DEBUG: ")
    assert "(got 1)" in msg


def test_several_problems_are_all_reported_in_line_order():
    text = VALID.replace("replicas: 2", "replicas: lots").replace("port: 8080", "port: abc").replace("port: 8000", "port: x")
    found = issues(text)
    assert [m.split(": ")[0:2] for m in found] == [
        ["kiln.yaml:7", "services.web.port"],
        ["kiln.yaml:8", "services.web.replicas"],
        ["kiln.yaml:11", "environments.production.port"],
    ]


# --- unknown and missing keys ------------------------------------------------------------------


def test_unknown_key_suggests_the_close_one():
    msg = only_issue(with_web("    healthchek:\n      http: /health\n"))
    assert msg == "kiln.yaml:9: services.web.healthchek: unknown key; did you mean 'healthcheck'?"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (VALID + "environmnts: {}\n", "kiln.yaml:12: environmnts: unknown key; did you mean 'environments'?"),
        (VALID.replace("  steps:\n", "  stepz: [x]\n  steps:\n"), "kiln.yaml:3: build.stepz: unknown key; did you mean 'steps'?"),
        (VALID.replace("port: 8080\n", "port: 8080\n    bnd: 0.0.0.0\n"),
         "kiln.yaml:12: environments.production.bnd: unknown key; did you mean 'bind'?"),
        (with_web("    healthcheck:\n      http: /h\n      intervall: 1s\n"),
         "kiln.yaml:11: services.web.healthcheck.intervall: unknown key; did you mean 'interval'?"),
        (VALID + "    services:\n      web:\n        replica: 1\n",
         "kiln.yaml:14: environments.production.services.web.replica: unknown key; did you mean 'replicas'?"),
        (VALID.replace("  steps:\n", "  base:\n    packges: [python3]\n  steps:\n"),
         "kiln.yaml:4: build.base.packges: unknown key; did you mean 'packages'?"),
    ],
)
def test_unknown_key_suggestion_uses_the_owning_model(text, expected):
    assert only_issue(text) == expected


def test_unknown_key_without_a_close_match_lists_known_keys():
    msg = only_issue(with_web("    zzzzzz: 1\n"))
    assert msg.startswith("kiln.yaml:9: services.web.zzzzzz: unknown key; known keys here: command, port, public, replicas")


def test_missing_required_key_is_reported_at_its_parent():
    msg = only_issue(VALID.replace("    port: 8080\n", "    bind: 0.0.0.0\n"))
    assert msg == "kiln.yaml:10: environments.production.port: required key is missing"


def test_missing_top_level_key():
    text = VALID.split("environments:")[0]
    assert only_issue(text) == "kiln.yaml:1: environments: required key is missing"


def test_null_mapping_is_reported():
    msg = only_issue(VALID.replace("    port: 8080\n", ""))
    assert msg.startswith("kiln.yaml:10: environments.production: ")
    assert "mapping" in msg


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just a string\n"])
def test_spec_that_is_not_a_mapping(text):
    msg = only_issue(text)
    assert msg.startswith("kiln.yaml:1: ") and "must be a mapping" in msg


# --- YAML syntax ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (VALID.replace("    port: 8000\n", "    port: 8000: 9\n"), 7),
        (VALID.replace("    port: 8000\n", "\tport: 8000\n"), 7),
        (VALID.replace("    replicas: 2\n", "    replicas: 2\n    replicas: 3\n"), 9),
    ],
    ids=["mapping-in-value", "tab", "duplicate-key"],
)
def test_yaml_syntax_error_has_a_line(text, line):
    msg = only_issue(text)
    assert msg.startswith(f"kiln.yaml:{line}: YAML syntax: ")


# --- cross-checks (kiln/spec/checks.py) ------------------------------------------------------------


def test_unknown_service_in_environment_overlay():
    text = VALID + "    services:\n      api:\n        replicas: 1\n"
    assert only_issue(text) == "kiln.yaml:13: environments.production.services.api: no such service; services are: web"


@pytest.mark.parametrize("app", ["Shop", "shop_1", "1shop", "-shop", "a" * 32, "sh op"])
def test_invalid_app_name(app):
    msg = only_issue(VALID.replace("app: shop", f"app: '{app}'"))
    assert msg.startswith(f"kiln.yaml:1: app: {app!r} is not a valid name")


def test_longest_valid_name_is_accepted():
    assert parse_spec(VALID.replace("app: shop", "app: " + "a" * 31)).app == "a" * 31


def test_invalid_service_name():
    msg = only_issue(VALID.replace("  web:", "  Web:"))
    assert msg.startswith("kiln.yaml:6: services.Web: service name 'Web' is not valid")


def test_invalid_environment_name():
    msg = only_issue(VALID.replace("  production:", "  prod_1:"))
    assert msg.startswith("kiln.yaml:10: environments.prod_1: environment name 'prod_1' is not valid")


def test_name_with_trailing_newline_is_invalid():
    # `$` in a pattern also matches before a final newline: the name check must not let one through.
    assert only_issue(VALID.replace("app: shop", 'app: "shop\\n"')) == (
        "kiln.yaml:1: app: 'shop\\n' is not a valid name; use lowercase letters, digits and '-', "
        "starting with a letter, at most 31 characters")


def test_two_public_services():
    text = with_web("    public: true\n  api:\n    port: 9000\n    public: true\n")
    assert only_issue(text) == "kiln.yaml:12: services.api.public: only one service can be public (web, api are)"


def test_several_ports_without_a_public_service():
    text = with_web("  api:\n    port: 9000\n")
    assert only_issue(text) == "kiln.yaml:5: services: several services have a port (web, api); mark one 'public: true'"


def test_several_ports_with_one_public_service_is_fine():
    spec = parse_spec(with_web("  api:\n    port: 9000\n    public: true\n"))
    assert spec.public_service == "api"


def test_public_service_needs_a_port():
    text = VALID.replace("    port: 8000\n", "    public: true\n")
    assert only_issue(text) == "kiln.yaml:6: services.web.port: a public service needs a 'port'"


def test_two_environments_on_one_port():
    text = VALID + "  staging:\n    port: 8080\n"
    assert only_issue(text) == "kiln.yaml:13: environments.staging.port: port 8080 is already used by environment production (port)"


def test_same_port_on_different_bind_addresses_is_fine():
    spec = parse_spec(VALID + "  staging:\n    port: 8080\n    bind: 127.0.0.2\n")
    assert list(spec.environments) == ["production", "staging"]


# --- healthcheck and build rules -------------------------------------------------------------------


@pytest.mark.parametrize(
    "hc",
    [
        "      http: /health\n      tcp: true\n",
        "      tcp: true\n      command: [/bin/check]\n",
        "      interval: 2s\n",
    ],
    ids=["http+tcp", "tcp+command", "none"],
)
def test_healthcheck_needs_exactly_one_kind(hc):
    msg = only_issue(with_web("    healthcheck:\n" + hc))
    assert msg.startswith("kiln.yaml:9: services.web.healthcheck: give exactly one of")


def test_healthcheck_http_path_must_start_with_slash():
    msg = only_issue(with_web("    healthcheck:\n      http: health\n"))
    assert msg == "kiln.yaml:9: services.web.healthcheck: http path must start with '/', e.g. /health"


def test_tcp_healthcheck_needs_a_port():
    text = VALID.replace("    port: 8000\n", "    healthcheck:\n      tcp: true\n")
    assert only_issue(text) == "kiln.yaml:6: services.web: a tcp healthcheck needs 'port' to be set"


def test_command_healthcheck_needs_no_port():
    text = VALID.replace("    port: 8000\n", "    healthcheck:\n      command: [/bin/check]\n")
    spec = parse_spec(text)
    assert spec.services["web"].healthcheck.kind == "command"
    assert spec.public_service is None


def test_bad_duration_in_healthcheck():
    msg = only_issue(with_web("    healthcheck:\n      http: /health\n      interval: 2x\n"))
    assert msg == "kiln.yaml:11: services.web.healthcheck.interval: '2x' is not a duration; write it like 2s, 500ms or 1m30s"


def test_writable_paths_must_be_absolute():
    msg = only_issue(with_web("    writable: [tmp]\n"))
    assert msg.startswith("kiln.yaml:6: services.web: writable path 'tmp' must be absolute")


def test_build_with_both_dockerfile_and_steps():
    msg = only_issue(VALID.replace("  steps:\n", "  dockerfile: Dockerfile\n  steps:\n"))
    assert msg == "kiln.yaml:2: build: give either 'dockerfile' or 'steps', not both"


def test_build_with_neither_dockerfile_nor_steps():
    msg = only_issue(VALID.replace("  steps:\n    - COPY . /app\n", "  context: .\n"))
    assert msg.startswith("kiln.yaml:2: build: give a 'dockerfile'")


# --- durations ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("500ms", 0.5), ("2s", 2.0), ("1m30s", 90.0), ("1h", 3600.0), ("1.5s", 1.5), (" 1m 30s ", 90.0),
     (2, 2.0), (0, 0.0), (2.5, 2.5)],
)
def test_parse_duration(value, seconds):
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["2x", "", "s", "10", "1s2", "-1s", "2 x", "ms500"])
def test_parse_duration_rejects_bad_text(value):
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(value)


@pytest.mark.parametrize("value", [-1, -0.5])
def test_parse_duration_rejects_negative_numbers(value):
    with pytest.raises(ValueError, match="0 or more"):
        parse_duration(value)


@pytest.mark.parametrize("value", [True, False, None, [1], {"s": 1}])
def test_parse_duration_rejects_other_types(value):
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(value)


def test_parse_duration_rejects_nan():
    with pytest.raises(ValueError):
        parse_duration(math.nan)


# --- resources ----------------------------------------------------------------------------------


def test_resources_parse_sizes_and_keep_defaults():
    from kiln.spec.loader import parse_spec as parse

    web = parse(with_web("    resources: {memory: 1G, pids: 100}\n")).services["web"]
    assert (web.resources.memory, web.resources.cpus, web.resources.pids) == (1024**3, 1.0, 100)
    assert parse(with_web("    resources: {memory: 65536k}\n")).services["web"].resources.memory == 64 * 1024**2
    assert parse(with_web("    resources: {memory: 268435456}\n")).services["web"].resources.memory == 256 * 1024**2
    assert parse(VALID).services["web"].resources.model_dump() == {"memory": 512 * 1024**2, "cpus": 1.0, "pids": 512}


@pytest.mark.parametrize(("resources", "problem"), [
    ("{memory: 512MB}", "services.web.resources.memory: '512MB' is not a size; "
                        "write it like 512M, 1G or 65536K (bytes without a suffix)"),
    ("{memory: 1M}", "services.web.resources.memory: '1M' is outside 6M (the least the engine accepts) to 1024G"),
    ("{memory: true}", "services.web.resources.memory: expected a size such as 512M or 1G"),
    ("{cpus: 0}", "services.web.resources.cpus: Input should be greater than 0 (got 0)"),
    ("{pids: 8}", "services.web.resources.pids: Input should be greater than or equal to 16 (got 8)"),
    ("{disk: 1G}", "services.web.resources.disk: unknown key; known keys here: memory, cpus, pids"),
])
def test_bad_resources_are_reported_with_their_line(resources, problem):
    msg = only_issue(with_web(f"    resources: {resources}\n"))
    assert msg == "kiln.yaml:9: " + problem


def test_bad_resources_in_an_overlay_are_reported_with_their_line():
    text = VALID + "    services:\n      web:\n        resources:\n          memory: lots\n"
    msg = only_issue(text)
    assert msg == ("kiln.yaml:15: environments.production.services.web.resources.memory: "
                   "'lots' is not a size; write it like 512M, 1G or 65536K (bytes without a suffix)")
