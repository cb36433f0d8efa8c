"""The three strategies and automatic abort, each under wrk load through the real router.

Each test takes a fresh private copy of examples/hello (2 replicas, a preview port) with its
first release serving, and deploys one of: a rolling deploy in batches, a blue-green deploy
smoke-checked on its preview port (and one failing it), a manual blue-green promotion with an
idle old set and an instant rollback, a healthy canary, then bad releases of each kind (exits at
start, never healthy, failing before_traffic hook, answering 5xx under a canary)."""

from __future__ import annotations

import re
import time
import urllib.request

import docker
import pytest
from conftest import App, Load, Wrk, free_port

pytestmark = pytest.mark.integration


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()


def under_load(app: App, *args: str, seconds: int, ok: bool = True) -> tuple[Load, str]:
    """`kiln ARGS` while wrk sends keep-alive load through the router for `seconds`."""
    load = Wrk(app.url(), seconds=seconds)
    time.sleep(1.0)
    proc = app.kiln(*args, check=ok)
    result = load.result()
    print(f"\nkiln {' '.join(args)} under load: {result.requests} requests, {result.rps:.0f}/s, "
          f"{result.non_2xx} non-2xx, {result.socket_errors} socket errors")
    if not ok:
        assert proc.returncode != 0, proc.stderr
    return result, proc.stderr


def assert_no_failures(result: Load, at_least: int = 1000) -> None:
    assert result.requests >= at_least, result.text
    assert result.non_2xx == 0, result.text
    assert result.socket_errors == 0, result.text


def instances(engine: docker.DockerClient, app: App) -> list[docker.models.containers.Container]:
    return engine.containers.list(all=True, filters={"label": [f"kiln.app={app.name}", "kiln.env=production"]})


def assert_serving(app: App, engine: docker.DockerClient, release: int, replicas: int = 2) -> None:
    """Exactly `replicas` healthy instances of `release`, all in the router; nothing else."""
    st = app.kiln_json("status")
    assert st["release"]["number"] == release, st
    assert [(i["release"], i["health"], i["in_router"]) for i in st["instances"]] == [(release, "healthy", True)] * replicas, st
    roles = sorted(c.labels["kiln.role"] for c in instances(engine, app))
    assert roles == ["instance"] * replicas + ["router"], roles  # no orphan instance or hook container
    assert not st["waiting"], st


def steps(app: App) -> list[dict]:
    return app.kiln_json("rollout", "show")["steps"]


def message(app: App) -> str:
    """The message the public port serves now."""
    return re.search(r"message=.*", get(app.url())).group(0)


@pytest.fixture
def bg_app(app: App) -> App:
    """A fresh app with a preview port and its first release serving (rolling, 2 replicas)."""
    preview = free_port()
    app.ports["preview"] = preview

    def change(data: dict) -> None:
        data["environments"]["production"]["preview_port"] = preview
    app.edit_spec(change)
    app.kiln("deploy")
    return app


def test_rolling_deploy_in_batches(bg_app: App, engine: docker.DockerClient) -> None:
    app = bg_app
    before = app.serving()["number"]
    app.set_rollout(strategy="rolling", max_surge=1, max_unavailable=0)
    app.set_message("rolling")
    result, _ = under_load(app, "deploy", seconds=10)
    assert_no_failures(result)
    assert_serving(app, engine, before + 1)
    # In batches of one: a new instance is serving before the first old one leaves, and the second
    # new one starts only after that.
    actions = [(s["action"], s["state"]) for s in steps(app) if s["action"] in ("Start", "Unroute") and s["state"] == "done"]
    assert actions == [("Start", "done"), ("Unroute", "done"), ("Start", "done"), ("Unroute", "done")], actions
    assert "message=rolling" in get(app.url())


def test_blue_green_smoke_checked_on_preview_port(bg_app: App, engine: docker.DockerClient) -> None:
    app = bg_app
    before = app.serving()["number"]
    app.set_rollout(strategy="blue-green", smoke=[{"path": "/", "status": 200, "body": "message=blue-green"}])
    app.set_message("blue-green")
    result, stderr = under_load(app, "deploy", seconds=10)
    assert_no_failures(result)
    assert f"smoke check GET / on preview port {app.ports['preview']} passed" in stderr
    assert_serving(app, engine, before + 1)
    assert [s["target"] for s in steps(app) if s["action"] == "Phase" and s["state"] == "done"] == ["start", "smoke", "switch"]
    assert "message=blue-green" in get(app.url())


