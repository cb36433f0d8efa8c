"""Environments against a real dockerd and HAProxy: promotion of the same artifact, env diff,
exact re-creation of a past release (also after `docker rmi`), previews that expire, and secrets
that never reach a manifest or the ledger. Each test starts from a fresh app in a git repository
and deploys what it needs itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
    return next(r for r in app.releases(env) if r["number"] == number)


def manifest(app: App, env: str, number: int) -> dict:
    return json.loads(app.kiln("release", "export", str(number), "-e", env).stdout)


def new_version(app: App, message: str) -> None:
    """A new image: another message in app.py, committed."""
    app.set_message(message)
    commit(app, message)


@pytest.fixture
def repo(app: App, monkeypatch: pytest.MonkeyPatch) -> App:
    """A fresh app in a git repository (one commit), with a secret reference in production's
    overlay and the secret's value in the environment kiln runs with. Nothing deployed."""
    def secret_ref(data: dict) -> None:
        data["environments"]["production"]["services"] = {"web": {"environment": {"API_TOKEN": "secret:api-token"}}}
    app.edit_spec(secret_ref)
    git(app, "init", "-q")
    commit(app, "v1")
    monkeypatch.setenv("KILN_SECRET_API_TOKEN", SECRET)
    return app


def test_promote_deploys_the_very_image_staging_runs(repo: App) -> None:
    repo.kiln("deploy", "-e", "staging")
    staged = repo.serving("staging")
    promoted = repo.kiln_json("promote", "--from", "staging", "--to", "production")
    assert promoted["release"]["origin"] == f"promoted from staging v{staged['number']}"
    staging, production = status(repo, "staging"), status(repo, "production")
    assert staging["release"]["image"] == production["release"]["image"] == staged["image"]
    assert production["release"]["number"] == promoted["release"]["number"] == repo.releases()[0]["number"]
    assert len(production["instances"]) == 2 and len(staging["instances"]) == 1  # each by its own overlay
    assert get(repo.url("production")).startswith(f"hello from v{production['release']['number']} ")


def test_env_diff_matches_then_names_exactly_the_changed_key(repo: App) -> None:
    repo.kiln("deploy", "-e", "staging")
    repo.kiln("promote", "--from", "staging", "--to", "production")
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


def test_recreate_runs_a_past_release_beside_the_current_release(repo: App, engine: docker.DockerClient) -> None:
    repo.kiln("deploy", "-e", "production")
    first = repo.serving("production")
    new_version(repo, "second version")
    repo.kiln("deploy", "-e", "production")
    current = status(repo, "production")["release"]
    assert current["number"] == first["number"] + 1 and current["image"] != first["image"]

    made = repo.kiln_json("recreate", "--release", str(first["number"]), "--from-env", "production", "--env", "old")
    assert made["release"]["origin"] == f"recreated from production v{first['number']}"
    old = status(repo, "old")
    assert old["release"]["image"] == first["image"]  # the same digest
    assert old["url"] != status(repo, "production")["url"]  # its own router port
    assert "message=hello, world" in get(old["url"])
    assert "message=second version" in get(repo.url("production"))  # the original keeps serving its release
    # The same resolved config as the past release, but for its own environment name and port.
    shown = repo.kiln_json("env", "show", "old")
    recorded = manifest(repo, "production", first["number"])["release"]
    mine = manifest(repo, "old", old["release"]["number"])["release"]
    assert shown["config"] == mine["config"] and shown["config_digest"] == mine["config_digest"]
    assert shown["config"]["env"] == "old" and shown["config"]["port"] != recorded["config"]["port"]
    assert old["url"].endswith(f":{shown['config']['port']}")
    drop = ("env", "port", "preview_port")
    assert {k: v for k, v in shown["config"].items() if k not in drop} == \
        {k: v for k, v in recorded["config"].items() if k not in drop}
    assert {e["env"]: e["kind"] for e in repo.kiln_json("env", "list")}["old"] == "recreated"


def test_recreate_rebakes_a_removed_image_with_the_same_inputs_hash(repo: App, engine: docker.DockerClient) -> None:
    repo.kiln("deploy", "-e", "production")
    (first,) = repo.releases("production")
    new_version(repo, "second version")
    repo.kiln("deploy", "-e", "production")  # nothing runs the first image any more
    engine.images.remove(first["image"], force=True)
    proc = repo.kiln("recreate", "--release", str(first["number"]), "--from-env", "production", "--env", "old2")
    assert "rebaking it from commit" in proc.stderr and "matches the release" in proc.stderr
    rebuilt = status(repo, "old2")["release"]
    assert release(repo, "old2", rebuilt["number"])["inputs_hash"] == first["inputs_hash"]
    assert "message=hello, world" in get(status(repo, "old2")["url"])
    assert "message=second version" in get(repo.url("production"))


