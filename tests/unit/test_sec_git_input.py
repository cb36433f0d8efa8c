"""Issue 15, item 2: a webhook's `after` and `ref` reach git. Only full commit ids and ref names
valid by git's own rules pass, and no revision is ever read by git as an option."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from kiln import git, process
from kiln.context import Context
from kiln.errors import BuildError, UsageError
from kiln.ledger.ci_store import CiStore
from kiln.output import Output
from kiln.server.app import Config, make_app
from kiln.server.webhooks import github_signature
from kiln.settings import Settings

SECRET = "webhook-secret"


def sh(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "app"
    path.mkdir()
    sh(path, "init", "-q", "-b", "main")
    (path / "app.txt").write_text("one\n")
    sh(path, "add", "-A")
    sh(path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    return path


@pytest.fixture
def processes(monkeypatch):
    """Every argv kiln hands to the process runner (still run) and every detached start (not run)."""
    ran: list[tuple[str, ...]] = []
    spawned: list[tuple[str, ...]] = []
    real_run = process.run

    def run(argv, cwd=None, timeout=None):
        ran.append(tuple(argv))
        return real_run(argv, cwd=cwd, timeout=timeout)

    def spawn_detached(argv, log_file):
        spawned.append(tuple(argv))
        return 0

    monkeypatch.setattr(process, "run", run)
    monkeypatch.setattr(process, "spawn_detached", spawn_detached)
    return ran, spawned


def test_commit_ids_are_full_lowercase_hex_only():
    assert git.is_commit("a" * 40) and git.is_commit("0123456789abcdef" * 4)
    for bad in ["a" * 39, "a" * 41, "a" * 63, "A" * 40, "g" * 40, "", "HEAD", "main", "a" * 40 + "\n",
                " " + "a" * 39, "--upload-pack=touch /tmp/pwned", "a" * 12]:
        assert not git.is_commit(bad), bad


REFS = [
    "refs/heads/main", "refs/tags/v1.2.3", "refs/heads/feature/x-y_z", "refs/heads/-dash", "refs/heads/@",
    "refs/heads/a@b", "refs/heads/ünï", "refs/heads/a.b", "refs/heads/x.lockx", "refs/heads/a+b=c,d;e'f\"g",
    "refs/heads/..", "refs/heads/a..b", "refs/heads/.hidden", "refs/heads/a/.b", "refs/heads/x.lock",
    "refs/heads/x.lock/y", "refs/heads/x/", "refs/heads//x", "refs/heads/x.", "refs/heads/a@{1}",
    "refs/heads/a b", "refs/heads/a\tb", "refs/heads/a\nb", "refs/heads/a\x7fb", "refs/heads/a~1", "refs/heads/a^",
    "refs/heads/a:b", "refs/heads/a?", "refs/heads/a*", "refs/heads/a[b", "refs/heads/a\\b", "refs/heads/a]b",
    "refs/heads/{x}", "refs/heads/a@", "refs/heads/@{", "refs/heads/.", "refs/heads/x/..y", "refs/heads/x/y.",
]
ALPHABET = "ab.-/@{}~^:?*[]\\ \t\n\x01\x7f" + "lock"


def _mutations(count: int) -> list[str]:
    rnd = random.Random(15)
    return ["refs/heads/" + "".join(rnd.choice(ALPHABET) for _ in range(rnd.randint(1, 8))) for _ in range(count)]


def test_is_ref_agrees_with_git_check_ref_format():
    names = REFS + _mutations(200)
    disagree = []
    for name in names:
        if "\x00" in name:
            continue
        by_git = subprocess.run(["git", "check-ref-format", name], capture_output=True).returncode == 0
        if git.is_ref(name) != by_git:
            disagree.append((name, by_git))
    assert disagree == []
    assert sum(git.is_ref(n) for n in names) >= 20 and sum(not git.is_ref(n) for n in names) >= 100


def test_kiln_also_wants_a_full_ref_of_bounded_length():
    for bad in ["main", "heads/main", "-x", "--upload-pack=touch /tmp/pwned", "@", "",
                "refs/heads/" + "a" * git.REF_MAX]:
        assert not git.is_ref(bad), bad


def _push(client, payload: dict, delivery: str):
    body = json.dumps(payload).encode()
    return client.post("/hooks/github", content=body, headers={
        "X-GitHub-Event": "push", "X-GitHub-Delivery": delivery, "Content-Type": "application/json",
        "X-Hub-Signature-256": github_signature(SECRET, body)})


def test_a_signed_webhook_with_an_option_for_a_commit_is_400_and_starts_nothing(tmp_path, processes):
    ran, spawned = processes
    pwned = tmp_path / "pwned"
    ctx = Context(Settings(home=tmp_path / "home", ledger_url=f"sqlite:///{tmp_path / 'ledger.db'}"), Output(quiet=True))
    client = TestClient(make_app(ctx, Config(repo=str(tmp_path), spec="kiln.yaml", github=SECRET), start_runner=True))
    store = CiStore(ctx.ledger)
    attacks = [
        {"ref": "refs/heads/main", "after": f"--upload-pack=touch {pwned}"},
        {"ref": f"--upload-pack=touch {pwned}", "after": "a" * 40},
        {"ref": "refs/heads/main\nrefs/heads/x", "after": "a" * 40},
        {"ref": "refs/heads/../../x", "after": "a" * 40},
        {"ref": "refs/heads/main", "after": "a" * 40 + " --upload-pack=x"},
        {"ref": "refs/heads/main", "after": ["a" * 40]},
    ]
    for i, payload in enumerate(attacks):
        answer = _push(client, payload, f"evil-{i}")
        assert answer.status_code == 400, payload
        assert "not a" in answer.json()["error"]
    assert store.runs() == []
    assert ran == [] and spawned == []
    assert not pwned.exists()
    # a refused request recorded no delivery: the genuine push under the same id still goes through
    assert _push(client, {"ref": "refs/heads/main", "after": "b" * 40}, "evil-0").status_code == 202
    assert [(r.ref, r.commit) for r in store.runs()] == [("refs/heads/main", "b" * 40)]
    assert len(spawned) == 1


def test_clone_refuses_anything_but_a_commit_id_before_git_runs(repo, tmp_path, processes):
    ran, _ = processes
    pwned = tmp_path / "pwned"
    for bad in [f"--upload-pack=touch {pwned}", "main", "HEAD~1", "a" * 12]:
        with pytest.raises(BuildError, match="not a full commit id"):
            git.clone(str(repo), bad, tmp_path / "work" / "run")
    assert ran == []
    assert not pwned.exists() and not (tmp_path / "work").exists()


def test_every_revision_git_is_given_follows_end_of_options(repo, tmp_path, processes):
    ran, _ = processes
    unknown = "c" * 40  # valid, but no ref reaches it: the fetch path runs too
    with pytest.raises(BuildError, match="cannot check out cccccccccccc"):
        git.clone(str(repo), unknown, tmp_path / "work" / "run")
    head = sh(repo, "rev-parse", "HEAD")
    git.remove(git.clone(str(repo), head, tmp_path / "work" / "ok"))
    with_revision = [argv for argv in ran if unknown in argv or head in argv]
    assert [argv[argv.index("--end-of-options") + 1:] for argv in with_revision] == [
        (unknown,), ("origin", unknown), (head,)]
    assert all(argv.index("--end-of-options") < argv.index(str(repo)) for argv in ran if argv[1] == "clone")


def test_resolve_ref_refuses_an_option_before_git_runs(repo, tmp_path, processes):
    ran, _ = processes
    out = tmp_path / "out"
    for bad in [f"--output={out}", "-h", ""]:
        with pytest.raises(UsageError, match="is not a branch, tag or commit name"):
            git.resolve_ref(repo, bad)
    assert ran == [] and not out.exists()
    assert git.resolve_ref(repo, "main") == ("refs/heads/main", sh(repo, "rev-parse", "HEAD"))


# --- item 6: a replayed push (same body under a new delivery id) starts nothing ---------------


def _commit(repo: Path, text: str) -> str:
    (repo / "app.txt").write_text(text)
    sh(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-am", text)
    return sh(repo, "rev-parse", "HEAD")


def test_a_replayed_or_older_push_is_409_and_queues_nothing(repo, tmp_path, processes):
    _, spawned = processes
    first = sh(repo, "rev-parse", "HEAD")
    second = _commit(repo, "two\n")
    ctx = Context(Settings(home=tmp_path / "home", ledger_url=f"sqlite:///{tmp_path / 'ledger.db'}"), Output(quiet=True))
    client = TestClient(make_app(ctx, Config(repo=str(repo), spec="kiln.yaml", github=SECRET), start_runner=True))
    store = CiStore(ctx.ledger)
    main = "refs/heads/main"
    assert _push(client, {"ref": main, "after": second}, "d-1").status_code == 202
    replay = _push(client, {"ref": main, "after": second}, "d-2")  # captured, resent under a new id
    assert replay.status_code == 409
    assert replay.json() == {"error": f"{main} already ran {second[:12]} (run 1); a replayed push starts nothing"}
    older = _push(client, {"ref": main, "after": first}, "d-3")
    assert older.status_code == 409
    assert older.json()["error"].startswith(f"{first[:12]} is older than {second[:12]}, which {main} already ran (run 1)")
    third = _commit(repo, "three\n")
    assert _push(client, {"ref": main, "after": third}, "d-4").status_code == 202
    assert _push(client, {"ref": "refs/heads/other", "after": first}, "d-5").status_code == 202  # another ref
    assert [(r.ref, r.commit) for r in reversed(store.runs())] == [
        (main, second), (main, third), ("refs/heads/other", first)]
    assert len(spawned) == 3
