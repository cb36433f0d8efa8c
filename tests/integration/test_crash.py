"""kiln killed with SIGKILL in the middle of rollouts, and two deploys at once.

wrk sends load for the whole crash sequence: no request may fail while kiln dies at three
distinct points and the next `kiln deploy` settles what it left."""

from __future__ import annotations

import signal
import time

import docker
import pytest
from conftest import App, Wrk

pytestmark = pytest.mark.integration


def containers(engine: docker.DockerClient, app: App) -> list:
    return engine.containers.list(all=True, filters={"label": [f"kiln.app={app.name}", "kiln.env=production"]})


def assert_converged(app: App, engine: docker.DockerClient, message: str, number: int) -> None:
    """Release `number` serves (the one the interrupted deploy recorded: settling completes it and
    the next deploy, finding the same image and config in service, records no other)."""
    st = app.kiln_json("status")
    assert st["release"]["number"] == number, st
    assert app.releases()[0]["number"] == number  # no release recorded after it
    assert [(i["release"], i["health"], i["in_router"]) for i in st["instances"]] == [(number, "healthy", True)] * 2, st
    assert not st["waiting"], st
    # No orphans: the router plus exactly the two instances of the serving release (or of a
    # release with the same image and config), and every router entry has its container.
    live = containers(engine, app)
    assert sorted(c.labels["kiln.role"] for c in live) == ["instance", "instance", "router"]
    assert all(c.status == "running" for c in live)
    assert app.kiln_json("lock", "status") is None
    assert f"message={message}" in _get(app.url())


def _get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()


def kill_when(app: App, line: str) -> None:
    """Start `kiln deploy` and SIGKILL it from outside as soon as it prints `line`."""
    proc = app.popen("deploy")
    assert proc.stderr is not None
    for text in proc.stderr:
        if line in text:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"kiln ended on its own ({proc.returncode}) before `{line}`"


def test_kill_9_at_several_points_then_deploy_converges(deployed: App, engine: docker.DockerClient) -> None:
    app = deployed
    number = app.serving()["number"]
    load = Wrk(app.url(), seconds=45)
    time.sleep(1)
    runs = []

    # 1. After the first new instance started (killed from outside).
    app.set_message("after-start")
    kill_when(app, "started kiln-")
    runs.append(app.kiln("deploy"))
    number += 1
    assert_converged(app, engine, "after-start", number)

    # 2. After a new instance was added to the router (killed from outside).
    app.set_message("after-route")
    kill_when(app, "receives traffic")
    runs.append(app.kiln("deploy"))
    number += 1
    assert_converged(app, engine, "after-route", number)

    # 3. While an old instance drains: kiln kills itself right after HAProxy put it in drain.
    app.set_message("while-draining")
    proc = app.popen("deploy", extra_env={"KILN_FAULT": "draining"})
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    servers = {i["id"]: i["health"] for i in app.kiln_json("status")["instances"]}
    assert "drain" in servers.values(), servers  # kiln really died mid-drain
    runs.append(app.kiln("deploy"))
    number += 1
    assert_converged(app, engine, "while-draining", number)

    result = load.result()
    print(f"\nthree kill -9 and recoveries under load: {result.requests} requests, {result.rps:.0f}/s, "
          f"{result.non_2xx} non-2xx, {result.socket_errors} socket errors")
    assert result.requests >= 5000, result.text
    assert result.non_2xx == 0 and result.socket_errors == 0, result.text
    for run in runs:
        assert "was interrupted" in run.stderr, run.stderr
    states = [r["state"] for r in app.kiln_json("rollout", "list")]
    assert "running" not in states and "paused" not in states, states


def test_kiln_rollout_resume_settles_without_a_new_deploy(deployed: App, engine: docker.DockerClient) -> None:
    app = deployed
    number = app.serving()["number"]
    app.set_message("resumed")
    proc = app.popen("deploy", extra_env={"KILN_FAULT": "routed"})
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert app.kiln_json("rollout", "list")[0]["state"] == "running"
    assert app.releases()[0]["number"] == number + 1  # recorded before kiln died
    settled = app.kiln_json("rollout", "resume")
    assert [r["state"] for r in settled] == ["succeeded"]  # past its first route, a rolling rollout completes
    assert_converged(app, engine, "resumed", number + 1)


def test_two_concurrent_deploys_one_proceeds_the_other_names_the_holder(deployed: App, engine: docker.DockerClient) -> None:
    app = deployed
    number = app.serving()["number"]
    app.set_message("concurrent")
    first, second = app.popen("deploy"), app.popen("deploy")
    out = [p.communicate(timeout=180) for p in (first, second)]
    codes = sorted([first.returncode, second.returncode])
    assert codes == [0, 1], (codes, out)
    loser = out[0][1] if first.returncode else out[1][1]
    assert "is locked by" in loser and "pid" in loser and "(deploy)" in loser, loser
    assert "Traceback" not in loser
    assert_converged(app, engine, "concurrent", number + 1)  # the loser recorded nothing
