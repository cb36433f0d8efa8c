"""Issue 26: one push admission (usecases/pushes.py) for both ways a push reaches kiln, a webhook
of `kiln serve` and the post-receive hook of `kiln ci hook install`: a replayed push (a commit its
ref already ran) or an older one starts nothing on either path, whichever path saw it first."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from kiln import process
from kiln.context import Context
from kiln.errors import PushRefused, UsageError
from kiln.ledger.ci_store import CiStore
from kiln.output import Output
from kiln.server.app import Config, make_app
from kiln.server.webhooks import github_signature
from kiln.settings import Settings
from kiln.usecases import pushes
from unit.cli_inproc import run_kiln

SECRET = "webhook-secret"
MAIN = "refs/heads/main"


def sh(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def commit(repo: Path, text: str) -> str:
    (repo / "app.txt").write_text(text)
    sh(repo, "add", "-A")
    sh(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", text)
    return sh(repo, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "app"
    path.mkdir()
    sh(path, "init", "-q", "-b", "main")
    return path


@pytest.fixture
def spawned(monkeypatch) -> list[tuple[str, ...]]:
    """Every detached runner kiln starts (none is run)."""
    started: list[tuple[str, ...]] = []
    monkeypatch.setattr(process, "spawn_detached", lambda argv, log_file: started.append(tuple(argv)) or 0)
    return started


def webhook(client: TestClient, sha: str, delivery: str):
    body = f'{{"ref": "{MAIN}", "after": "{sha}"}}'.encode()
    return client.post("/hooks/github", content=body, headers={
        "X-GitHub-Event": "push", "X-GitHub-Delivery": delivery, "Content-Type": "application/json",
        "X-Hub-Signature-256": github_signature(SECRET, body)})


def hook(home: Path, repo: Path, lines: str, monkeypatch) -> str:
    """`kiln ci hook receive` as the post-receive hook runs it, git's "old new ref" lines on stdin."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines))
    env = {"KILN_HOME": str(home), "HOME": str(home.parent), "PATH": os.environ["PATH"], "NO_COLOR": "1"}
    done = run_kiln(["ci", "hook", "receive", "--repo", str(repo)], cwd=repo, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_replayed_or_older_push_is_refused_on_the_webhook_and_on_the_hook_path(repo, tmp_path, spawned, monkeypatch):
    first, second = commit(repo, "one\n"), commit(repo, "two\n")
    home = tmp_path / "home"
    ctx = Context(Settings(home=home, ledger_url=f"sqlite:///{home / 'ledger.db'}"), Output(quiet=True))
    client = TestClient(make_app(ctx, Config(repo=str(repo), spec="kiln.yaml", github=SECRET), start_runner=True))
    store = CiStore(ctx.ledger)

    # the webhook runs `second`; the same push again, through either path, starts nothing
    assert webhook(client, second, "d-1").json() == {"status": "queued", "run": 1}
    assert webhook(client, second, "d-2").status_code == 409
    said = hook(home, repo, f"{first} {second} {MAIN}\n", monkeypatch)
    assert f"no run for {MAIN} ({second[:12]}): {MAIN} already ran {second[:12]} (run 1)" in said
    # an older commit: refused by the hook as by the webhook
    assert "is older than" in hook(home, repo, f"{'0' * 40} {first} {MAIN}\n", monkeypatch)
    assert webhook(client, first, "d-3").status_code == 409

    # the hook runs `third`; the webhook then refuses it as a replay, and so does the hook
    third = commit(repo, "three\n")
    assert "run 2 queued" in hook(home, repo, f"{second} {third} {MAIN}\n", monkeypatch)
    replay = webhook(client, third, "d-4")
    assert replay.status_code == 409 and replay.json() == {
        "error": f"{MAIN} already ran {third[:12]} (run 2); a replayed push starts nothing"}
    assert "no run for" in hook(home, repo, f"{second} {third} {MAIN}\n", monkeypatch)

    assert [(r.commit, r.trigger) for r in reversed(store.runs())] == [(second, "github"), (third, "hook")]
    assert len(spawned) == 2  # a runner for each admitted push, none for a refused one


def test_the_admission_rules_in_order(repo, tmp_path, spawned):
    sha = commit(repo, "one\n")
    ctx = Context(Settings(home=tmp_path / "home", ledger_url=f"sqlite:///{tmp_path / 'ledger.db'}"), Output(quiet=True))

    def admit(push, delivery=None):
        return pushes.admit(ctx, repo=str(repo), spec="kiln.yaml", source="github", push=push, delivery=delivery,
                            start_runner=False)

    assert admit(None, "ping-1").to_json() == {"status": "ignored"}  # another event; its delivery is recorded
    with pytest.raises(PushRefused, match="delivery ping-1 was already received"):
        admit(pushes.Pushed(MAIN, sha), "ping-1")
    assert admit(pushes.Pushed(MAIN, "0" * 40), "del-1").status == "ignored"  # a deleted ref
    with pytest.raises(UsageError, match="names no valid ref and commit"):
        admit(pushes.Pushed("main", sha))  # not a full ref name
    assert admit(pushes.Pushed(MAIN, sha), "d-1").to_json() == {"status": "queued", "run": 1}
    assert pushes.replayed(ctx, str(repo), pushes.Pushed(MAIN, sha)).startswith(f"{MAIN} already ran")
    assert pushes.replayed(ctx, str(repo), pushes.Pushed("refs/heads/other", sha)) is None  # another ref
    assert spawned == []