def test_blue_green_failing_smoke_check_aborts(bg_app: App, engine: docker.DockerClient) -> None:
    app = bg_app
    before, served = app.serving()["number"], message(app)
    app.set_rollout(strategy="blue-green", smoke=[{"path": "/", "body": "this text is not there"}])
    app.set_message("never served")
    result, stderr = under_load(app, "deploy", seconds=8, ok=False)
    assert_no_failures(result, at_least=500)
    assert "smoke check GET / on preview port" in stderr and "does not contain" in stderr
    assert_serving(app, engine, before)
    assert [(r["number"], r["state"]) for r in app.releases()[:2]] == [(before + 1, "aborted"), (before, "serving")]
    assert message(app) == served


def test_blue_green_manual_promotion_then_instant_rollback(bg_app: App, engine: docker.DockerClient) -> None:
    app = bg_app
    serving = app.serving()["number"]
    old_message = message(app)
    app.set_rollout(strategy="blue-green", promote="manual", keep_old="10m")
    app.set_message("promoted")
    deployed = app.kiln_json("deploy")
    assert deployed["state"] == "paused"
    number = deployed["release"]["number"]
    assert number == serving + 1
    # The new set answers on the preview port only; the public port still serves the old release.
    assert "message=promoted" in get(f"http://127.0.0.1:{app.ports['preview']}/")
    assert old_message in get(app.url())
    st = app.kiln_json("status")
    assert st["waiting"] and st["waiting"][0]["state"] == "paused"
    assert sorted(i["health"] for i in st["instances"]) == ["healthy", "healthy", "idle", "idle"]

    load = Wrk(app.url(), seconds=8)
    time.sleep(1)
    app.kiln("promote")
    result = load.result()
    print(f"\npromote under load: {result.requests} requests, {result.non_2xx} non-2xx, {result.socket_errors} errors")
    assert_no_failures(result, at_least=500)
    assert "message=promoted" in get(app.url())
    st = app.kiln_json("status")  # the old set is kept running, idle, for a fast rollback
    assert sorted((i["release"], i["health"]) for i in st["instances"]) == [
        (serving, "idle"), (serving, "idle"), (number, "healthy"), (number, "healthy")]
    assert app.kiln_json("deploy")["changed"] is False  # the idle set is kept, not "repaired" away
    assert len(app.kiln_json("status")["instances"]) == 4

    load = Wrk(app.url(), seconds=6)
    time.sleep(1)
    started = time.monotonic()
    app.kiln("rollback")
    took = time.monotonic() - started
    result = load.result()
    print(f"\ninstant rollback onto the idle set: {took:.2f}s, {result.requests} requests, {result.non_2xx} non-2xx")
    assert_no_failures(result, at_least=500)
    assert message(app) == old_message
    st = app.kiln_json("status")
    # A rollback is a new release with the old image and config, run by the very same instances.
    assert st["release"]["number"] == number + 1 and app.releases()[0]["note"] == f"rollback to v{serving}"
    assert [i["release"] for i in st["instances"]] == [serving, serving]  # the very instances that served before
    assert not any(s["action"] == "Start" for s in steps(app))  # nothing was started: only reweighted


def test_canary_of_a_healthy_release(bg_app: App, engine: docker.DockerClient) -> None:
    app = bg_app
    before = app.serving()["number"]
    app.set_rollout(strategy="canary", steps=[{"weight": 20, "pause": "3s"}, {"weight": 50, "pause": "3s"}])
    app.set_message("canary")
    result, stderr = under_load(app, "deploy", seconds=14)
    assert_no_failures(result)
    shares = [int(m) for m in re.findall(r"canary analysis passed: (\d+)%", stderr)]
    assert shares == [20, 50], stderr
    assert_serving(app, engine, before + 1)
    assert "message=canary" in get(app.url())


