"""`kiln events` against a SQLite ledger (no engine needed): filtering, --json, --follow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

from kiln.ledger.store import Ledger
from unit.cli_inproc import run_kiln

SPEC = """\
app: shop
build: {steps: ["COPY . /app"]}
services:
  web: {port: 8000}
environments:
  production: {port: 8080}
  staging: {port: 8081}
"""


def kiln_env(tmp_path) -> dict[str, str]:
    environ = {**os.environ, "KILN_HOME": str(tmp_path / ".kiln-home"), "NO_COLOR": "1", "COLUMNS": "200"}
    environ.pop("KILN_LEDGER_URL", None)
    return environ


def test_events_filtered_as_json_and_followed(tmp_path):
    (tmp_path / "kiln.yaml").write_text(SPEC)
    ledger = Ledger(f"sqlite:///{tmp_path / '.kiln-home' / 'ledger.db'}")
    ledger.events.record("shop", "production", "instance.failed", "kiln-shop-production-web-v1-aaa: exited with code 137")
    ledger.events.record("shop", "staging", "rollout.started", "rollout 1 to v1 (rolling)")
    ledger.events.record("shop", "production", "instance.replaced", "replaced [brackets] kept literally")

    def kiln(*args: str) -> subprocess.CompletedProcess:
        return run_kiln(("events", *args), cwd=tmp_path, env=kiln_env(tmp_path))

    every = [json.loads(line) for line in kiln("--json").stdout.splitlines()]
    assert [(e["env"], e["kind"]) for e in every] == [
        ("production", "instance.failed"), ("staging", "rollout.started"), ("production", "instance.replaced")]
    assert all(e["app"] == "shop" and e["at"].endswith("Z") for e in every)
    prod = [json.loads(line)["kind"] for line in kiln("-e", "production", "--json", "-n", "1").stdout.splitlines()]
    assert prod == ["instance.replaced"]
    text = kiln("-e", "production").stdout
    assert "instance.failed" in text and "replaced [brackets] kept literally" in text and "staging" not in text

    follow = subprocess.Popen([sys.executable, "-m", "kiln", "events", "--follow", "--json", "-n", "1"], cwd=tmp_path,
                              env=kiln_env(tmp_path), stdout=subprocess.PIPE, text=True)
    watchdog = threading.Timer(60, follow.kill)  # a broken --follow fails the test instead of hanging it
    watchdog.start()
    try:
        # The newest event comes first: from then on it is following, whatever the machine's load.
        assert json.loads(follow.stdout.readline())["kind"] == "instance.replaced"
        ledger.events.record("shop", "production", "agent.halted", "2 instance failures within 60s exceed the limit of 1")
        assert json.loads(follow.stdout.readline())["kind"] == "agent.halted"
    finally:
        watchdog.cancel()
        follow.terminate()
        follow.wait(timeout=10)
