"""Issue 15, item 7: `kiln serve` caps the body before authenticating (413 from Content-Length
without reading, or as soon as the streamed bytes pass the cap) and the JSON nesting (400)."""

from __future__ import annotations

import asyncio
import json

import pytest
from fastapi.testclient import TestClient

from kiln.context import Context
from kiln.errors import UsageError
from kiln.ledger.ci_store import CiStore
from kiln.output import Output
from kiln.server.app import MAX_BODY, Config, make_app
from kiln.server.webhooks import MAX_DEPTH, github_signature, json_depth
from kiln.settings import Settings

SECRET = "webhook-secret"
MIB = 1024 * 1024


@pytest.fixture
def app_and_store(tmp_path):
    ctx = Context(Settings(home=tmp_path, ledger_url=f"sqlite:///{tmp_path / 'ledger.db'}"), Output(quiet=True))
    return make_app(ctx, Config(repo="/srv/r.git", spec="kiln.yaml", github=SECRET), start_runner=False), CiStore(ctx.ledger)


def _call(app, headers: list[tuple[bytes, bytes]], chunks, limit_chunks: int = 1000):
    """Drive the ASGI app with a body of `chunks` (an iterator); returns (status, chunks read)."""
    read = 0
    sent: list[dict] = []

    async def receive():
        nonlocal read
        chunk = next(chunks, None)
        if chunk is None or read >= limit_chunks:
            return {"type": "http.request", "body": b"", "more_body": False}
        read += 1
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/hooks/github", "raw_path": b"/hooks/github", "query_string": b"",
             "root_path": "", "headers": headers, "client": ("203.0.113.9", 4000), "server": ("kiln", 8600)}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], read


def _endless(size: int = MIB):
    while True:
        yield b" " * size


def test_a_declared_huge_body_is_413_and_nothing_is_read(app_and_store):
    app, store = app_and_store
    status, read = _call(app, [(b"content-length", str(100 * 1024 * MIB).encode()),
                               (b"x-github-event", b"push"), (b"x-github-delivery", b"big")], _endless())
    assert (status, read) == (413, 0)
    assert store.runs() == []


def test_a_streamed_endless_body_is_413_as_soon_as_it_passes_the_cap(app_and_store):
    app, store = app_and_store
    status, read = _call(app, [(b"x-github-event", b"push"), (b"x-github-delivery", b"chunked"),
                               (b"transfer-encoding", b"chunked")], _endless())
    assert MAX_BODY == 5 * MIB
    assert (status, read) == (413, 6)  # 6 MiB read: the first chunk past 5 MiB stops it
    assert store.runs() == []


def test_a_lying_content_length_does_not_lift_the_cap(app_and_store):
    app, _ = app_and_store
    status, read = _call(app, [(b"content-length", b"10"), (b"x-github-delivery", b"liar")], _endless())
    assert (status, read) == (413, 6)
    status, _ = _call(app, [(b"content-length", b"-1"), (b"x-github-delivery", b"neg")], _endless())
    assert status == 413


def _signed(client, body: bytes, delivery: str):
    return client.post("/hooks/github", content=body, headers={
        "X-GitHub-Event": "push", "X-GitHub-Delivery": delivery, "Content-Type": "application/json",
        "X-Hub-Signature-256": github_signature(SECRET, body)})


def test_a_body_at_the_cap_is_still_served_and_one_byte_more_is_413(app_and_store):
    app, store = app_and_store
    client = TestClient(app)
    push = json.dumps({"ref": "refs/heads/main", "after": "a" * 40, "pad": ""}).encode()
    at_cap = push[:-2] + b" " * (MAX_BODY - len(push)) + push[-2:]
    assert len(at_cap) == MAX_BODY
    assert _signed(client, at_cap + b" ", "over").status_code == 413
    assert _signed(client, at_cap, "at").status_code == 202
    assert [r.commit for r in store.runs()] == ["a" * 40]


def test_a_deeply_nested_signed_push_is_400_and_queues_nothing(app_and_store):
    app, store = app_and_store
    client = TestClient(app)
    for depth in (MAX_DEPTH + 1, 100_000):
        body = ('{"ref": "refs/heads/main", "after": "' + "a" * 40 + '", "x": ' + "[" * depth + "]" * depth + "}").encode()
        answer = _signed(client, body, f"deep-{depth}")
        assert answer.status_code == 400
        assert answer.json() == {"error": f"the push event nests JSON deeper than {MAX_DEPTH} levels"}
    unbalanced = b'{"ref": "refs/heads/main", "after": "' + b"a" * 40 + b'", "x": ' + b"[" * 100_000
    assert _signed(client, unbalanced, "open").status_code == 400
    assert store.runs() == []
    ok = ('{"ref": "refs/heads/main", "after": "' + "b" * 40 + '", "x": ' + "[" * (MAX_DEPTH - 1)
          + "]" * (MAX_DEPTH - 1) + "}").encode()
    assert _signed(client, ok, "ok").status_code == 202


def test_json_depth_ignores_brackets_in_strings_and_is_linear_on_hostile_strings():
    assert json_depth(b'{"a": [1, {"b": "[[[\\"[[{"}]}') == 3
    assert json_depth(b'"unterminated [[[') == 0
    assert json_depth(b'["a\\\\", [1]]') == 2
    assert json_depth(b"[" * 40) == 40
    assert json_depth(b'"\\' * (MAX_BODY // 2)) == 0  # a quadratic scan would take minutes here


# --- item 8: one secret per provider, only configured providers served ------------------------


def test_only_configured_providers_are_served_and_none_shares_a_secret(tmp_path):
    ctx = Context(Settings(home=tmp_path, ledger_url=f"sqlite:///{tmp_path / 'ledger.db'}"), Output(quiet=True))
    store = CiStore(ctx.ledger)
    github_only = TestClient(make_app(ctx, Config(repo="/r", spec="kiln.yaml", github=SECRET), start_runner=False))
    body = json.dumps({"ref": "refs/heads/main", "after": "a" * 40}).encode()
    answer = github_only.post("/hooks/gitlab", content=body, headers={
        "X-Gitlab-Event": "Push Hook", "X-Gitlab-Event-UUID": "g-1", "X-Gitlab-Token": SECRET})
    assert answer.status_code == 404  # GitLab's endpoint does not exist: the GitHub secret is no token
    gitlab_only = TestClient(make_app(ctx, Config(repo="/r", spec="kiln.yaml", gitlab="tok"), start_runner=False))
    assert _signed(gitlab_only, body, "h-1").status_code == 404
    assert store.runs() == []
    with pytest.raises(UsageError, match="GitHub's secret and GitLab's token are the same value"):
        Config(repo="/r", spec="kiln.yaml", github="same", gitlab="same")
    with pytest.raises(UsageError, match="no webhook provider is configured"):
        Config(repo="/r", spec="kiln.yaml")
