"""The walking skeleton end to end: deploy, redeploy under load, cached bake, rollback under load,
a bad release, destroy. Each test on its own private copy of examples/hello."""

from __future__ import annotations

import subprocess
import time
import urllib.request

import docker
import pytest
from conftest import App, Wrk

pytestmark = pytest.mark.integration


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()


def under_load(app: App, command: str, seconds: int, at_least: int) -> None:
    """Run `kiln COMMAND` while wrk sends keep-alive load through the router; no request may fail."""
    load = Wrk(app.url(), seconds=seconds)
    time.sleep(1.5)
    app.kiln(command)
    result = load.result()
    print(f"\n{command} under load: {result.requests} requests, {result.rps:.0f}/s, "
          f"{result.non_2xx} non-2xx, {result.socket_errors} socket errors")
    assert result.requests >= at_least, result.text
    assert result.non_2xx == 0, result.text
    assert result.socket_errors == 0, result.text


def test_first_deploy_serves(app: App) -> None:
    app.kiln("deploy")
    st = app.kiln_json("status")
    assert st["app"] == app.name and st["env"] == "production"
    assert st["url"] == app.url()
    assert st["release"]["number"] == 1 and st["release"]["image"].startswith("sha256:")  # a fresh ledger
    assert [i["health"] for i in st["instances"]] == ["healthy", "healthy"]
    assert {i["release"] for i in st["instances"]} == {1}
    assert [(r["number"], r["image"]) for r in app.releases()] == [(1, st["release"]["image"])]
    assert "from v1" in get(app.url())


def test_redeploy_under_load_fails_no_request(deployed: App) -> None:
    app = deployed
    first = app.serving()
    app.set_message("second release")
    under_load(app, "deploy", seconds=10, at_least=2000)

    releases = app.releases()
    assert [r["number"] for r in releases] == [first["number"] + 1, first["number"]]
    assert releases[1]["image"] == first["image"] and releases[0]["image"] != first["image"]
    st = app.kiln_json("status")
    assert st["release"] == {**st["release"], "number": releases[0]["number"], "image": releases[0]["image"]}
    assert {i["release"] for i in st["instances"]} == {releases[0]["number"]} and len(st["instances"]) == 2
    assert "second release" in get(app.url())


def test_second_bake_and_deploy_do_nothing(deployed: App) -> None:
    app = deployed
    before = app.releases()
    baked = app.kiln_json("bake")
    assert baked["built"] is False
    assert baked["image"] == app.serving()["image"]
    deployed_again = app.kiln_json("deploy")
    assert deployed_again["changed"] is False and deployed_again["release"]["number"] == before[0]["number"]
    assert app.releases() == before


def test_rollback_under_load_restores_previous_digest(deployed: App) -> None:
    app = deployed
    app.set_message("second release")
    app.kiln("deploy")
    second, first = app.releases()
    assert second["image"] != first["image"]
    under_load(app, "rollback", seconds=8, at_least=1000)
    st = app.kiln_json("status")
    assert st["release"]["image"] == first["image"]
    assert st["release"]["number"] == second["number"] + 1  # a rollback is a new release
    newest = app.releases()[0]
    assert (newest["number"], newest["note"]) == (second["number"] + 1, f"rollback to v{first['number']}")
    assert "second release" not in get(app.url())


def test_bad_release_is_aborted_and_old_keeps_serving(deployed: App) -> None:
    app = deployed
    before = app.kiln_json("status")
    app.set_code("def main():", "def main():\n    raise SystemExit('boom: no DATABASE_URL')")
    try:
        proc = app.kiln("deploy", check=False)
    finally:
        app.restore_code()
    assert proc.returncode == 1
    assert "aborted" in proc.stderr and "boom: no DATABASE_URL" in proc.stderr
    assert "Traceback" not in proc.stderr
    after = app.kiln_json("status")
    assert after["release"] == before["release"]
    assert [i["id"] for i in after["instances"]] == [i["id"] for i in before["instances"]]
    assert all(i["health"] == "healthy" for i in after["instances"])
    rollout = app.kiln_json("rollout", "show")
    assert rollout["state"] == "aborted" and "exited" in rollout["reason"]
    assert [(r["number"], r["state"]) for r in app.releases()] == [
        (before["release"]["number"] + 1, "aborted"), (before["release"]["number"], "serving")]
    get(app.url())


def test_instances_are_hardened(deployed: App, engine: docker.DockerClient) -> None:
    app = deployed
    instances = engine.containers.list(filters={"label": [f"kiln.app={app.name}", "kiln.role=instance"]})
    assert len(instances) == 2
    for c in instances:
        host = c.attrs["HostConfig"]
        assert host["ReadonlyRootfs"] is True
        assert "no-new-privileges:true" in host["SecurityOpt"]
        assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
        assert set(host["Tmpfs"]) == {"/tmp"}
        assert not host["PortBindings"] and not host["Binds"]
        assert host["Init"] is True
        assert c.attrs["Config"]["User"] == "65534"
        exit_code, _ = c.exec_run(["sh", "-c", "touch /app/x"])
        assert exit_code != 0  # the root filesystem is read-only
    # The router runs on the host's network (no docker-proxy), hardened, listening on loopback only.
    router = engine.containers.get(f"kiln-{app.name}-production-router")
    host = router.attrs["HostConfig"]
    assert host["NetworkMode"] == "host" and not host["PortBindings"]
    assert host["ReadonlyRootfs"] is True and host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    port = app.ports["production"]
    listening = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    assert [line.split()[3] for line in listening.splitlines()] == [f"127.0.0.1:{port}"]


def test_taken_port_is_reported_and_changes_nothing(deployed: App, engine: docker.DockerClient) -> None:
    import socket

    app = deployed  # production runs; staging's port is taken
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", app.ports["staging"]))
        squatter.listen()
        proc = app.kiln("deploy", "--env", "staging", check=False)
    assert proc.returncode == 1
    assert f"port {app.ports['staging']} on 127.0.0.1 is already in use" in proc.stderr
    assert not engine.containers.list(all=True, filters={"label": [f"kiln.app={app.name}", "kiln.env=staging"]})
    assert app.releases("staging") == []


def test_destroy_leaves_no_container(deployed: App, engine: docker.DockerClient) -> None:
    app = deployed
    app.set_message("second release")
    app.kiln("deploy")
    history = app.releases()
    assert len(history) == 2
    app.kiln("destroy", "--env", "production")
    selector = [f"kiln.app={app.name}", "kiln.env=production"]
    assert engine.containers.list(all=True, filters={"label": selector}) == []
    assert engine.networks.list(names=[f"kiln-{app.name}-production"]) == []
    after = app.releases()  # the history stays
    assert [r["number"] for r in after] == [r["number"] for r in history]
    assert [r["state"] for r in after] == ["serving", "served"], after
