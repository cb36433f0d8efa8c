"""`kiln serve`'s webhook endpoint: signatures, tokens, replays (FastAPI's test client, no runner)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from kiln.context import Context
from kiln.ledger.ci_store import CiStore
from kiln.output import Output
from kiln.server.app import Config, make_app
from kiln.server.webhooks import github_signature
from kiln.settings import Settings

SECRET = "webhook-secret"
TOKEN = "gitlab-token"  # GitLab's own: no secret is shared between providers
PUSH = json.dumps({"ref": "refs/heads/main", "after": "a" * 40, "repository": {"full_name": "o/r"}}).encode()


@pytest.fixture
def served(tmp_path):
    ctx = Context(Settings(home=tmp_path, ledger_url=f"sqlite:///{tmp_path / 'ledger.db'}"), Output(quiet=True))
    client = TestClient(make_app(ctx, Config(repo="/srv/r.git", spec="kiln.yaml", github=SECRET, gitlab=TOKEN), start_runner=False))
    return client, CiStore(ctx.ledger)


def github(client, body=PUSH, delivery="d-1", signature=None, event="push"):
    return client.post("/hooks/github", content=body, headers={
        "X-GitHub-Event": event, "X-GitHub-Delivery": delivery, "Content-Type": "application/json",
        "X-Hub-Signature-256": signature or github_signature(SECRET, body)})


def test_a_signed_push_queues_exactly_one_run_and_a_replay_none(served):
    client, store = served
    first = github(client)
    assert first.status_code == 202 and first.json()["status"] == "queued"
    runs = store.runs()
    assert [(r.ref, r.commit, r.trigger, r.state) for r in runs] == [("refs/heads/main", "a" * 40, "github", "queued")]
    again = github(client)
    assert again.status_code == 409
    assert len(store.runs()) == 1


def test_a_wrong_signature_is_401_and_queues_nothing(served):
    client, store = served
    assert github(client, signature="sha256=" + "0" * 64).status_code == 401
    assert github(client, signature=github_signature("other", PUSH)).status_code == 401
    tampered = PUSH.replace(b"main", b"evil")
    assert github(client, body=tampered, signature=github_signature(SECRET, PUSH)).status_code == 401
    assert client.post("/hooks/github", content=PUSH, headers={"X-GitHub-Delivery": "d-9"}).status_code == 401
    assert store.runs() == []
    # the refused deliveries were not recorded: the genuine one still goes through
    assert github(client, delivery="d-9").status_code == 202


def test_other_events_and_deletions_are_ignored(served):
    client, store = served
    assert github(client, event="ping", delivery="p").json() == {"status": "ignored"}
    deleted = json.dumps({"ref": "refs/heads/x", "after": "0" * 40}).encode()
    assert github(client, body=deleted, delivery="del").json() == {"status": "ignored"}
    assert github(client, body=b"{}", delivery="bad").status_code == 400
    assert store.runs() == []


def test_gitlab_token(served):
    client, store = served
    body = json.dumps({"ref": "refs/tags/v1", "after": "b" * 40}).encode()

    def send(token, uuid="g-1"):
        return client.post("/hooks/gitlab", content=body, headers={
            "X-Gitlab-Event": "Tag Push Hook", "X-Gitlab-Event-UUID": uuid, "X-Gitlab-Token": token})

    assert send("wrong").status_code == 401
    assert send(SECRET).status_code == 401  # GitHub's secret is no GitLab token
    assert send(TOKEN).status_code == 202
    assert send(TOKEN).status_code == 409
    assert [(r.ref, r.trigger) for r in store.runs()] == [("refs/tags/v1", "gitlab")]
