"""Environments against a real dockerd and HAProxy: promotion of the same artifact, env diff,
exact re-creation of a past release (also after `docker rmi`), previews that expire, and secrets
that never reach a manifest or the ledger."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from datetime import UTC, datetime

import docker
import pytest
from conftest import App

SECRET = "s3cret-only-in-the-kiln-process-7f1c"


def git(app: App, *args: str) -> str:
    return subprocess.run(["git", "-C", str(app.dir), *args], check=True, capture_output=True, text=True).stdout.strip()


def commit(app: App, message: str) -> str:
    git(app, "add", "-A")
    git(app, "-c", "user.name=kiln test", "-c", "user.email=test@kiln", "commit", "-q", "-m", message)
    return git(app, "rev-parse", "HEAD")


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()


def status(app: App, env: str) -> dict:
    return app.kiln_json("status", "-e", env)


def release(app: App, env: str, number: int) -> dict:
    return next(r for r in app.kiln_json("releases", "-e", env) if r["number"] == number)


@pytest.fixture(scope="module")
def repo(app: App) -> App:
    """The app in a git repository, with a secret reference in production's overlay."""
    def secret_ref(data: dict) -> None:
        data["environments"]["production"]["services"] = {"web": {"environment": {"API_TOKEN": "secret:api-token"}}}
    app.edit_spec(secret_ref)
    git(app, "init", "-q")
    commit(app, "v1")
    os.environ["KILN_SECRET_API_TOKEN"] = SECRET
    yield app
    os.environ.pop("KILN_SECRET_API_TOKEN", None)


def test_promote_deploys_the_very_image_staging_runs(repo: App) -> None:
    repo.kiln("deploy", "-e", "staging")
    promoted = repo.kiln_json("promote", "--from", "staging", "--to", "production")
    assert promoted["release"]["origin"] == "promoted from staging v1"
    staging, production = status(repo, "staging"), status(repo, "production")
    assert staging["release"]["image"] == production["release"]["image"]
    assert len(production["instances"]) == 2 and len(staging["instances"]) == 1  # each by its own overlay
    assert get(repo.url("production")).startswith("hello from v1")


def test_env_diff_matches_then_names_exactly_the_changed_key(repo: App) -> None:
    same = repo.kiln("env", "diff", "staging", "production", "--json", check=False)
    assert same.returncode == 0, same.stdout + same.stderr
    doc = json.loads(same.stdout)
    assert doc["match"] and doc["image"]["same"]
    assert {d["key"] for d in doc["differences"]} == {"env", "port", "services.web.replicas",
                                                      "services.web.environment.API_TOKEN"}
    assert all(d["declared"] for d in doc["differences"])

    def greet(data: dict) -> None:
        data["services"]["web"]["environment"]["GREETING"] = "hi"
    repo.edit_spec(greet)
    commit(repo, "greeting")
    repo.kiln("deploy", "-e", "staging")
    changed = repo.kiln("env", "diff", "staging", "production", "--json", check=False)
    assert changed.returncode == 1
    doc = json.loads(changed.stdout)
    assert [d["key"] for d in doc["differences"] if not d["declared"]] == ["services.web.environment.GREETING"]
    assert doc["image"]["same"]  # an env value is config, not image
    text = repo.kiln("env", "diff", "staging", "production", check=False)
    assert "services.web.environment.GREETING" in text.stdout and "differ" in text.stderr


def test_recreate_runs_release_1_beside_the_current_release(repo: App, engine: docker.DockerClient) -> None:
    repo.set_message("second version")
    commit(repo, "second version")
    repo.kiln("deploy", "-e", "staging")
    repo.kiln("promote", "--from", "staging", "--to", "production")
    v1 = release(repo, "production", 1)
    current = status(repo, "production")["release"]
    assert current["image"] != v1["image"]

    made = repo.kiln_json("recreate", "--release", "1", "--from-env", "production", "--env", "old")
    assert made["release"]["origin"] == "recreated from production v1"
    old = status(repo, "old")
    assert old["release"]["image"] == v1["image"]  # the same digest
    assert old["url"] != status(repo, "production")["url"]  # its own router port
    assert "message=hello, world" in get(old["url"])
    assert "message=second version" in get(repo.url("production"))  # the original keeps serving its release
    shown = repo.kiln_json("env", "show", "old")
    assert shown["config_digest"] != v1["number"] and shown["config"]["env"] == "old"
    assert {e["env"]: e["kind"] for e in repo.kiln_json("env", "list")}["old"] == "recreated"


