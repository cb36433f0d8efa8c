"""Issue 15 item 11 on a real dockerd and HAProxy: app X with environment `eu-prod` serves; app
`X-eu` with environment `prod` (the same `kiln-X-eu-prod` router and network names) can neither
deploy over it nor destroy it, and the first keeps serving throughout."""

from __future__ import annotations

import urllib.request

import docker
from conftest import App, Wrk, free_port, make_app


def _rename(app: App, name: str, env: str, port: int) -> None:
    def change(data: dict) -> None:
        data["app"] = name
        envs = data["environments"]
        envs.insert(0, env, envs.pop("production"))
        envs[env]["port"] = port
    app.edit_spec(change)
    app.name = name


def test_an_app_whose_names_run_into_anothers_cannot_take_or_remove_its_router(
        app: App, engine: docker.DockerClient, tmp_path_factory) -> None:
    first = app
    _rename(first, first.name, "eu-prod", first.ports["production"])
    first.kiln("deploy", "-e", "eu-prod")
    url = f"http://127.0.0.1:{first.ports['production']}/"
    second = make_app(tmp_path_factory.mktemp("clash"))
    port = free_port()
    _rename(second, f"{first.name}-eu", "prod", port)
    load = Wrk(url, seconds=12)
    try:
        refused = second.kiln("deploy", "-e", "prod", check=False)
        destroyed = second.kiln("destroy", "-e", "prod", check=False)
    finally:
        result = load.result()
        for c in engine.containers.list(all=True, filters={"label": f"kiln.app={second.name}"}):
            c.remove(force=True)
    for proc in (refused, destroyed):
        assert proc.returncode == 2, proc.stderr
        assert f"belongs to kiln environment {first.name}/eu-prod, not {second.name}/prod" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    router = engine.containers.get(f"kiln-{first.name}-eu-prod-router")
    assert router.status == "running" and router.labels["kiln.env"] == "eu-prod"
    assert engine.networks.get(f"kiln-{first.name}-eu-prod").attrs["Labels"]["kiln.app"] == first.name
    assert second.kiln_json("releases", "-e", "prod") == []  # nothing was recorded for the second
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.status == 200
    assert result.non_2xx == 0 and result.socket_errors == 0 and result.requests > 1000, result.text
