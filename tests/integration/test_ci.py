"""The pipeline end to end, each test on its own private copy of examples/hello pushed to a bare
git repository with kiln's post-receive hook: a passing commit goes test → staging → smoke →
production (the same image digest in both); a failing one changes nothing; secrets are masked;
webhooks are verified and never replayed; a newer push supersedes a queued older run."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import docker
import pytest
from conftest import TEST_LABEL, App, free_port

from kiln.ledger.ci_store import CiStore
from kiln.ledger.store import Ledger
from kiln.server.webhooks import github_signature

pytestmark = pytest.mark.integration

TEST_FILE = Path(__file__).parent / "ci_app" / "app_check.py"  # not test_*.py: pytest must not collect it here
SECRET = "tok-5ecret-31337"
FINAL = ("succeeded", "failed", "cancelled", "superseded")
PIPELINE = """
pipeline:
  steps:
    - name: test
      run: python3 /app/test_app.py && echo "the token is $API_TOKEN"
      environment: {API_TOKEN: "secret:api-token"}
    - deploy: staging
    - smoke: staging
      checks: [{path: /health, body: ok}]
    - promote: {from: staging, to: production, approval: APPROVAL}
"""
TEST_ONLY = PIPELINE.split("    - deploy:")[0]  # the test step alone
# Appended to the test step's command: what its container may do (docs/security.md, item 12).
HARDENING_PROBE = " && grep CapEff /proc/self/status && if touch /x; then echo root-writable; else echo root-read-only; fi"


class Repo:
    """A work clone of the app and the bare repository it pushes to (with kiln's hook)."""

    def __init__(self, app: App, root: Path) -> None:
        self.app, self.work, self.bare = app, app.dir, root / "origin.git"
        self.env = {**os.environ, "KILN_HOME": str(app.home), "KILN_EXTRA_LABELS": TEST_LABEL,
                    "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
                    "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}
        self.env.pop("KILN_LEDGER_URL", None)
        self.store = CiStore(Ledger(f"sqlite:///{app.home / 'ledger.db'}"))

    def git(self, *args: str, cwd: Path | None = None) -> str:
        return subprocess.run(["git", *args], cwd=cwd or self.work, env=self.env, check=True,
                              capture_output=True, text=True).stdout

    def kiln(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "kiln", *args], env=self.env, input=stdin,
                              capture_output=True, text=True, timeout=120)
        assert not check or proc.returncode == 0, f"kiln {args}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc

    def set_pipeline(self, pipeline: str) -> None:
        text = self.app.spec.read_text()
        self.app.spec.write_text(text.split("\npipeline:")[0] + pipeline)

    def set_approval(self, approval: str) -> None:
        self.set_pipeline(PIPELINE.replace("APPROVAL", approval))

    def commit(self, message: str) -> str:
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.git("rev-parse", "HEAD").strip()

    def push(self, message: str) -> str:
        commit = self.commit(message)
        self.git("push", "-q", "origin", "HEAD:main")
        return commit

    def run_of(self, commit: str, timeout: float = 30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [r for r in self.store.runs(limit=100) if r.commit == commit]
            if found:
                return found[0]
            time.sleep(0.2)
        raise AssertionError(f"no run of {commit[:12]} was queued")

    def wait(self, run_id: int, states: tuple[str, ...] = FINAL, timeout: float = 240):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.store.run(run_id)
            if run.state in states:
                return run
            time.sleep(0.3)
        out = self.app.home / "ci" / f"run-{run_id}.out"
        raise AssertionError(f"run {run_id} is {run.state} after {timeout}s\n{out.read_text() if out.exists() else ''}")

    def serving(self, env: str):
        return self.store.ledger.releases.current(self.app.name, env)


@pytest.fixture
def repo(app: App, tmp_path_factory: pytest.TempPathFactory) -> Repo:
    """A fresh app in a work clone of a bare repository with kiln's hook; nothing pushed yet."""
    made = Repo(app, tmp_path_factory.mktemp("git"))
    shutil.copy(TEST_FILE, app.dir / "test_app.py")
    app.edit_spec(lambda data: data["build"]["steps"].append("COPY test_app.py /app/test_app.py"))
    made.set_approval("auto")
    made.git("init", "-q", "--bare", "-b", "main", str(made.bare), cwd=made.bare.parent)  # HEAD: the protected branch
    made.git("init", "-q", "-b", "main")
    made.git("remote", "add", "origin", str(made.bare))
    made.kiln("ci", "hook", "install", "--repo", str(made.bare))
    made.kiln("secret", "set", "api-token", stdin=SECRET + "\n")
    yield made
    for run in made.store.runs(limit=100):  # no runner may outlive the test
        if run.state not in FINAL:
            made.kiln("ci", "cancel", str(run.id), check=False)
            made.wait(run.id)
    made.store.ledger.db.engine.dispose()


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def images_running(app: App, env: str) -> set[str]:
    client = docker.from_env()
    found = client.containers.list(filters={"label": [f"kiln.app={app.name}", f"kiln.env={env}", "kiln.role=instance"]})
    return {c.image.id for c in found}


def test_a_pushed_commit_is_tested_deployed_smoked_and_promoted(repo: Repo) -> None:
    started = time.monotonic()
    commit = repo.push("first")
    run = repo.wait(repo.run_of(commit).id)
    took = time.monotonic() - started
    steps = repo.store.steps(run.id)
    print(f"\nrun {run.id}: {run.state} in {took:.1f}s: " + ", ".join(f"{s.name} {s.state} {s.seconds:.1f}s" for s in steps))
    assert run.state == "succeeded", (run.reason, [(s.name, s.state, s.detail) for s in steps])
    assert (run.trigger, run.ref) == ("hook", "refs/heads/main")
    assert [(s.kind, s.state) for s in steps] == [("bake", "succeeded"), ("run", "succeeded"), ("deploy", "succeeded"),
                                                  ("smoke", "succeeded"), ("promote", "succeeded")]
    staging, production = repo.serving("staging"), repo.serving("production")
    assert staging.image == production.image == run.image
    assert staging.commit == production.commit == commit
    assert images_running(repo.app, "staging") == images_running(repo.app, "production") == {run.image}
    assert get(repo.app.url("staging"))[0] == get(repo.app.url("production"))[0] == 200


def test_secrets_are_masked_in_the_log_and_absent_from_the_ledger(repo: Repo) -> None:
    repo.set_pipeline(TEST_ONLY.replace('$API_TOKEN"', '$API_TOKEN"' + HARDENING_PROBE))
    run = repo.wait(repo.run_of(repo.push("test only")).id)
    assert run.state == "succeeded", run.reason
    assert [s.kind for s in repo.store.steps(run.id)] == ["bake", "run"]
    logs = repo.kiln("ci", "logs", str(run.id)).stdout
    # The step's container, on dockerd: no capability at all, and a root it cannot write.
    assert re.search(r"CapEff:\s+0{16}\b", logs) and "root-read-only" in logs and "root-writable" not in logs, logs
    assert "the token is ********" in logs
    assert SECRET not in logs
    assert all(SECRET not in line for _, _, line in repo.store.logs(run.id))
    # Closing a file of the database drops this process's SQLite locks on it (POSIX locks are
    # per process), so the pooled connections go first.
    repo.store.ledger.db.engine.dispose()
    for path in repo.app.home.glob("ledger.db*"):  # the database and its WAL
        assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET.encode() not in (repo.app.home / "secrets" / "api-token").read_bytes()


def test_a_failing_test_step_stops_the_run_and_nothing_changes(repo: Repo) -> None:
    repo.commit("deployed by hand")  # not pushed: no run
    for env in ("staging", "production"):
        repo.app.kiln("deploy", "-e", env)
    before = {env: repo.serving(env) for env in ("staging", "production")}
    assert all(before.values()), before
    path = repo.work / "app.py"
    good = path.read_text()
    path.write_text(good.replace('self._send(503 if self.server.stopping else 200, "ok\\n")',
                                 'self._send(500, "broken\\n")'))
    assert path.read_text() != good
    commit = repo.push("break /health")
    run = repo.wait(repo.run_of(commit).id)
    steps = repo.store.steps(run.id)
    assert run.state == "failed" and "step 1 (test) failed" in run.reason, run.reason
    assert [s.state for s in steps] == ["succeeded", "failed", "skipped", "skipped", "skipped"]
    assert "FAIL GET /health: 500" in repo.kiln("ci", "logs", str(run.id)).stdout
    for env, release in before.items():
        assert repo.serving(env) == release
        assert images_running(repo.app, env) == {release.image}
    assert get(repo.app.url("production"))[0] == 200
    shown = json.loads(repo.kiln("ci", "show", str(run.id), "--json").stdout)
    assert shown["state"] == "failed" and shown["steps"][1]["state"] == "failed"


def test_webhooks_start_one_run_per_delivery_and_refuse_bad_signatures(repo: Repo) -> None:
    repo.kiln("secret", "set", "webhook", stdin="hook-secret")
    # A passing commit in the bare repository, put there by a fetch: no hook, so no run of its own.
    # It is main's too, so main's kiln.yaml (the policy) gives the branch what its pipeline asks.
    commit = repo.commit("for the webhook")
    repo.git("fetch", "-q", str(repo.work), "HEAD:refs/heads/webhook", "HEAD:refs/heads/main", cwd=repo.bare)
    assert repo.store.runs(limit=100) == []
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "kiln", "serve", "--repo", str(repo.bare), "--port", str(port)],
                              env=repo.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 20
        while not _up(port):
            assert time.monotonic() < deadline and server.poll() is None, "kiln serve did not come up"
            time.sleep(0.2)
        body = json.dumps({"ref": "refs/heads/webhook", "after": commit}).encode()

        def send(signature: str, delivery: str = "delivery-1") -> int:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/hooks/github", data=body, method="POST", headers={
                "X-GitHub-Event": "push", "X-GitHub-Delivery": delivery, "X-Hub-Signature-256": signature,
                "Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    return resp.status
            except urllib.error.HTTPError as exc:
                return exc.code

        assert send(github_signature("wrong-secret", body), "delivery-0") == 401
        assert send(github_signature("hook-secret", body)) == 202
        assert send(github_signature("hook-secret", body)) == 409
        runs = repo.store.runs(limit=100)
        assert len(runs) == 1 and runs[0].trigger == "github" and (runs[0].ref, runs[0].commit) == ("refs/heads/webhook", commit)
        assert repo.wait(runs[0].id).state == "succeeded"
    finally:
        server.terminate()
        server.wait(timeout=10)


WIDENING = """
pipeline:
  steps:
    - name: leak
      run: echo "$HOOK" | base64; echo "$HOOK"
      environment: {HOOK: "secret:webhook"}
    - deploy: production
    - promote: {from: staging, to: production, approval: auto}
"""


def test_a_branch_that_widens_its_own_rights_is_refused_and_nothing_changes(repo: Repo) -> None:
    """Issue 15 item 1: main promotes to production (a branch may only test and deploy staging);
    a branch whose kiln.yaml deploys and promotes to production with `approval: auto` and prints
    the webhook secret in base64 gets a run refused before its bake: both environments keep their
    release and containers, no step container ever existed, the secret is nowhere."""
    hook_secret = "whk-0c9e5d3b7a21f4e8"
    repo.kiln("secret", "set", "webhook", stdin=hook_secret)
    repo.set_pipeline(PIPELINE.replace("APPROVAL", "auto") + "      branches: [main]\n")
    main = repo.wait(repo.run_of(repo.push("main promotes")).id)
    assert main.state == "succeeded", main.reason
    before = {env: repo.serving(env) for env in ("staging", "production")}
    running = {env: images_running(repo.app, env) for env in ("staging", "production")}
    repo.git("checkout", "-q", "-b", "feature/x")
    repo.set_pipeline(WIDENING)
    commit = repo.commit("widen my rights")
    repo.git("push", "-q", "origin", "HEAD:feature/x")
    run = repo.wait(repo.run_of(commit).id, timeout=60)
    assert (run.state, run.ref) == ("failed", "refs/heads/feature/x")
    source = f"the policy from main (kiln.yaml at {main.commit[:12]})"
    for widened in ("may not read secret webhook (pipeline.steps[0].environment.HOOK): it is one of kiln's own",
                    f"may not deploy to production (pipeline.steps[1].deploy): {source} allows deploys to staging only",
                    "may not promote to production with `approval: auto`"):
        assert f"branch feature/x {widened}" in run.reason, run.reason
    assert [s.state for s in repo.store.steps(run.id)] == ["failed", "skipped", "skipped", "skipped"]
    assert not run.image
    client = docker.from_env()
    assert client.containers.list(all=True, filters={"label": f"kiln.ci.run={run.id}"}) == []
    for env, release in before.items():
        assert repo.serving(env) == release
        assert images_running(repo.app, env) == running[env]
    assert get(repo.app.url("production"))[0] == 200
    logs = repo.kiln("ci", "logs", str(run.id)).stdout
    assert "refused: branch feature/x may not deploy to production" in logs
    encoded = base64.b64encode(hook_secret.encode())
    repo.store.ledger.db.engine.dispose()
    files = [*repo.app.home.glob("ledger.db*"), repo.app.home / "ci" / f"run-{run.id}.out"]
    for data in [logs.encode(), *(p.read_bytes() for p in files if p.exists())]:
        assert hook_secret.encode() not in data and encoded[:-4] not in data


def _up(port: int) -> bool:
    try:
        return get(f"http://127.0.0.1:{port}/health")[0] == 200
    except OSError:
        return False


def test_a_newer_push_supersedes_the_queued_older_run(repo: Repo) -> None:
    repo.set_approval("manual")
    holding = repo.run_of(repo.push("manual promotion"))
    holding = repo.wait(holding.id, states=("waiting",) + FINAL)
    assert holding.state == "waiting", holding.reason
    older = repo.run_of(repo.push("second change"))
    newer = repo.run_of(repo.push("third change"))
    assert repo.wait(older.id, timeout=10).state == "superseded"
    assert repo.store.run(older.id).reason == f"superseded by run {newer.id}"
    assert repo.store.steps(older.id) == []  # never started
    assert repo.store.run(newer.id).state == "queued"  # the branch is busy with the held run
    repo.kiln("ci", "approve", str(holding.id))
    assert repo.wait(holding.id).state == "succeeded"
    newer = repo.wait(newer.id, states=("waiting",) + FINAL)
    assert newer.state == "waiting"
    repo.kiln("ci", "cancel", str(newer.id))
    assert repo.wait(newer.id).state == "cancelled"
    assert [s.state for s in repo.store.steps(newer.id)][-1] == "cancelled"
