"""Issue 15, item 1: what a ref's pipeline may do comes from a trusted source, never from the
pushed commit. Through the real runner (kiln.ci.runner.execute_run), a real git repository (a
bare one runs check out from, as a post-receive hook's) and the fake engine: a branch whose
kiln.yaml deploys to production, promotes to it with `approval: auto` and prints a secret in
base64 is refused before anything runs; both environments stay as they were, and the secret is
in no ledger row and no log. The protected branch itself, and a branch staying within its rights,
still run; a webhook cannot make a branch's commit pass for the protected branch's."""

from __future__ import annotations

import base64
import json
import sqlite3
import subprocess
from pathlib import Path

import pytest

from kiln import git as kiln_git
from kiln.ci import policy as ci_policy
from kiln.ci.runner import execute_run
from kiln.ci.trigger import enqueue
from kiln.ledger.ci_store import CiRun, CiStore
from kiln.providers.base import ContainerSpec
from kiln.secretstore import SecretStore
from kiln.usecases.deploy import deploy
from unit.cli_inproc import run_kiln
from unit.world import World

WEBHOOK = "whk-7d1e9c0b55aa43f2"  # kiln serve's GitHub secret: no pipeline may ever read it
TOKEN = "tok-91c3e07a4d2b"  # a stored secret main's pipeline uses, no other branch

MAIN = """
pipeline:
  steps:
    - name: test
      run: python3 /app/app.py --test
    - name: publish
      run: python3 /app/app.py --publish
      environment: {API_TOKEN: "secret:api-token"}
      branches: [main]
    - deploy: staging
    - promote: {from: staging, to: production, approval: manual}
      branches: [main]
"""

ATTACK = """
pipeline:
  steps:
    - name: leak
      run: echo ${HOOK} | base64; echo ${TOKEN} | base64
      environment: {HOOK: "secret:webhook", TOKEN: "secret:api-token"}
    - deploy: production
    - promote: {from: staging, to: production, approval: auto}
"""


