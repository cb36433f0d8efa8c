"""Issue 15, item 10: nothing from a spec adds a line or a word to haproxy.cfg. A healthcheck or
smoke/check path must be URL characters (no space, quote, '#', '\\' or control character); the
config writes the path as one escaped word all the same, and HAProxy accepts what is written."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from kiln.errors import RouterError, SpecError
from kiln.router.config import render_config
from kiln.spec.loader import parse_spec
from kiln.spec.models import HealthCheck
from kiln.spec.resolve import resolve
from kiln.spec.smoke import HttpCheck
from unit.cli_inproc import run_kiln

SPEC = """\
app: shop
build: {steps: [COPY . /app]}
services:
  web:
    port: 8000
    healthcheck:
      http: HEALTH
environments:
  production: {port: 8080}
"""

INJECTION = "/health\n    program pwn\n        command touch /tmp/pwned"


def test_a_newline_in_the_healthcheck_path_is_a_spec_error_at_its_line():
    text = SPEC.replace("HEALTH", '"/health\\n    program pwn\\n        command touch /tmp/pwned"')
    with pytest.raises(SpecError) as caught:
        parse_spec(text, "kiln.yaml")
    assert [str(i) for i in caught.value.issues] == [
        "kiln.yaml:6: services.web.healthcheck: http path '/health\\n    program pwn\\n        command touch /tmp/pwned' "
        "may hold only the characters of a URL path and query (letters, digits and -._~!$&'()*+,;=:@/?%; at most "
        "1024): no spaces, quotes, '#', '\\' or control characters"]


@pytest.mark.parametrize("path", [INJECTION, "/a b", "/a\tb", "/a\rb", "/a\x00", "/a#b", '/a"b', "/a\\b", "/é",
                                  "/a\x7f", "/" + "a" * 1024])
def test_paths_that_are_no_url_paths_are_refused_for_healthchecks_and_checks(path):
    with pytest.raises(ValidationError, match="may hold only the characters of a URL path"):
        HealthCheck(http=path)
    with pytest.raises(ValidationError, match="may hold only the characters of a URL path"):
        HttpCheck(path=path)


def test_smoke_and_pipeline_check_paths_are_refused_at_their_line():
    text = SPEC.replace("      http: HEALTH\n", "      http: /ok\n    rollout:\n      smoke:\n        - {path: \"/x\\ny\"}\n")
    with pytest.raises(SpecError, match=r"^kiln.yaml:10: services.web.rollout.smoke\[0\]: check path '/x\\ny' may hold"):
        parse_spec(text, "kiln.yaml")
    text = SPEC.replace("HEALTH", "/ok") + "pipeline:\n  steps:\n    - {smoke: production, checks: [{path: '/a b'}]}\n"
    with pytest.raises(SpecError, match=r"kiln.yaml:12: pipeline.steps\[0\].checks\[0\]: check path '/a b' may hold"):
        parse_spec(text, "kiln.yaml")


def _haproxy_check(config: str, tmp_path: Path) -> subprocess.CompletedProcess:
    path = tmp_path / "haproxy.cfg"
    path.write_text(config.replace("/run/kiln/admin.sock", str(tmp_path / "admin.sock")))
    return subprocess.run(["haproxy", "-c", "-f", str(path)], capture_output=True, text=True, timeout=30)


def test_a_config_bypassing_the_spec_still_cannot_inject_a_line(tmp_path):
    cfg = resolve(parse_spec(SPEC.replace("HEALTH", "/health")), "production")
    web = cfg.services[0]
    evil = web.model_copy(update={"healthcheck": web.healthcheck.model_copy(update={"http": INJECTION})})
    forged = cfg.model_copy(update={"services": (evil, *cfg.services[1:])})
    with pytest.raises(RouterError, match="refusing to write the healthcheck path '/health\\\\n    program pwn"):
        render_config(forged)


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="needs the host's haproxy")
def test_every_url_character_is_written_as_one_word_haproxy_accepts(tmp_path):
    path = "/h-._~!$&'()*+,;=:@/?%41x=$HOME"
    cfg = resolve(parse_spec(SPEC.replace("HEALTH", f'"{path}"')), "production")
    text = render_config(cfg)
    checks = [line for line in text.splitlines() if "httpchk" in line]
    assert checks == ["    option httpchk GET /h-._~!\\$&\\'()*+,;=:@/?%41x=\\$HOME"]
    assert not any(line.lstrip().startswith("program") for line in text.splitlines())
    checked = _haproxy_check(text, tmp_path)
    assert checked.returncode == 0, checked.stderr


# --- issue 25, item 5: `bind` is an IP literal, written as one escaped word --------------------

BIND_INJECTION = "127.0.0.1:8080\\n\\nprogram pwn\\n    command touch /tmp/pwned\\n\\nfrontend x\\n    bind 127.0.0.1"


@pytest.mark.parametrize("bind", [BIND_INJECTION, "localhost", "127.0.0.1 ssl crt /etc/shadow", "127.0.0.1:9",
                                  "10.0.0.256", "", "::1%lo"])
def test_kiln_validate_refuses_a_bind_that_is_not_an_ip_literal(tmp_path, bind):
    (tmp_path / "kiln.yaml").write_text(SPEC.replace("HEALTH", "/health").replace(
        "production: {port: 8080}", f'production: {{port: 8080, bind: "{bind}"}}'))
    done = run_kiln(["validate"], cwd=tmp_path, env={"KILN_HOME": str(tmp_path / "home"), "NO_COLOR": "1"})
    assert done.returncode == 2, done.stdout
    assert "kiln.yaml:9: environments.production.bind:" in done.stderr and "is not an IP address" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("bind, written", [("0.0.0.0", "0.0.0.0:8080"), ("127.0.0.2", "127.0.0.2:8080"),
                                           ("::1", "[::1]:8080"), ("0:0::1", "[::1]:8080")])
def test_an_ip_literal_bind_is_written_as_haproxy_reads_it(tmp_path, bind, written):
    cfg = resolve(parse_spec(SPEC.replace("HEALTH", "/health").replace(
        "production: {port: 8080}", f'production: {{port: 8080, bind: "{bind}"}}')), "production")
    text = render_config(cfg, on_host=True)
    assert [line for line in text.splitlines() if line.strip().startswith("bind")] == [f"    bind {written}"]
    if shutil.which("haproxy"):
        checked = _haproxy_check(text, tmp_path)
        assert checked.returncode == 0, checked.stderr


def test_a_recorded_bind_bypassing_the_spec_still_cannot_inject_a_line():
    """A release an older kiln recorded may hold any bind: the renderer refuses a control character."""
    cfg = resolve(parse_spec(SPEC.replace("HEALTH", "/health")), "production")
    forged = cfg.model_copy(update={"bind": "127.0.0.1:8080\nprogram pwn\n    command touch /tmp/pwned\n#"})
    with pytest.raises(RouterError, match="refusing to write the bind address"):
        render_config(forged, on_host=True)