def test_recreate_rebakes_a_removed_image_with_the_same_inputs_hash(repo: App, engine: docker.DockerClient) -> None:
    v1 = release(repo, "production", 1)
    repo.kiln("destroy", "-e", "old")
    engine.images.remove(v1["image"], force=True)
    proc = repo.kiln("recreate", "--release", "1", "--from-env", "production", "--env", "old2")
    assert "rebaking it from commit" in proc.stderr and "matches the release" in proc.stderr
    rebuilt = status(repo, "old2")["release"]
    assert release(repo, "old2", rebuilt["number"])["inputs_hash"] == v1["inputs_hash"]
    assert "message=hello, world" in get(status(repo, "old2")["url"])
    repo.kiln("destroy", "-e", "old2")


def test_a_preview_with_a_short_ttl_is_gone_after_prune(repo: App, engine: docker.DockerClient) -> None:
    made = repo.kiln_json("preview", "--ref", "HEAD", "--ttl", "6s")
    ends = datetime.fromisoformat(made["expires_at"].rstrip("Z")).replace(tzinfo=UTC).timestamp()
    env = made["env"]
    assert env.startswith("preview-") and made["expires_at"]
    assert "message=second version" in get(made["url"])
    assert env in {e["env"] for e in repo.kiln_json("env", "list")}
    assert status(repo, env)["release"]["commit"] == git(repo, "rev-parse", "HEAD")
    assert repo.kiln_json("preview", "prune")["removed"] == []  # not expired yet
    time.sleep(max(0.0, ends - time.time()) + 0.2)
    assert repo.kiln_json("preview", "prune")["removed"] == [env]
    assert env not in {e["env"] for e in repo.kiln_json("env", "list")}
    assert not engine.containers.list(all=True, filters={"label": [f"kiln.app={repo.name}", f"kiln.env={env}"]})


def test_secrets_reach_the_instance_but_never_a_manifest_or_the_ledger(repo: App, engine: docker.DockerClient) -> None:
    (one,) = engine.containers.list(filters={"label": [f"kiln.app={repo.name}", "kiln.env=production",
                                                       "kiln.role=instance"]})[:1]
    assert f"API_TOKEN={SECRET}" in one.attrs["Config"]["Env"]
    number = status(repo, "production")["release"]["number"]
    manifest = repo.kiln("release", "export", str(number), "-e", "production").stdout
    assert "secret:api-token" in manifest and SECRET not in manifest
    assert SECRET.encode() not in (repo.home / "ledger.db").read_bytes()
    for wal in repo.home.glob("ledger.db-*"):
        assert SECRET.encode() not in wal.read_bytes()

    # Imported elsewhere it is the same release, recorded as imported.
    other = repo.home.parent / "other-home"
    env = {**os.environ, "KILN_HOME": str(other)}
    imported = subprocess.run(["kiln", "release", "import", "-", "--json"], input=manifest, env=env,
                              capture_output=True, text=True, check=True)
    doc = json.loads(imported.stdout)
    assert doc["image"] == status(repo, "production")["release"]["image"] and doc["origin"].startswith("imported")

    # Without the secret, a deploy is refused before anything changes.
    os.environ.pop("KILN_SECRET_API_TOKEN")
    try:
        refused = repo.kiln("deploy", "-e", "production", check=False)
    finally:
        os.environ["KILN_SECRET_API_TOKEN"] = SECRET
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "services.web.environment.API_TOKEN refers to secret 'api-token'" in refused.stderr
    assert status(repo, "production")["release"]["number"] == number


def test_gc_keeps_what_serves_and_pinned_releases(repo: App, engine: docker.DockerClient) -> None:
    repo.kiln("release", "pin", "1", "-e", "staging")
    dry = repo.kiln_json("gc", "--keep", "1", "--dry-run")
    kept = {k["image"] for k in dry["kept"]}
    for env in ("production", "staging"):
        assert status(repo, env)["release"]["image"] in kept
    assert release(repo, "staging", 1)["image"] in kept  # pinned
    assert all(i["image"] not in kept for i in dry["images"])
    done = repo.kiln_json("gc", "--keep", "1")
    assert done["images"] == dry["images"]
    for env in ("production", "staging"):
        assert get(status(repo, env)["url"])  # still serving
