"""`kiln releases`, `kiln rollout list/show`, `kiln release export` against a SQLite ledger (no
engine needed): what they print, and that ledger problems reach the user as one clear message."""

from __future__ import annotations

import json
import os
import subprocess

from kiln.ledger.store import Ledger
from unit.cli_inproc import run_kiln

SPEC = """\
app: shop
build: {steps: ["COPY . /app"]}
services:
  web: {port: 8000}
environments:
  production: {port: 8080}
"""


def kiln(tmp_path, *args: str, **extra: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "KILN_HOME": str(tmp_path / ".kiln-home"), "NO_COLOR": "1", "COLUMNS": "200", **extra}
    if "KILN_LEDGER_URL" not in extra:
        environ.pop("KILN_LEDGER_URL", None)
    return run_kiln(args, cwd=tmp_path, env=environ)


def seeded(tmp_path) -> Ledger:
    (tmp_path / "kiln.yaml").write_text(SPEC)
    ledger = Ledger(f"sqlite:///{tmp_path / '.kiln-home' / 'ledger.db'}")
    common = dict(image_tag="kiln/shop:abc", inputs_hash="h" * 64, config={"app": "shop"}, config_digest="c" * 64,
                  spec_digest="s" * 64, commit="0123456789abcdef", dirty=False)
    for n in (1, 2):
        ledger.releases.record(app="shop", env="production", image=f"sha256:{str(n) * 64}", **common)
    for to, state in ((1, "succeeded"), (2, "aborted")):
        r = ledger.rollouts.start("shop", "production", to - 1 or None, to, "rolling")
        ledger.rollouts.record_step(r.id, "Start", f"web-{to}", "started")
        ledger.rollouts.record_step(r.id, "Start", f"web-{to}", "done")
        ledger.rollouts.finish(r.id, state, "boom" if state == "aborted" else "")
    return ledger


def test_releases_and_rollouts_as_json_and_text(tmp_path):
    seeded(tmp_path)
    rels = json.loads(kiln(tmp_path, "releases", "--json").stdout)
    assert [(r["number"], r["state"]) for r in rels] == [(2, "aborted"), (1, "serving")]
    text = kiln(tmp_path, "releases").stdout
    assert "▶" in text and "v2" in text and "0123456789ab" in text

    rollouts = json.loads(kiln(tmp_path, "rollout", "list", "--json").stdout)
    assert [(r["id"], r["from"], r["to"], r["state"], r["reason"]) for r in rollouts] == [
        (2, 1, 2, "aborted", "boom"), (1, None, 1, "succeeded", "")]
    latest = json.loads(kiln(tmp_path, "rollout", "show", "--json").stdout)
    assert latest["id"] == 2
    assert [(s["action"], s["state"], s["seconds"] is not None) for s in latest["steps"]] == [
        ("Start", "started", False), ("Start", "done", True)]
    shown = kiln(tmp_path, "rollout", "show", "1")
    assert "rollout 1: v- → v1  rolling  succeeded" in shown.stdout and "web-1" in shown.stdout


def test_a_missing_rollout_or_release_is_a_usage_error(tmp_path):
    seeded(tmp_path)
    missing = kiln(tmp_path, "rollout", "show", "99")
    assert missing.returncode == 2 and "no rollout 99 in shop/production" in missing.stderr
    assert "Traceback" not in missing.stderr
    export = kiln(tmp_path, "release", "export", "9")
    assert export.returncode == 2 and "shop/production has no release v9." in export.stderr
    assert "kiln releases -e production" in export.stderr and "Traceback" not in export.stderr


def test_a_ledger_that_cannot_be_opened_is_one_message(tmp_path):
    (tmp_path / "kiln.yaml").write_text(SPEC)
    (tmp_path / "broken.db").write_bytes(b"not SQLite at all" * 100)
    for args in (("releases",), ("rollout", "list"), ("events",), ("lock", "status")):
        done = kiln(tmp_path, *args, KILN_LEDGER_URL=f"sqlite:///{tmp_path / 'broken.db'}")
        assert done.returncode == 1, (args, done.stderr)
        assert "cannot open the ledger at" in done.stderr and "not a database" in done.stderr
        assert "KILN_LEDGER_URL" in done.stderr and "Traceback" not in done.stderr


def test_ci_runs_show_logs_approve_and_cancel(tmp_path):
    from kiln.ledger.ci_store import CiStore

    store = CiStore(seeded(tmp_path))
    run, _ = store.enqueue(repo="/r", spec="kiln.yaml", ref="refs/heads/main", queue="q", commit="a" * 40,
                           trigger="cli", app="shop")
    bake, promote = store.add_steps(run.id, [(0, 0, "bake", "bake", "succeeded", ""),
                                             (1, 1, "promote", "promote", "waiting", "")])
    store.log(run.id, bake.id, ["hello"])
    store.log(run.id, None, ["no step"])
    assert kiln(tmp_path, "ci", "logs", str(run.id)).stdout.splitlines() == [
        f"{'0:bake':<24} | hello", f"{'-':<24} | no step"]
    shown = json.loads(kiln(tmp_path, "ci", "show", str(run.id), "--json").stdout)
    assert [(s["name"], s["state"]) for s in shown["steps"]] == [("bake", "succeeded"), ("promote", "waiting")]
    assert kiln(tmp_path, "ci", "approve", str(run.id)).returncode == 0
    assert store.step(promote.id).state == "approved"
    again = kiln(tmp_path, "ci", "approve", str(run.id))
    assert again.returncode == 2 and "has no step waiting for approval" in again.stderr
    assert kiln(tmp_path, "ci", "cancel", str(run.id)).returncode == 0
    assert store.run(run.id).cancel
    missing = kiln(tmp_path, "ci", "show", "99")
    assert missing.returncode == 2 and "there is no run 99." in missing.stderr and "Traceback" not in missing.stderr