class Repo:
    """The app's work tree (World.root) and the bare repository pushes go to (HEAD: main)."""

    def __init__(self, w: World, tmp_path: Path) -> None:
        self.w, self.bare = w, tmp_path / "app.git"
        self.git("init", "-q", "-b", "main")
        self.git("init", "-q", "--bare", "-b", "main", str(self.bare))
        self.git("remote", "add", "origin", str(self.bare))
        self.store = CiStore(w.ctx.ledger)

    def git(self, *args: str) -> str:
        return subprocess.run(("git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args), cwd=self.w.root,
                              check=True, capture_output=True, text=True).stdout.strip()

    def push(self, branch: str, pipeline: str | None = None, spec: tuple[str, str] | None = None) -> str:
        """Commit kiln.yaml (with `pipeline` as its pipeline section) on `branch` and push it."""
        self.git("checkout", "-q", "-B", branch)
        path = self.w.root / "kiln.yaml"
        if pipeline is not None:
            path.write_text(path.read_text().split("\npipeline:")[0].rstrip("\n") + "\n" + pipeline.lstrip("\n"))
        if spec is not None:
            self.w.edit_spec(*spec)
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", branch)
        self.git("push", "-q", "-f", "origin", f"{branch}:{branch}")
        return self.git("rev-parse", "HEAD")

    def run(self, ref: str, commit: str) -> CiRun:
        """A run of `ref` at `commit` as the post-receive hook queues it, done by the real runner."""
        run = enqueue(self.w.ctx, self.store, repo=str(self.bare), spec="kiln.yaml", ref=ref, commit=commit,
                      trigger="hook")
        assert self.store.claim(run.id, "test:1", 4)
        return execute_run(self.w.ctx, self.store, run.id)

    def steps(self, run: CiRun) -> list[tuple[str, str]]:
        return [(s.name, s.state) for s in self.store.steps(run.id)]

    def log(self, run: CiRun) -> list[str]:
        return [line for _, _, line in self.store.logs(run.id)]


def leaky(w: World) -> list[ContainerSpec]:
    """Make the fake engine run `echo ${NAME} | base64` as a shell would: each such step prints
    its variable's value in base64, so a secret it got would reach the log (masking evaded).
    Returns the specs of the step containers it ran."""
    ran: list[ContainerSpec] = []
    real = w.engine.run_streamed

    def run_streamed(spec, on_line, timeout, cancelled):
        ran.append(spec)
        script = (spec.command or ("",))[-1]
        for name, value in spec.environment.items():
            if f"echo ${{{name}}} | base64" in script:
                on_line(base64.b64encode(value.encode()).decode())
        return real(spec, on_line, timeout, cancelled)

    w.engine.run_streamed = run_streamed  # type: ignore[method-assign]
    return ran


@pytest.fixture
def repo(w: World, tmp_path: Path) -> Repo:
    store = SecretStore(w.ctx.settings, environ={})
    store.set("webhook", WEBHOOK)
    store.set("api-token", TOKEN)
    made = Repo(w, tmp_path)
    made.main = made.push("main", MAIN)  # type: ignore[attr-defined]
    return made


def _forms(value: str) -> list[bytes]:
    """A secret as it could be stored: itself, base64 (whole, and shifted by one and two bytes so
    that no alignment hides it), hex."""
    forms = [value.encode(), value.encode().hex().encode()]
    for shift in range(3):
        encoded = base64.b64encode(b"x" * shift + value.encode())[4 if shift else 0:-4]
        forms.append(encoded)
    return forms


def assert_stored_nowhere(w: World, *values: str) -> None:
    """No table row holds any value in any form, nor the database's bytes, nor anything kiln said."""
    w.ctx.ledger.db.engine.dispose()
    db = Path(str(w.ctx.settings.ledger_url).removeprefix("sqlite:///"))
    with sqlite3.connect(db) as conn:
        tables = [name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        rows = [repr(row).encode() for table in tables for row in conn.execute(f'SELECT * FROM "{table}"')]
    raw = b"".join(p.read_bytes() for p in (db, db.with_name(db.name + "-wal")) if p.exists())
    said = "\n".join(m for _, m in w.out.said).encode()
    assert "ci_log_lines" in tables or any("log" in t for t in tables), tables
    for value in values:
        for form in _forms(value):
            assert not any(form in row for row in rows), (value, form)
            assert form not in raw and form not in said, (value, form)


def _serving(w: World) -> dict[str, tuple[int, str] | None]:
    out = {}
    for env in ("staging", "production"):
        release = w.ctx.ledger.releases.current("shop", env)
        out[env] = None if release is None else (release.number, release.image)
    return out


def test_a_branch_widening_its_own_rights_is_refused_before_anything_runs(repo: Repo, w: World):
    deploy(w.ctx, w.load(), "staging")
    deploy(w.ctx, w.load(), "production")
    before = (_serving(w), len(w.rollouts("staging")), len(w.rollouts("production")), dict(w.engine.image_store))
    containers = {c.name for c in w.engine.containers({})}
    ran = leaky(w)

    commit = repo.push("feature/x", ATTACK)
    run = repo.run("refs/heads/feature/x", commit)

    source = f"the policy from main (kiln.yaml at {repo.main[:12]})"  # type: ignore[attr-defined]
    assert run.state == "failed"
    assert run.reason == "refused: " + "; ".join([
        "branch feature/x may not read secret webhook (pipeline.steps[0].environment.HOOK): it is one of kiln's own "
        "(a webhook secret), never given to a pipeline",
        "branch feature/x may not read secret api-token (pipeline.steps[0].environment.TOKEN): "
        f"{source} allows no secret",
        f"branch feature/x may not deploy to production (pipeline.steps[1].deploy): {source} allows deploys to "
        "staging only",
        f"branch feature/x may not promote to production (pipeline.steps[2].promote.to): {source} allows "
        "promotions to staging only",
        "branch feature/x may not promote to production with `approval: auto` (pipeline.steps[2].promote.approval): "
        f"{source} requires `kiln ci approve` for it",
    ])
    assert repo.steps(run) == [("checkout and bake", "failed"), ("leak", "skipped"), ("deploy production", "skipped"),
                               ("promote staging → production", "skipped")]
    assert not run.image  # nothing baked
    # nothing ran: no step container, no bake, no deploy, no rollout; both environments as they were
    assert ran == [] and {c.name for c in w.engine.containers({})} == containers
    assert (_serving(w), len(w.rollouts("staging")), len(w.rollouts("production")), dict(w.engine.image_store)) == before
    log = repo.log(run)
    assert "› branch feature/x may do what " + source + " grants it" in log
    assert "› the protected branch is main (the HEAD of " + str(repo.bare) + ")" in log
    assert sum(line.startswith("refused: ") for line in log) == 5
    assert_stored_nowhere(w, WEBHOOK, TOKEN)


WIDENINGS = [
    ("pipeline: {steps: [{deploy: production}]}", "may not deploy to production"),
    ("pipeline: {steps: [{run: 'echo ${T} | base64', environment: {T: 'secret:api-token'}}]}", "may not read secret api-token"),
    ("pipeline: {steps: [{run: 'echo ${T} | base64', environment: {T: 'secret:webhook'}}]}", "may not read secret webhook"),
    ("pipeline: {steps: [{run: x, services: {db: {environment: {T: 'secret:api-token'}}}}]}", "may not read secret api-token"),
    # main lets every branch promote to production, but only with approval
    ("pipeline: {steps: [{promote: {from: staging, to: production, approval: auto}}]}",
     "may not promote to production with `approval: auto`"),
]


def test_each_widening_alone_is_refused(repo: Repo, w: World):
    ran = leaky(w)
    for n, (pipeline, widened) in enumerate(WIDENINGS):
        if "approval: auto" in pipeline:
            repo.push("main", MAIN.rsplit("      branches: [main]\n", 1)[0])
        run = repo.run(f"refs/heads/feature/{n}", repo.push(f"feature/{n}", pipeline))
        assert run.state == "failed" and widened in run.reason and run.reason.count("may not") == 1, run.reason
    assert ran == [] and _serving(w) == {"staging": None, "production": None}
    assert_stored_nowhere(w, WEBHOOK, TOKEN)


def test_the_leak_is_real_when_trust_is_not_checked(repo: Repo, w: World, monkeypatch):
    """The control: with every run trusted as is and nothing kept for kiln, the attack's step runs
    and the secret reaches the log in base64 — which is what the tests above would see."""
    monkeypatch.setattr("kiln.ci.runner.trust_for", lambda *a: ci_policy.Trust("x", "x", "x", None, frozenset()))
    ran = leaky(w)
    run = repo.run("refs/heads/feature/x", repo.push("feature/x", "pipeline: {steps: [{name: leak, run: 'echo ${T} "
                                                                  "| base64', environment: {T: 'secret:webhook'}}]}"))
    assert run.state == "succeeded" and len(ran) == 1
    assert base64.b64encode(WEBHOOK.encode()).decode() in repo.log(run)
    with pytest.raises(AssertionError):
        assert_stored_nowhere(w, WEBHOOK)


def test_the_protected_branch_runs_as_it_says_and_a_branch_within_its_rights_runs(repo: Repo, w: World):
    # main itself may widen: its own kiln.yaml is the policy (and it reads its token)
    ran = leaky(w)
    main = repo.push("main", MAIN.replace("approval: manual", "approval: auto").replace(
        "    - deploy: staging\n", "    - deploy: staging\n    - deploy: production\n      branches: [main]\n"))
    run = repo.run("refs/heads/main", main)
    assert run.state == "succeeded", (run.reason, repo.steps(run))
    assert [s for s in repo.steps(run)] == [("checkout and bake", "succeeded"), ("test", "succeeded"),
                                             ("publish", "succeeded"), ("deploy staging", "succeeded"),
                                             ("deploy production", "succeeded"),
                                             ("promote staging → production", "succeeded")]
    assert "› branch main is trusted as is: its own kiln.yaml (the protected branch main)" in repo.log(run)
    publish = next(s for s in ran if s.command and "--publish" in s.command[-1])
    assert publish.environment["API_TOKEN"] == TOKEN
    prod = _serving(w)["production"]
    # a branch that stays within what main's kiln.yaml gives it (test, deploy staging) runs
    (w.root / "app.py").write_text("print('v2')\n")
    commit = repo.push("feature/ok")  # main's pipeline as it is, and new code
    ok = repo.run("refs/heads/feature/ok", commit)
    assert ok.state == "succeeded", ok.reason
    assert repo.steps(ok) == [("checkout and bake", "succeeded"), ("test", "succeeded"), ("publish", "skipped"),
                              ("deploy staging", "succeeded"), ("deploy production", "skipped"),
                              ("promote staging → production", "skipped")]
    assert _serving(w)["staging"][1] == ok.image != prod[1] and _serving(w)["production"] == prod
    assert_stored_nowhere(w, WEBHOOK, TOKEN)


def test_even_the_protected_branch_never_reads_kilns_own_secrets(repo: Repo, w: World, tmp_path):
    ci_policy.record_webhook_secrets(w.ctx.settings, ["github-hmac"])  # kiln serve --github-secret github-hmac
    SecretStore(w.ctx.settings, environ={}).set("github-hmac", "hmac-5b8e1f0c2d")
    ran = leaky(w)
    for name in ("webhook", "github-hmac", "gitlab-token"):
        pipeline = f"pipeline: {{steps: [{{run: 'echo ${{H}} | base64', environment: {{H: 'secret:{name}'}}}}]}}"
        run = repo.run("refs/heads/main", repo.push("main", pipeline))
        assert run.state == "failed" and f"branch main may not read secret {name}" in run.reason
    # nor through an environment it deploys
    run = repo.run("refs/heads/main", repo.push("main", "pipeline: {steps: [{deploy: staging}]}",
                                                spec=("      web: {replicas: 1}\n",
                                                      "      web: {replicas: 1}\n"
                                                      "      worker: {environment: {H: 'secret:webhook'}}\n")))
    assert run.state == "failed" and "may not read secret webhook (services.worker.environment.H in staging)" in run.reason
    assert ran == [] and _serving(w)["staging"] is None
    assert_stored_nowhere(w, WEBHOOK, "hmac-5b8e1f0c2d")


def test_a_commit_not_on_the_ref_it_came_with_is_not_trusted_as_that_ref(repo: Repo, w: World):
    """A webhook (or a hook's caller) names the ref; the repository decides whether the commit is on it."""
    feature = repo.push("feature/x", ATTACK)
    run = repo.run("refs/heads/main", feature)  # "this is main", says a signed but lying push
    assert run.state == "failed"
    assert run.reason.startswith(f"refused: commit {feature[:12]} may not read secret webhook")
    assert f"› {feature[:12]} is not on refs/heads/main in {repo.bare}, so it has only the rights of a bare commit" \
        in repo.log(run)
    assert _serving(w) == {"staging": None, "production": None}
    # an older commit of main is still main's
    assert kiln_git.on_ref(repo.bare, "refs/heads/main", repo.main)  # type: ignore[attr-defined]
    assert not kiln_git.on_ref(repo.bare, "refs/tags/v1", repo.main)  # type: ignore[attr-defined]


def test_a_policy_file_decides_instead_of_the_protected_branch(repo: Repo, w: World):
    (w.ctx.settings.home / "ci-policy.yaml").write_text(
        "app: shop\nrefs:\n"
        "  - {branches: [main], deploy: [staging, production], secrets: [api-token]}\n"
        "  - {branches: ['feature/*'], promote: [production]}\n")
    trust = ci_policy.trust_for(w.ctx.settings, str(repo.bare), "kiln.yaml", "refs/heads/main", repo.main)  # type: ignore[attr-defined]
    assert trust.rights is not None and trust.rights.secrets == {"api-token"}  # main is not trusted as is here
    assert trust.source == f"the policy file {w.ctx.settings.home / 'ci-policy.yaml'} (rule 1: branches main)"
    run = repo.run("refs/heads/feature/x", repo.push("feature/x", ATTACK))
    assert run.state == "failed"
    assert "may not promote to production with `approval: auto`" in run.reason
    assert "may not promote to production (" not in run.reason  # the file lets feature/* promote, with approval
    other = ci_policy.trust_for(w.ctx.settings, str(repo.bare), "kiln.yaml", "refs/tags/v1", repo.main)  # type: ignore[attr-defined]
    assert other.ref == repo.main and other.rights == ci_policy.Rights(app="shop")  # type: ignore[attr-defined]
    # a named file must exist; a wrong one stops every run
    (w.ctx.settings.home / "ci-policy.yaml").write_text("refs: [{deploy: [staging]}]\n")
    run = repo.run("refs/heads/main", repo.main)  # type: ignore[attr-defined]
    assert run.state == "failed" and "a rule names the refs it is for" in run.reason
    with pytest.raises(Exception, match="does not exist"):
        ci_policy.policy_path(ci_policy.Settings(home=w.ctx.settings.home, ledger_url="sqlite://",
                                                 ci_policy=w.ctx.settings.home / "nope.yaml"))


def test_the_protected_branch_comes_from_the_repository_or_the_policy_file(tmp_path, w: World):
    def git(cwd: Path, *args: str) -> None:
        subprocess.run(("git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args), cwd=cwd, check=True,
                       capture_output=True)

    bare = tmp_path / "b.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "trunk", str(bare))
    assert kiln_git.default_branch(bare) == ("trunk", f"the HEAD of {bare}")  # even before it exists
    work = w.root
    git(work, "init", "-q", "-b", "dev")
    git(work, "add", "-A")
    git(work, "commit", "-qm", "x")
    # a work tree without a remote: its HEAD is only what is checked out, so never the protected branch
    assert kiln_git.default_branch(work) == (None, f"{work} has no remote HEAD and no branch main or master")
    git(work, "branch", "master")
    assert kiln_git.default_branch(work) == ("master", f"{work} has no remote HEAD; its branch master")
    git(work, "remote", "add", "origin", str(bare))
    git(work, "push", "-q", "origin", "dev:trunk")
    git(work, "remote", "set-head", "origin", "trunk")
    assert kiln_git.default_branch(work) == ("trunk", f"the HEAD of {work}'s remote origin")
    commit = subprocess.run(("git", "rev-parse", "HEAD"), cwd=work, capture_output=True, text=True).stdout.strip()
    # no branch `trunk` in the work tree: its origin's is used
    assert kiln_git.tip(work, "refs/heads/trunk") == commit
    # a bare repository whose HEAD names a branch nobody pushed: nothing is granted, and it says why
    empty = tmp_path / "e.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(empty))
    git(work, "push", "-q", str(empty), "dev:dev")
    trust = ci_policy.trust_for(w.ctx.settings, str(empty), "kiln.yaml", "refs/heads/dev", commit)
    assert trust.rights == ci_policy.Rights()
    assert trust.source == f"the policy from main, which {empty} does not have (yet), so nothing is granted"
    # the policy file may name the protected branch
    (w.ctx.settings.home).mkdir(parents=True, exist_ok=True)
    (w.ctx.settings.home / "ci-policy.yaml").write_text("protected_branch: dev\n")
    trust = ci_policy.trust_for(w.ctx.settings, str(empty), "kiln.yaml", "refs/heads/dev", commit)
    assert trust.rights is None and trust.notes[0] == f"the protected branch is dev (set in {w.ctx.settings.home / 'ci-policy.yaml'})"


def test_kiln_ci_policy_show(repo: Repo, w: World):
    env = {"KILN_HOME": str(w.ctx.settings.home), "NO_COLOR": "1", "HOME": str(w.root.parent)}
    feature = repo.push("feature/x", ATTACK)
    shown = run_kiln(["ci", "policy", "show", "--repo", str(repo.bare), "--ref", "feature/x", "--json"],
                     cwd=w.root, env=env)
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["ref"] == "refs/heads/feature/x" and data["commit"] == feature and not data["trusted_as_is"]
    assert data["rights"] == {"app": "shop", "deploy": ["staging"], "promote": ["staging"],
                              "auto_approval": ["staging"], "secrets": [],
                              "settings": {"staging": ["engine: docker", "port: 18081"]}}
    assert data["kiln_secrets"] == ["gitlab-token", "webhook"]
    text = run_kiln(["ci", "policy", "show", "--repo", str(repo.bare), "--ref", "main"], cwd=w.root, env=env)
    assert text.returncode == 0, text.stderr
    assert "branch main is trusted as is: its own kiln.yaml (the protected branch main)" in text.stdout
    assert "never readable (kiln's own): gitlab-token, webhook" in text.stdout


def test_serve_hook_and_detached_runners_carry_the_policy_and_serve_keeps_its_secrets_from_pipelines(
        repo: Repo, w: World, monkeypatch, tmp_path):
    home = w.ctx.settings.home
    env = {"KILN_HOME": str(home), "NO_COLOR": "1", "HOME": str(tmp_path), "KILN_SECRET_GH_HMAC": "hmac-value-1234"}
    policy = tmp_path / "policy.yaml"
    policy.write_text("refs: [{branches: [main], deploy: [staging]}]\n")
    served = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: served.append(kw))
    done = run_kiln(["serve", "--repo", str(repo.bare), "--github-secret", "gh-hmac", "--policy", str(policy)],
                    cwd=tmp_path, env=env)
    assert done.returncode == 0 and len(served) == 1, done.stderr
    assert (home / "webhook-secrets").read_text() == "gh-hmac\ngitlab-token\n"
    assert "gh-hmac" in ci_policy.kiln_secrets(w.ctx.settings, None)
    # a wrong policy file stops the server before it serves
    policy.write_text("refs: [{deploy: [staging]}]\n")
    bad = run_kiln(["serve", "--repo", str(repo.bare), "--github-secret", "gh-hmac", "--policy", str(policy)],
                   cwd=tmp_path, env=env)
    assert bad.returncode == 1 and "a rule names the refs it is for" in bad.stderr and len(served) == 1
    # the hook keeps the policy file for the runners it starts, and says which branch is protected otherwise
    installed = run_kiln(["ci", "hook", "install", "--repo", str(repo.bare), "--policy", str(policy)], cwd=tmp_path,
                         env=env)
    assert installed.returncode == 0, installed.stderr
    assert f'KILN_CI_POLICY:={policy}' in (repo.bare / "hooks" / "post-receive").read_text()
    installed = run_kiln(["ci", "hook", "install", "--repo", str(repo.bare)], cwd=tmp_path, env=env)
    assert "the protected branch is main (the HEAD of" in installed.stderr
    empty = tmp_path / "empty.git"  # `git init --bare` as many do it: HEAD names master, pushes go to main
    subprocess.run(("git", "init", "-q", "--bare", "-b", "master", str(empty)), check=True)
    installed = run_kiln(["ci", "hook", "install", "--repo", str(empty)], cwd=tmp_path, env=env)
    assert installed.returncode == 0 and "master" in installed.stderr and "does not exist yet" in installed.stderr
    # a detached runner gets --policy
    started = []
    monkeypatch.setattr("kiln.ci.trigger.process.spawn_detached", lambda argv, out: started.append(argv))
    from dataclasses import replace

    from kiln.ci.trigger import spawn
    w.ctx.settings = replace(w.ctx.settings, ci_policy=policy)
    spawn(w.ctx, 7)
    assert started[0][-4:] == ("work", "7", "--policy", str(policy))


def test_a_steps_secret_lookup_holds_only_what_its_run_may_read(w: World, monkeypatch):
    from kiln.ci.runner import _granted
    from kiln.errors import PolicyRefused

    monkeypatch.setenv("KILN_SECRET_API_TOKEN", TOKEN)
    find = _granted(w.ctx, {"api-token"})
    assert find("api-token") == TOKEN
    with pytest.raises(PolicyRefused, match="secret 'webhook' is not granted to this run"):
        find("webhook")


# --- issue 25, item 1: a pushed kiln.yaml may not relax hardening or pick where it listens -------

WEB = "    replicas: 2\n    healthcheck: {http: /health, interval: 50ms, deadline: 2s}\n"
STAGING = "  staging:\n    port: 18081\n"
RELAXATIONS = [  # (edit of kiln.yaml, the refusal's words: the setting, in staging, and its key)
    ((WEB, WEB + "    cap_add: [NET_RAW]\n"), "`cap_add: NET_RAW` in staging (services.web.cap_add)"),
    ((WEB, WEB + "    no_new_privileges: false\n"),
     "`no_new_privileges: false` in staging (services.web.no_new_privileges)"),
    ((WEB, WEB + "    read_only: false\n"), "`read_only: false` in staging (services.web.read_only)"),
    ((WEB, WEB + "    user: '0'\n"), "`user: root` in staging (services.web.user)"),
    ((WEB, WEB + "    writable: [/tmp, /usr/local/bin]\n"), "`writable: /usr/local/bin` in staging (services.web.writable)"),
    ((STAGING, STAGING + "    bind: 0.0.0.0\n"), "`bind: 0.0.0.0` in staging (environments.staging.bind)"),
    ((STAGING, "  staging:\n    port: 22\n"), "`port: 22` in staging (environments.staging.port)"),
    ((STAGING, STAGING + "    preview_port: 18099\n"), "`preview_port: 18099` in staging (environments.staging.preview_port)"),
    ((STAGING, STAGING + "    engine: qemu\n"), "`engine: qemu` in staging (environments.staging.engine)"),
]


def _push_edited(repo: Repo, w: World, branch: str, edit: tuple[str, str]) -> str:
    """Push `branch` with main's kiln.yaml changed by `edit` (the work tree's file restored after)."""
    path = w.root / "kiln.yaml"
    original = path.read_text()
    try:
        return repo.push(branch, spec=edit)
    finally:
        path.write_text(original)


@pytest.mark.parametrize("edit, refused", RELAXATIONS, ids=[r[1].split("`")[1] for r in RELAXATIONS])
def test_a_branch_relaxing_a_setting_of_an_environment_it_may_deploy_is_refused_before_the_bake(
        repo: Repo, w: World, edit: tuple[str, str], refused: str):
    """main lets every branch deploy staging; a branch keeping main's pipeline but relaxing one
    setting of staging fails before its bake, the refusal naming the setting, its key and the right."""
    before = dict(w.engine.image_store)
    ran = leaky(w)
    run = repo.run("refs/heads/feature/relax", _push_edited(repo, w, "feature/relax", edit))
    source = f"the policy from main (kiln.yaml at {repo.main[:12]})"  # type: ignore[attr-defined]
    field = refused.split("`")[1].partition(":")[0]
    granted = {"port": "allows port: 18081 only there", "engine": "allows engine: docker only there"}
    assert run.state == "failed", run.reason
    assert run.reason == (f"refused: branch feature/relax may not set {refused}: {source} "
                          + granted.get(field, f"allows no {field} setting there"))
    assert repo.steps(run)[0] == ("checkout and bake", "failed") and not run.image
    assert ran == [] and dict(w.engine.image_store) == before and _serving(w) == {"staging": None, "production": None}


def test_what_the_protected_branch_gives_an_environment_a_branch_may_give_it_too(repo: Repo, w: World):
    """Settings are granted per environment by main's own kiln.yaml: the same relaxations on a
    branch run; one more, or the same one for an environment main does not relax, does not."""
    relaxed = (WEB, WEB + "    cap_add: [NET_BIND_SERVICE]\n    user: '0'\n")
    path = w.root / "kiln.yaml"
    original = path.read_text()
    repo.main = repo.push("main", spec=relaxed)  # type: ignore[attr-defined]
    ok = repo.run("refs/heads/feature/same", repo.push("feature/same"))
    assert ok.state == "succeeded", ok.reason
    staging_web = [s for s in w.engine.specs.values() if s.labels.get("kiln.env") == "staging"
                   and s.labels.get("kiln.service") == "web" and s.labels.get("kiln.role") == "instance"]
    assert staging_web and all(s.hardening.cap_add == ("NET_BIND_SERVICE",) and s.hardening.user == "0" for s in staging_web)
    path.write_text(path.read_text().replace("cap_add: [NET_BIND_SERVICE]", "cap_add: [NET_BIND_SERVICE, CHOWN]"))
    more = repo.run("refs/heads/feature/more", repo.push("feature/more"))
    path.write_text(original)
    assert more.state == "failed" and more.reason.count("may not") == 1
    assert "may not set `cap_add: CHOWN` in staging (services.web.cap_add)" in more.reason
    assert "allows cap_add: NET_BIND_SERVICE only there" in more.reason


def test_a_capability_beyond_the_allow_list_is_refused_when_the_spec_is_read(repo: Repo, w: World):
    for cap in ("ALL", "SYS_ADMIN", "cap_net_admin"):
        run = repo.run("refs/heads/feature/all", _push_edited(repo, w, "feature/all", (WEB, WEB + f"    cap_add: [{cap}]\n")))
        assert run.state == "failed" and "is not a capability kiln lets a service keep" in run.reason, run.reason
        assert "services.web.cap_add[0]" in run.reason and not run.image


def test_a_policy_file_grants_settings_by_name(repo: Repo, w: World):
    (w.ctx.settings.home / "ci-policy.yaml").write_text(
        "app: shop\nrefs:\n"
        "  - {branches: ['*'], deploy: [staging], ports: ['18080-18089'], cap_add: [net_raw], relax: [read_only]}\n")
    ok = repo.run("refs/heads/feature/a", _push_edited(repo, w, "feature/a", (WEB, WEB + "    cap_add: [NET_RAW]\n"
                                                                                     "    read_only: false\n")))
    assert ok.state == "succeeded", ok.reason
    bad = repo.run("refs/heads/feature/b", _push_edited(repo, w, "feature/b", (STAGING, "  staging:\n    port: 18090\n"
                                                                                        "    engine: qemu\n")))
    assert bad.state == "failed"
    source = f"the policy file {w.ctx.settings.home / 'ci-policy.yaml'} (rule 1: branches *)"
    assert bad.reason == ("refused: branch feature/b may not set `engine: qemu` in staging (environments.staging.engine): "
                          f"{source} allows engine: docker only there; "
                          "branch feature/b may not set `port: 18090` in staging (environments.staging.port): "
                          f"{source} allows " + ", ".join(f"port: {p}" for p in range(18080, 18090)) + " only there")


# --- issue 25, item 3: a smoke step reaches only what a release recorded, and never echoes ------


class _Page:
    """A local HTTP server answering every GET with `body`, counting what it was asked."""

    def __init__(self, body: str) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        page = self
        self.hits = 0

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                page.hits += 1
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        import threading

        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


SMOKE = "pipeline: {steps: [{smoke: staging, checks: [{path: /, body: never-there, within: 1s}]}]}\n"


def test_a_smoke_step_targets_the_serving_releases_url_and_never_echoes_the_answer(repo: Repo, w: World):
    """A branch may smoke-check staging (main's pipeline reaches it), but its kiln.yaml moving
    staging's port onto an internal service does not move the check, and no answer is quoted."""
    public, internal = _Page("the public page"), _Page("TOP-SECRET internal admin page")
    try:
        path = w.root / "kiln.yaml"
        original = path.read_text()
        # staging serves at `public` (an operator's deploy; the fake router stands in for it)
        w.edit_spec(STAGING, f"  staging:\n    port: {public.port}\n")
        deploy(w.ctx, w.load(), "staging")
        path.write_text(original)
        attack = original.split("\npipeline:")[0].rstrip("\n").replace(STAGING, f"  staging:\n    port: {internal.port}\n")
        path.write_text(attack + "\n" + SMOKE)
        run = repo.run("refs/heads/feature/s1", repo.push("feature/s1"))
        path.write_text(original)
        assert run.state == "failed"
        assert run.reason == (f"step 1 (smoke staging) failed: GET http://127.0.0.1:{public.port}/: "
                              "the body does not contain 'never-there'")
        assert internal.hits == 0 and public.hits >= 1
        said = " ".join([run.reason, *repo.log(run), *(m for _, m in w.out.said)])
        assert "public page" not in said and "TOP-SECRET" not in said
    finally:
        public.close()
        internal.close()


def test_a_smoke_step_of_an_environment_nothing_serves_fails_without_a_request(repo: Repo, w: World):
    internal = _Page("TOP-SECRET internal admin page")
    try:
        path = w.root / "kiln.yaml"
        original = path.read_text()
        attack = original.split("\npipeline:")[0].rstrip("\n").replace(STAGING, f"  staging:\n    port: {internal.port}\n")
        path.write_text(attack + "\n" + SMOKE)
        run = repo.run("refs/heads/feature/s2", repo.push("feature/s2"))
        path.write_text(original)
        assert run.state == "failed" and "nothing serves shop/staging yet" in run.reason, run.reason
        assert internal.hits == 0
    finally:
        internal.close()