def test_a_preview_with_a_short_ttl_is_gone_after_prune(repo: App, engine: docker.DockerClient) -> None:
    new_version(repo, "previewed")
    made = repo.kiln_json("preview", "--ref", "HEAD", "--ttl", "15s")  # room for 4 commands on a busy machine
    ends = datetime.fromisoformat(made["expires_at"].rstrip("Z")).replace(tzinfo=UTC).timestamp()
    env = made["env"]
    assert env.startswith("preview-") and made["expires_at"]
    assert "message=previewed" in get(made["url"])
    assert env in {e["env"] for e in repo.kiln_json("env", "list")}
    assert status(repo, env)["release"]["commit"] == git(repo, "rev-parse", "HEAD")
    assert repo.kiln_json("preview", "prune")["removed"] == []  # not expired yet
    time.sleep(max(0.0, ends - time.time()) + 0.2)
    assert repo.kiln_json("preview", "prune")["removed"] == [env]
    assert env not in {e["env"] for e in repo.kiln_json("env", "list")}
    assert not engine.containers.list(all=True, filters={"label": [f"kiln.app={repo.name}", f"kiln.env={env}"]})


def test_secrets_reach_the_instance_but_never_a_manifest_or_the_ledger(
        repo: App, engine: docker.DockerClient, monkeypatch: pytest.MonkeyPatch) -> None:
    repo.kiln("deploy", "-e", "production")
    one = engine.containers.list(filters={"label": [f"kiln.app={repo.name}", "kiln.env=production",
                                                    "kiln.role=instance"]})[0]
    assert f"API_TOKEN={SECRET}" in one.attrs["Config"]["Env"]
    number = status(repo, "production")["release"]["number"]
    exported = repo.kiln("release", "export", str(number), "-e", "production").stdout
    assert "secret:api-token" in exported and SECRET not in exported
    assert SECRET.encode() not in (repo.home / "ledger.db").read_bytes()
    for wal in repo.home.glob("ledger.db-*"):
        assert SECRET.encode() not in wal.read_bytes()

    # Imported elsewhere it is the same release, recorded as imported.
    other = repo.home.parent / "other-home"
    env = {**os.environ, "KILN_HOME": str(other)}
    imported = subprocess.run([sys.executable, "-m", "kiln", "release", "import", "-", "--json"], input=exported,
                              env=env, capture_output=True, text=True, check=True)
    doc = json.loads(imported.stdout)
    assert doc["image"] == status(repo, "production")["release"]["image"] and doc["origin"].startswith("imported")

    # Without the secret, a deploy is refused before anything changes.
    monkeypatch.delenv("KILN_SECRET_API_TOKEN")
    repo.set_message("never deployed")
    refused = repo.kiln("deploy", "-e", "production", check=False)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "services.web.environment.API_TOKEN refers to secret 'api-token'" in refused.stderr
    assert status(repo, "production")["release"]["number"] == number
    assert repo.releases()[0]["number"] == number  # nothing recorded


def test_gc_keeps_what_serves_and_pinned_releases(repo: App, engine: docker.DockerClient) -> None:
    images = []
    for message in ("first", "second", "third"):
        new_version(repo, message)
        repo.kiln("deploy", "-e", "staging")
        images.append(repo.serving("staging")["image"])
    repo.kiln("promote", "--from", "staging", "--to", "production")
    first = next(r for r in repo.releases("staging") if r["image"] == images[0])
    repo.kiln("release", "pin", str(first["number"]), "-e", "staging")
    dry = repo.kiln_json("gc", "--keep", "1", "--dry-run")
    kept = {k["image"] for k in dry["kept"]}
    for env in ("production", "staging"):
        assert status(repo, env)["release"]["image"] in kept
    assert images[0] in kept  # pinned
    assert [i["image"] for i in dry["images"]] == [images[1]]  # neither serving, pinned nor among the last 1
    assert engine.images.get(images[1])  # a dry run removes nothing
    done = repo.kiln_json("gc", "--keep", "1")
    assert done["images"] == dry["images"]
    with pytest.raises(docker.errors.ImageNotFound):
        engine.images.get(images[1])
    for env in ("production", "staging"):
        assert get(status(repo, env)["url"])  # still serving
