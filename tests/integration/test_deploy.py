"""The walking skeleton end to end, in order, on one private copy of examples/hello:
deploy, redeploy under load, cached bake, rollback under load, a bad release, destroy."""

from __future__ import annotations

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
    assert st["release"]["number"] == 1 and st["release"]["image"].startswith("sha256:")
    assert [i["health"] for i in st["instances"]] == ["healthy", "healthy"]
    assert {i["release"] for i in st["instances"]} == {1}
    assert "from v1" in get(app.url())


def test_redeploy_under_load_fails_no_request(app: App) -> None:
    app.set_message("second release")
    under_load(app, "deploy", seconds=10, at_least=2000)

    releases = app.kiln_json("releases")
    assert [r["number"] for r in releases] == [2, 1]
    assert releases[0]["image"] != releases[1]["image"]
    st = app.kiln_json("status")
    assert st["release"] == {**st["release"], "number": 2, "image": releases[0]["image"]}
    assert {i["release"] for i in st["instances"]} == {2} and len(st["instances"]) == 2
    assert "second release" in get(app.url())


def test_second_bake_and_deploy_do_nothing(app: App) -> None:
    baked = app.kiln_json("bake")
    assert baked["built"] is False
    assert baked["image"] == app.kiln_json("status")["release"]["image"]
    deployed = app.kiln_json("deploy")
    assert deployed["changed"] is False and deployed["release"]["number"] == 2
    assert len(app.kiln_json("releases")) == 2


def test_rollback_under_load_restores_previous_digest(app: App) -> None:
    v1 = app.kiln_json("releases")[-1]
    under_load(app, "rollback", seconds=8, at_least=1000)
    st = app.kiln_json("status")
    assert st["release"]["image"] == v1["image"]
    assert st["release"]["number"] == 3
    assert app.kiln_json("releases")[0]["note"] == "rollback to v1"
    assert "second release" not in get(app.url())


def test_bad_release_is_aborted_and_old_keeps_serving(app: App) -> None:
    before = app.kiln_json("status")
    path = app.dir / "app.py"
    good = path.read_text()
    path.write_text(good.replace("def main():", "def main():\n    raise SystemExit('boom: no DATABASE_URL')", 1))
    try:
        proc = app.kiln("deploy", check=False)
    finally:
        path.write_text(good)
    assert proc.returncode == 1
    assert "aborted" in proc.stderr and "boom: no DATABASE_URL" in proc.stderr
    assert "Traceback" not in proc.stderr
    after = app.kiln_json("status")
    assert after["release"] == before["release"]
    assert [i["id"] for i in after["instances"]] == [i["id"] for i in before["instances"]]
    assert all(i["health"] == "healthy" for i in after["instances"])
    rollout = app.kiln_json("rollout", "show")
    assert rollout["state"] == "aborted" and "exited" in rollout["reason"]
    get(app.url())


def test_instances_are_hardened(app: App, engine: docker.DockerClient) -> None:
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
    router = engine.containers.get(f"kiln-{app.name}-production-router")
    bindings = router.attrs["HostConfig"]["PortBindings"]
    assert bindings == {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(app.ports["production"])}]}


def test_taken_port_is_reported_and_changes_nothing(app: App, engine: docker.DockerClient) -> None:
    import socket

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", app.ports["staging"]))
        squatter.listen()
        proc = app.kiln("deploy", "--env", "staging", check=False)
    assert proc.returncode == 1
    assert f"port {app.ports['staging']} on 127.0.0.1 is already in use" in proc.stderr
    assert not engine.containers.list(all=True, filters={"label": [f"kiln.app={app.name}", "kiln.env=staging"]})
    assert app.kiln_json("releases", "--env", "staging") == []


def test_destroy_leaves_no_container(app: App, engine: docker.DockerClient) -> None:
    app.kiln("destroy", "--env", "production")
    selector = [f"kiln.app={app.name}", "kiln.env=production"]
    assert engine.containers.list(all=True, filters={"label": selector}) == []
    assert engine.networks.list(names=[f"kiln-{app.name}-production"]) == []
    releases = app.kiln_json("releases")  # the history stays
    assert [(r["number"], r["state"]) for r in releases] == [(4, "aborted"), (3, "serving"), (2, "served"), (1, "served")]
