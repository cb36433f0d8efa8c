"""`kiln serve`'s control plane over real HTTP (uvicorn on a loopback port, httpx) on the fakes:
every endpoint, 401/403, each action through the CLI's use case (lock, event naming the token),
the dashboard's cookie and CSRF, /metrics parsed by prometheus-client. Against a real engine:
tests/integration/test_dashboard.py."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from kiln.access import allows, check_new, digest, new_token
from kiln.agent.sampling import per_release, release_of
from kiln.errors import UsageError
from kiln.ledger import kinds
from kiln.ledger.ci_store import CiStore
from kiln.ledger.db import now
from kiln.ledger.samples import Sample
from kiln.router.haproxy_api import ServerStat
from kiln.server.app import make_app
from kiln.server.metrics import histogram
from kiln.server.plane import Plane
from kiln.server.svg import line_chart
from kiln.usecases.deploy import deploy
from kiln.usecases.figures import heal_seconds
from unit.world import World

BLUE_GREEN_MANUAL = "      strategy: blue-green\n      promote: manual\n"


class Served:
    def __init__(self, w: World, url: str) -> None:
        self.w, self.url = w, url
        self.tokens: dict[str, str] = {}

    def token(self, name: str, role: str, *envs: str) -> str:
        value = new_token()
        self.w.ctx.ledger.tokens.create(name, role, envs, value)
        self.tokens[name] = value
        return value

    def client(self, name: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[name]}"} if name else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10, follow_redirects=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Switch:
    """An ASGI app that passes each request to the app of the test running now: one uvicorn
    server for the module (starting one per test cost ~0.5 s each)."""

    app = None

    async def __call__(self, scope, receive, send):
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[_Switch, str]]:
    switch = _Switch()
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(switch, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield switch, f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(5)


@pytest.fixture
def served(w: World, server) -> Iterator[Served]:
    switch, url = server
    switch.app = make_app(w.ctx, None, plane=Plane(w.ctx, [w.root / "kiln.yaml"]))
    s = Served(w, url)
    for name, role, envs in (("ada", "admin", ()), ("vic", "viewer", ()), ("dee", "deployer", ()),
                             ("stan", "deployer", ("staging",))):
        s.token(name, role, *envs)
    yield s
    switch.app = None


# --- the pure parts -----------------------------------------------------------------------------------


def test_tokens_are_random_stored_as_sha256_and_roles_grant_as_documented(w):
    a, b = new_token(), new_token()
    assert a != b and a.startswith("kiln_") and len(a) >= 40
    made = w.ctx.ledger.tokens.create("ci-bot", "deployer", ("staging",), a)
    assert made.digest == digest(a) and a not in made.digest
    with w.ctx.ledger.db.engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT * FROM tokens").all()
    assert a not in repr(stored)  # never in plain text
    assert w.ctx.ledger.tokens.find(a) == made and w.ctx.ledger.tokens.find(b) is None
    assert allows(made, "read") and allows(made, "act", "staging")
    assert not allows(made, "act", "production") and not allows(made, "manage")
    with pytest.raises(UsageError, match="already a token"):
        w.ctx.ledger.tokens.create("ci-bot", "viewer", (), b)
    with pytest.raises(UsageError, match="unknown role"):
        check_new("x", "root", ())
    with pytest.raises(UsageError, match="limits where a deployer"):
        check_new("x", "viewer", ("staging",))
    assert w.ctx.ledger.tokens.revoke("ci-bot") and w.ctx.ledger.tokens.find(a) is None


def test_traffic_per_release_from_two_readings_of_haproxy():
    def stat(name, responses, errors, ms):
        return ServerStat("web", name, "UP", 0, 0, 0, 100, "", responses, errors, ms)

    before = {"kiln-shop-production-web-v1-aaaaaa": stat("a", 100, 1, 10)}
    after = {"kiln-shop-production-web-v1-aaaaaa": stat("a", 300, 3, 10),
             "kiln-shop-production-web-v2-bbbbbb": stat("b", 50, 5, 30)}
    at = now()
    assert release_of("kiln-shop-production-web-v12-0a1b2c") == 12 and release_of("router") is None
    v1, v2 = per_release(before, after, 2.0, at)
    assert (v1.release, v1.requests, v1.errors, v1.rate, v1.response_ms) == (1, 200, 2, 100.0, 10.0)
    assert (v2.release, v2.requests, v2.errors, v2.error_rate) == (2, 50, 5, 0.1)
    svg = line_chart("requests", "per s", {"v1": [(0, 1.0), (60, 3.0)]}, 0, 3600)
    assert svg.startswith("<svg") and "polyline" in svg and "v1" in svg
    assert histogram([0.5, 3, 100], (1, 10)) == ([("1", 1.0), ("10", 2.0), ("+Inf", 3.0)], 103.5)
    assert heal_seconds(["replaced a with b in 1.25s (agent x)", "nothing"]) == [1.25]


# --- access ------------------------------------------------------------------------------------------


def test_no_token_is_401_an_unknown_one_401_and_a_role_that_may_not_403(served):
    deploy(served.w.ctx, served.w.load(), "production")
    with served.client() as anon:
        r = anon.get("/api/v1/apps")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert "no API token" in r.json()["error"]
        assert anon.get("/metrics").status_code == 401
        assert anon.get("/api/v1/apps", headers={"Authorization": "Bearer kiln_nope"}).status_code == 401
        assert anon.get("/", follow_redirects=False).headers["location"].startswith("/login")
    with served.client("vic") as viewer:
        assert viewer.get("/api/v1/apps").status_code == 200
        r = viewer.post("/api/v1/apps/shop/envs/production/rollback", json={})
        assert r.status_code == 403 and "vic (viewer) may not act" in r.json()["error"]
        assert viewer.get("/api/v1/tokens").status_code == 403
    with served.client("stan") as stan:  # a deployer of staging only
        assert stan.post("/api/v1/apps/shop/envs/production/rollback", json={}).status_code == 403
        assert stan.post("/api/v1/tokens", json={"name": "x", "role": "admin"}).status_code == 403
    served.w.ctx.ledger.tokens.revoke("vic")
    with served.client("vic") as revoked:
        assert revoked.get("/api/v1/apps").status_code == 401
    assert served.w.events() == [(kinds.ROLLOUT_STARTED, "rollout 1 to v1 (rolling)"),
                                 (kinds.ROLLOUT_SUCCEEDED, "rollout 1: v1 serving")]  # nothing was done


def test_admins_manage_tokens_whose_value_is_shown_once(served):
    with served.client("ada") as admin:
        made = admin.post("/api/v1/tokens", json={"name": "bot", "role": "deployer", "envs": ["staging"]}).json()
        assert made["token"].startswith("kiln_") and made["envs"] == ["staging"]
        listed = admin.get("/api/v1/tokens").json()
        assert next(t for t in listed if t["name"] == "ada")["last_used_at"] is not None
        assert [t["name"] for t in listed] == ["ada", "bot", "dee", "stan", "vic"]
        assert all("token" not in t and "digest" not in t for t in listed)
        assert admin.post("/api/v1/tokens", json={"name": "bot", "role": "viewer"}).status_code == 400
        assert admin.delete("/api/v1/tokens/bot").json() == {"revoked": "bot"}
        assert admin.delete("/api/v1/tokens/bot").status_code == 404


# --- reads -------------------------------------------------------------------------------------------------


def test_every_read_endpoint(served):
    w = served.w
    deploy(w.ctx, w.load(), "production")
    w.change_code("print('v2')\n")
    deploy(w.ctx, w.load(), "production")
    w.ctx.ledger.samples.record("shop", "production", [Sample(2, now(), 10.0, 100, 1, 12.5)])
    run, _ = CiStore(w.ctx.ledger).enqueue(repo="/r", spec="kiln.yaml", ref="refs/heads/main", queue="q",
                                           commit="a" * 40, trigger="cli", app="shop")
    [step] = CiStore(w.ctx.ledger).add_steps(run.id, [(1, 1, "test", "run", "succeeded", "")])
    CiStore(w.ctx.ledger).log(run.id, step.id, ["ok: token ****"])
    with served.client("vic") as c:
        assert c.get("/api/v1/apps").json() == [{"app": "shop", "environments": ["production", "staging"], "spec": True}]
        envs = c.get("/api/v1/apps/shop/envs").json()
        assert [(e["env"], e["release"]) for e in envs] == [("production", 2), ("staging", None)]
        st = c.get("/api/v1/apps/shop/envs/production/status").json()
        assert st["release"]["number"] == 2 and {i["health"] for i in st["instances"]} == {"healthy", "running"}
        assert all({"node", "release", "health"} <= set(i) for i in st["instances"])
        rels = c.get("/api/v1/apps/shop/envs/production/releases").json()
        assert [(r["number"], r["state"]) for r in rels] == [(2, "serving"), (1, "served")]
        one = c.get("/api/v1/apps/shop/envs/production/releases/1").json()
        assert one["config"]["app"] == "shop"
        diff = c.get("/api/v1/apps/shop/envs/production/releases/1/diff/2").json()
        assert diff["image"]["same"] is False and diff["differences"] == []
        assert c.get("/api/v1/apps/shop/envs/production/releases/9").status_code == 404
        rollouts = c.get("/api/v1/apps/shop/envs/production/rollouts").json()
        assert [(r["to"], r["state"]) for r in rollouts] == [(2, "succeeded"), (1, "succeeded")]
        steps = c.get(f"/api/v1/apps/shop/envs/production/rollouts/{rollouts[0]['id']}").json()["steps"]
        assert steps and {"action", "target", "state", "seconds"} <= set(steps[0])
        assert c.get("/api/v1/apps/shop/envs/production/lock").json()["locked"] is False
        traffic = c.get("/api/v1/apps/shop/envs/production/traffic").json()
        assert traffic["sampled"][0]["rps"] == 10.0
        events = c.get("/api/v1/apps/shop/events", params={"env": "production"}).json()
        assert [e["kind"] for e in events][-1] == kinds.ROLLOUT_SUCCEEDED
        assert c.get("/api/v1/ci/runs").json()[0]["id"] == run.id
        assert c.get(f"/api/v1/ci/runs/{run.id}").json()["steps"][0]["name"] == "test"
        assert c.get(f"/api/v1/ci/runs/{run.id}/logs").json() == [{"step": "1:test", "line": "ok: token ****"}]
        assert c.get("/api/v1/ci/runs/99").status_code == 404
        assert c.get("/api/v1/apps/nope/envs").status_code == 404
        assert c.get("/api/v1/apps/shop/envs/nope/status").status_code == 404
        assert c.get("/api/v1/apps/shop/envs/production/releases", params={"limit": 0}).status_code == 422
        paths = c.get("/api/openapi.json").json()["paths"]
        assert "/api/v1/apps/{app}/envs/{env}/rollback" in paths and "/api/v1/apps/{app}/events/stream" in paths


def test_events_as_server_sent_events(served):
    w = served.w
    deploy(w.ctx, w.load(), "production")
    with served.client("vic") as c, c.stream("GET", "/api/v1/apps/shop/events/stream", params={"limit": 1}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = r.iter_lines()
        assert next(lines).startswith("id: ")
        assert next(lines) == f"event: {kinds.ROLLOUT_SUCCEEDED}"
        w.ctx.ledger.events.record("shop", "production", kinds.AGENT_LEADING, "agent x leads")
        got = []
        for line in lines:
            if line.startswith("data: "):
                got.append(json.loads(line[6:]))
                if got[-1]["kind"] == kinds.AGENT_LEADING:
                    break
        assert got[-1]["message"] == "agent x leads" and got[-1]["app"] == "shop"


# --- actions -------------------------------------------------------------------------------------------------


def test_rollback_and_deploy_of_a_baked_image_go_through_the_use_cases_and_name_the_token(served):
    w = served.w
    first = deploy(w.ctx, w.load(), "production").release
    w.change_code("print('v2')\n")
    deploy(w.ctx, w.load(), "production")
    with served.client("dee") as c:
        r = c.post("/api/v1/apps/shop/envs/production/rollback", json={})
        assert r.status_code == 200, r.text
        assert r.json()["release"]["number"] == 3 and r.json()["release"]["note"] == "rollback to v1"
        assert w.ctx.ledger.releases.current("shop", "production").image == first.image
        # the image v2 ran, deployed again without a bake
        v2 = w.ctx.ledger.releases.get("shop", "production", 2)
        r = c.post("/api/v1/apps/shop/envs/production/deploy", json={"image": v2.image_tag})
        assert r.status_code == 200 and r.json()["release"]["number"] == 4
        assert w.ctx.ledger.releases.current("shop", "production").image == v2.image
        r = c.post("/api/v1/apps/shop/envs/production/deploy", json={"image": "kiln/shop:nothing"})
        assert r.status_code == 400 and "no release of shop recorded" in r.json()["error"]
        r = c.post("/api/v1/apps/shop/envs/production/rollback", json={"strategy": "sideways"})
        assert r.status_code == 400
        # the environment's lock, as the CLI takes it: held by another, the action is 409
        from kiln.rollout.lock import hold

        with hold(w.ctx.ledger, "shop", "production", "someone else"):
            r = c.post("/api/v1/apps/shop/envs/production/rollback", json={"to": 2})
        assert r.status_code == 409 and "locked by" in r.json()["error"]
    actions = w.events("production", kinds.API_ACTION, kinds.API_ACTION_FAILED)
    assert actions[0] == (kinds.API_ACTION, "rollback by token dee (deployer): v3 serving")
    assert actions[1][1].startswith(f"deploy {v2.image_tag} by token dee (deployer): v4 serving")
    assert actions[-1][0] == kinds.API_ACTION_FAILED and "rollback to v2 by token dee" in actions[-1][1]


def test_promote_both_kinds_and_abort(served):
    w = served.w
    deploy(w.ctx, w.load(), "production")
    deploy(w.ctx, w.load(), "staging")
    with served.client("stan") as stan:  # staging's deployer promotes production's image to staging
        r = stan.post("/api/v1/apps/shop/promote", json={"from": "production", "to": "staging"})
        assert r.status_code == 200, r.text
        assert r.json()["release"]["origin"] in ("", "promoted from production v1")
    w.edit_spec("      strategy: rolling\n", BLUE_GREEN_MANUAL)
    w.change_code("print('v2')\n")
    assert deploy(w.ctx, w.load(), "production").state == "paused"
    with served.client("dee") as c:
        r = c.post("/api/v1/apps/shop/envs/production/promote")
        assert r.status_code == 200 and r.json()["release"]["number"] == 2 and r.json()["state"] == "succeeded"
        assert c.post("/api/v1/apps/shop/envs/production/promote").status_code == 400  # nothing waits
        w.change_code("print('v3')\n")
        assert deploy(w.ctx, w.load(), "production").state == "paused"
        r = c.post("/api/v1/apps/shop/envs/production/rollouts/abort")
        assert r.status_code == 200 and r.json()["state"] == "aborted"
        assert w.ctx.ledger.releases.current("shop", "production").number == 2
        assert c.post("/api/v1/apps/shop/envs/production/rollouts/abort").status_code == 400
    # a running rollout is asked through the ledger; its kiln aborts at its next check
    rollout = w.ctx.ledger.rollouts.start("shop", "production", 2, 3, "canary", {})
    with served.client("dee") as c:
        r = c.post("/api/v1/apps/shop/envs/production/rollouts/abort")
    assert r.status_code == 200 and r.json()["state"] == "running"
    assert w.ctx.ledger.rollouts.abort_requested(rollout.id) == "token dee"
    said = [m for _, m in w.events("production", kinds.API_ACTION)]
    assert said == ["promote by token dee (deployer): v2 serving", "abort by token dee (deployer): rollout 4 to v3 aborted",
                    f"abort by token dee (deployer): rollout {rollout.id} to v3 running"]


def test_approve_and_cancel_ci_runs(served):
    store = CiStore(served.w.ctx.ledger)
    run, _ = store.enqueue(repo="/r", spec="kiln.yaml", ref="refs/heads/main", queue="q", commit="b" * 40,
                           trigger="cli", app="shop")
    [step] = store.add_steps(run.id, [(1, 1, "promote", "promote", "waiting", "")])
    with served.client("vic") as viewer:
        assert viewer.post(f"/api/v1/ci/runs/{run.id}/approve").status_code == 403
    with served.client("dee") as c:
        assert c.post(f"/api/v1/ci/runs/{run.id}/approve").status_code == 200
        assert store.step(step.id).state == "approved" and store.step(step.id).detail == "approved by token dee"
        assert c.post(f"/api/v1/ci/runs/{run.id}/cancel").json()["run"]["state"] == "cancelled"
        assert c.post(f"/api/v1/ci/runs/{run.id}/cancel").status_code == 400
    assert [m for _, m in served.w.events("ci", kinds.API_ACTION)] == [
        f"approve CI run {run.id} by token dee (deployer): done", f"cancel CI run {run.id} by token dee (deployer): done"]


# --- the dashboard's cookie and CSRF; /metrics -----------------------------------------------------------


def test_the_dashboard_signs_in_with_a_cookie_and_every_action_needs_its_csrf_token(served):
    w = served.w
    deploy(w.ctx, w.load(), "production")
    w.change_code("print('v2')\n")
    deploy(w.ctx, w.load(), "production")
    with served.client() as browser:
        browser.headers["Origin"] = served.url  # as a browser sends it with every form POST (sign-in checks it)
        assert browser.post("/login", data={"token": "kiln_wrong"}).status_code == 401
        r = browser.post("/login", data={"token": served.tokens["dee"], "next": "/"})
        assert r.status_code == 303
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
        page = browser.get("/").text
        assert "shop/production" in page and "v2" in page
        env = browser.get("/apps/shop/envs/production").text
        assert 'class="rollback"' in env and "<svg" in env
        csrf = env.split('name="csrf" value="')[1].split('"')[0]
        # without the page's CSRF token (a cross-site form would have none): refused, nothing done
        r = browser.post("/apps/shop/envs/production/rollback", data={"to": "1"})
        assert r.status_code == 403 and w.ctx.ledger.releases.current("shop", "production").number == 2
        r = browser.post("/api/v1/apps/shop/envs/production/rollback", json={"to": 1})
        assert r.status_code == 403
        r = browser.post("/apps/shop/envs/production/rollback", data={"to": "1", "csrf": csrf})
        assert r.status_code == 303 and "v3" in r.headers["location"]
        assert w.ctx.ledger.releases.current("shop", "production").note == "rollback to v1"
        assert "id=\"steps\"" in browser.get("/apps/shop/envs/production/live").text
        assert "rollout" in browser.get("/apps/shop/events").text
        assert browser.get("/apps/shop/events", params={"fragment": 1}).text.startswith("<table id=\"events\">")
        assert browser.get("/ci").status_code == 200
        assert browser.post("/logout", data={"csrf": csrf}).status_code == 303


def test_metrics_in_prometheus_format(served):
    w = served.w
    deploy(w.ctx, w.load(), "production")
    w.ctx.ledger.events.record("shop", "production", kinds.INSTANCE_REPLACED, "replaced a with b in 1.50s (agent x)")
    w.ctx.ledger.events.record("shop", "production", kinds.INSTANCE_TAINTED, "a: exec")
    with served.client("vic") as c:
        r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    info = families["kiln_release_info"].samples
    assert [(s.labels, s.value) for s in info] == [({"app": "shop", "env": "production", "release": "v1"}, 1.0)]
    assert {s.labels["outcome"]: s.value for s in families["kiln_rollouts"].samples} == {"succeeded": 1.0}
    assert any(s.name == "kiln_rollout_duration_seconds_count" and s.value == 1 for s in
               families["kiln_rollout_duration_seconds"].samples)
    assert sum(s.value for s in families["kiln_instances"].samples) == 3
    assert any(s.name == "kiln_heal_seconds_sum" and s.value == 1.5 for s in families["kiln_heal_seconds"].samples)
    assert families["kiln_drift"].samples[0].value == 1
    assert "kiln_ci_runs" in families and "kiln_router_requests" in families and "kiln_router_5xx" in families


def test_the_agent_samples_each_releases_traffic_into_the_ledger(w, monkeypatch):
    from kiln.agent.loop import Agent

    deploy(w.ctx, w.load(), "production")
    agent = Agent(w.ctx, "shop", {"production": w.load().spec.environments["production"].agent})
    assert agent._lead("production")
    agent._sample()  # the first reading: nothing to compare with yet
    assert w.ctx.ledger.samples.of("shop", "production", now().replace(year=2000)) == []
    for name in w.router().servers():
        w.router().counters[name] = (50, 1, 20)
    agent._sample()
    [sample] = w.ctx.ledger.samples.of("shop", "production", now().replace(year=2000))
    assert (sample.release, sample.requests, sample.errors, sample.response_ms) == (1, 100, 2, 20.0)
    agent._resign("production", "stopped")


def test_kiln_token_create_list_revoke(tmp_path):
    from unit.cli_inproc import run_kiln

    env = {"KILN_HOME": str(tmp_path / "home"), "NO_COLOR": "1", "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    made = run_kiln(["token", "create", "ci-bot", "--role", "deployer", "--env", "staging"], cwd=tmp_path, env=env)
    assert made.returncode == 0, made.stderr
    value = made.stdout.strip()
    assert value.startswith("kiln_") and "shown only this once" in made.stderr
    listed = run_kiln(["token", "list"], cwd=tmp_path, env=env)
    assert "ci-bot" in listed.stdout and "deployer" in listed.stdout and "staging" in listed.stdout
    assert value not in listed.stdout + listed.stderr
    assert value not in (tmp_path / "home" / "ledger.db").read_bytes().decode(errors="replace")
    bad = run_kiln(["token", "create", "x", "--role", "root"], cwd=tmp_path, env=env)
    assert bad.returncode == 2 and "unknown role 'root'" in bad.stderr and "Traceback" not in bad.stderr
    assert run_kiln(["token", "revoke", "ci-bot"], cwd=tmp_path, env=env).returncode == 0
    gone = run_kiln(["token", "revoke", "ci-bot"], cwd=tmp_path, env=env)
    assert gone.returncode == 2 and "there is no token 'ci-bot'" in gone.stderr


def test_kiln_rollout_abort_asks_the_running_rollout_and_says_when_there_is_none(tmp_path):
    from kiln.ledger.store import Ledger
    from unit.cli_inproc import run_kiln
    from unit.world import SPEC

    (tmp_path / "kiln.yaml").write_text(SPEC)
    home = tmp_path / "home"
    env = {"KILN_HOME": str(home), "NO_COLOR": "1", "HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "USER": "ops"}
    none = run_kiln(["rollout", "abort", "-e", "production"], cwd=tmp_path, env=env)
    assert none.returncode == 2 and "no rollout of shop/production is running" in none.stderr
    ledger = Ledger(f"sqlite:///{home / 'ledger.db'}")
    rollout = ledger.rollouts.start("shop", "production", None, 1, "canary", {})
    asked = run_kiln(["rollout", "abort", "-e", "production"], cwd=tmp_path, env=env)
    assert asked.returncode == 0, asked.stderr
    assert f"rollout {rollout.id} to v1: running" in asked.stderr
    assert ledger.rollouts.abort_requested(rollout.id)


def test_a_running_canary_asked_to_abort_converges_back_at_its_next_analysis_tick(w, monkeypatch):
    from kiln.errors import RolloutError
    from kiln.rollout import driver

    w.edit_spec("      strategy: rolling\n", "      strategy: canary\n      steps: [{weight: 25, pause: 60s}]\n")
    deploy(w.ctx, w.load(), "production")
    old = dict(w.serving())

    class Clock:  # the analysis waits on this clock: asked to abort during its first wait
        now = 0.0

        @classmethod
        def monotonic(cls) -> float:
            return cls.now

        @classmethod
        def sleep(cls, seconds: float) -> None:
            cls.now += seconds
            running = w.ctx.ledger.rollouts.unfinished("shop", "production")
            w.ctx.ledger.rollouts.request_abort(running[-1].id, "token dee")

    monkeypatch.setattr(driver, "time", Clock)
    w.change_code("print('v2')\n")
    with pytest.raises(RolloutError, match="aborted by token dee"):
        deploy(w.ctx, w.load(), "production")
    assert Clock.now < 60  # not the whole pause
    assert w.serving() == old and w.rollouts()[-1].state == "aborted"