def test_release_that_exits_at_start_is_aborted(bg_app: App, engine: docker.DockerClient) -> None:
    app = bg_app
    before = app.kiln_json("status")["release"]["number"]
    app.set_rollout(strategy="rolling")
    app.set_code("def main():", "def main():\n    raise SystemExit('boom: no DATABASE_URL')")
    try:
        result, stderr = under_load(app, "deploy", seconds=8, ok=False)
    finally:
        app.restore_code()
    assert_no_failures(result, at_least=500)
    assert "aborted" in stderr and "boom: no DATABASE_URL" in stderr and "Traceback" not in stderr
    assert_serving(app, engine, before)
    show = app.kiln_json("rollout", "show")
    assert show["state"] == "aborted" and "exited" in show["reason"]


def test_release_that_never_becomes_healthy_is_aborted(bg_app: App, engine: docker.DockerClient) -> None:
    app = bg_app
    before = app.kiln_json("status")["release"]["number"]

    def short_deadline(data: dict) -> None:
        data["services"]["web"]["healthcheck"]["deadline"] = "4s"
    app.edit_spec(short_deadline)
    app.set_code('self._send(503 if self.server.stopping else 200, "ok\\n")', 'self._send(503, "not yet\\n")')
    try:
        result, stderr = under_load(app, "deploy", seconds=10, ok=False)
    finally:
        app.restore_code()
    assert_no_failures(result, at_least=500)
    assert "did not pass its healthcheck (HTTP GET /health on port 8000) within 4s" in stderr
    assert_serving(app, engine, before)


def test_failing_before_traffic_hook_aborts_before_any_traffic(bg_app: App, engine: docker.DockerClient) -> None:
    app = bg_app
    before = app.kiln_json("status")["release"]["number"]
    app.set_rollout(strategy="rolling", before_traffic=["python3", "-c", "import sys; print('migration failed'); sys.exit(3)"])
    app.set_message("hooked")
    proc = app.kiln("deploy", check=False)
    assert proc.returncode == 1
    assert "before_traffic hook" in proc.stderr and "exited with code 3" in proc.stderr and "migration failed" in proc.stderr
    assert not any(s["action"] == "Start" for s in steps(app))  # no instance of the new release ever started
    assert_serving(app, engine, before)

    app.set_rollout(strategy="rolling", before_traffic=["python3", "-c", "print('migrated')"],
                    after_traffic=["python3", "-c", "print('warmed')"])
    retried = app.kiln("deploy")
    hooks = [(s["target"], s["state"]) for s in steps(app) if s["action"] == "Phase" and "traffic" in s["target"]]
    assert ("before_traffic", "done") in hooks and ("after_traffic", "done") in hooks
    # Hooks are rollout policy, not release config: the same image and config retry the release
    # whose hook failed rather than record another.
    assert f"Retrying release v{before + 1}" in retried.stderr, retried.stderr
    assert_serving(app, engine, before + 1)
    assert app.releases()[0]["number"] == before + 1


def test_canary_answering_5xx_is_aborted_at_its_first_step(bg_app: App, engine: docker.DockerClient) -> None:
    app = bg_app
    before = app.kiln_json("status")["release"]["number"]
    app.set_rollout(strategy="canary", steps=[{"weight": 10, "pause": "20s"}, {"weight": 50, "pause": "20s"}])
    app.set_code('            self._send(200, f"{GREETING} from', '            self._send(500, f"{GREETING} from')
    try:
        result, stderr = under_load(app, "deploy", seconds=12, ok=False)
    finally:
        app.restore_code()
    show = app.kiln_json("rollout", "show")
    assert show["state"] == "aborted" and "canary analysis failed at 10%" in show["reason"], show
    phases = [s["target"] for s in show["steps"] if s["action"] == "Phase"]
    assert "shift:1" not in phases and "switch" not in phases
    step = [s for s in show["steps"] if s["action"] == "Phase" and s["target"] == "shift:0"]
    began = _at(step[0]["at"])
    ended = max(_at(s["at"]) for s in show["steps"])
    during = result.rps * (ended - began)
    print(f"5xx canary: {result.non_2xx} failed of ~{during:.0f} requests during its step "
          f"({ended - began:.2f}s); 10% of those is {0.1 * during:.0f}")
    assert 0 < result.non_2xx <= 0.1 * during * 1.3 + 5, (result.non_2xx, during)
    assert result.socket_errors == 0
    assert_serving(app, engine, before)


def _at(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.rstrip("Z")).timestamp()
