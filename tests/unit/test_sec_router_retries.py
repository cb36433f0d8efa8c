"""Issue 15, item 16: the router replays a request on another server only when the first cannot
have run it (connection failure), except for safe methods (GET, HEAD, OPTIONS), which may also be
replayed after an empty response or a response timeout. HAProxy 2.6 applies `retry-on` to every
method, so each backend disables layer-7 retries for the others; the host's haproxy checks the
config."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from kiln.router.config import render_config
from kiln.spec.loader import parse_spec
from kiln.spec.resolve import resolve

SPEC = """\
app: shop
build: {steps: [COPY . /app]}
services:
  web:
    port: 8000
    healthcheck: {http: /health}
environments:
  production: {port: 8080, preview_port: 8090}
"""

RULE = "    http-request disable-l7-retry unless METH_GET || METH_HEAD || METH_OPTIONS"


def _sections(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines():
        if line and not line.startswith((" ", "#")):
            current = line
            out[current] = []
        elif current and line.strip():
            out[current].append(line)
    return out


def test_every_backend_disables_layer_7_retries_of_unsafe_methods():
    text = render_config(resolve(parse_spec(SPEC), "production"))
    sections = _sections(text)
    assert "    retry-on conn-failure empty-response response-timeout" in sections["defaults"]
    backends = {name: lines for name, lines in sections.items() if name.startswith("backend ")}
    assert sorted(backends) == ["backend svc-web", "backend svc-web-preview"]
    for lines in backends.values():
        assert lines.count(RULE) == 1
    # the rule is the only http-request rule a backend has: nothing re-enables the retries
    assert [line for lines in backends.values() for line in lines if "l7-retry" in line] == [RULE, RULE]


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="needs the host's haproxy")
def test_haproxy_accepts_the_config(tmp_path):
    text = render_config(resolve(parse_spec(SPEC), "production"))
    path = tmp_path / "haproxy.cfg"
    path.write_text(text.replace("/run/kiln/admin.sock", str(tmp_path / "admin.sock")))
    checked = subprocess.run(["haproxy", "-c", "-f", str(path)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
    assert "disable-l7-retry" not in checked.stderr  # no warning about the rule either
