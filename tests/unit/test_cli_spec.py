"""The real `kiln` CLI in a subprocess: spec errors are reported, not raised.

Each CLI start costs ~0.3 s, so the module starts all of its commands at once and each test
checks the result of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from kiln import __version__

BAD = """\
app: shop
build:
  steps: [COPY . /app]
services:
  web:
    port: 8000
    replicas: lots
environments:
  production:
    port: 8080
"""


def kiln(*args, cwd):
    environ = {**os.environ, "KILN_HOME": str(cwd / ".kiln-home"), "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "kiln", *args], cwd=cwd, env=environ,
                          capture_output=True, text=True, timeout=60)


def _init_then_validate_then_init_again(tmp):
    target = tmp / "my_app"
    first = kiln("init", str(target), cwd=tmp)
    validated = kiln("validate", "-f", str(target / "kiln.yaml"), "--json", cwd=tmp)
    again = kiln("init", str(target), cwd=tmp)
    return first, target, validated, again


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    (tmp / "bad").mkdir()
    (tmp / "bad" / "kiln.yaml").write_text(BAD)
    (tmp / "markup").mkdir()
    (tmp / "markup" / "kiln.yaml").write_text(BAD.replace("replicas: lots", "replicas: '[/x]'"))
    with ThreadPoolExecutor(max_workers=6) as pool:
        futures = {
            "bad": pool.submit(kiln, "validate", "-f", str(tmp / "bad" / "kiln.yaml"), cwd=tmp),
            "markup": pool.submit(kiln, "validate", "-f", str(tmp / "markup" / "kiln.yaml"), cwd=tmp),
            "version": pool.submit(kiln, "--version", cwd=tmp),
            "help": pool.submit(kiln, "--help", cwd=tmp),
            "init": pool.submit(_init_then_validate_then_init_again, tmp),
        }
        return {name: f.result() for name, f in futures.items()}


def test_validate_reports_wrong_type_with_line_and_exit_2(runs):
    r = runs["bad"]
    assert r.returncode == 2, r.stderr
    assert "kiln.yaml:7: services.web.replicas" in r.stderr
    assert "(got 'lots')" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_validate_reports_values_that_look_like_markup(runs):
    r = runs["markup"]
    assert "Traceback" not in r.stderr
    assert r.returncode == 2
    assert "(got '[/x]')" in r.stderr


def test_version(runs):
    r = runs["version"]
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"kiln {__version__}"


def test_help(runs):
    r = runs["help"]
    assert r.returncode == 0, r.stderr
    for command in ("init", "validate", "deploy", "rollback", "status"):
        assert command in r.stdout


def test_init_writes_a_spec_that_validates(runs):
    first, target, validated, again = runs["init"]
    assert first.returncode == 0, first.stderr
    assert "app: my-app" in (target / "kiln.yaml").read_text()
    assert validated.returncode == 0, validated.stderr
    doc = json.loads(validated.stdout)
    assert doc["valid"] is True
    assert sorted(doc["environments"]) == ["production", "staging"]
    assert doc["environments"]["staging"]["services"][0]["replicas"] == 1
    # a second init does not overwrite
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr
