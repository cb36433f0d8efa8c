"""kiln agent against a real dockerd and HAProxy, under wrk load: self-healing, drift, the
meltdown guard, two agents, and the hardened defaults of a running instance. Each test has its
own freshly deployed app and its own agent, so no test inherits another's failures or spec."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import docker
import pytest
from conftest import TEST_LABEL, App, Wrk

ENV = "production"


class AgentProc:
    """`kiln agent` in the background, its output in a file (a pipe could fill and block it)."""

    def __init__(self, app: App, log: Path) -> None:
        self.log = log
        env = {**os.environ, "KILN_HOME": str(app.home), "KILN_EXTRA_LABELS": TEST_LABEL}
        env.pop("KILN_LEDGER_URL", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "kiln", "agent", "-f", str(app.spec)], env=env,
                                     stdout=log.open("w"), stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)


def wait_for(what: str, check: Callable[[], object], timeout: float = 30.0, every: float = 0.05) -> object:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def instances(engine: docker.DockerClient, app: App, env: str = ENV, running: bool = True) -> list:
    return engine.containers.list(all=not running, filters={"label": [f"kiln.app={app.name}", f"kiln.env={env}",
                                                                       "kiln.role=instance"]})


def router_up(app: App, env: str = ENV) -> set[str]:
    """Servers HAProxy reports UP in the public backend, straight from its admin socket."""
    path = app.home / "routers" / f"{app.name}-{env}" / "admin.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(path))
        sock.sendall(b"show stat\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    rows = [line.split(",") for line in data.decode().splitlines() if line and not line.startswith("#")]
    return {r[1] for r in rows if r[0] == "svc-web" and r[1] not in ("BACKEND", "FRONTEND") and r[17].startswith("UP")}


def events(app: App, env: str = ENV) -> list[dict]:
    out = app.kiln("events", "-e", env, "-n", "500", "--json").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def serving(engine: docker.DockerClient, app: App, count: int, env: str = ENV) -> set[str]:
    """The running instances, once there are `count` and all are UP in the router (else empty)."""
    names = {c.name for c in instances(engine, app, env)}
    return names if len(names) == count and router_up(app, env) == names else set()


@pytest.fixture
def agent(app: App, engine: docker.DockerClient, tmp_path: Path) -> Iterator[AgentProc]:
    """The app deployed to production (staging left to the test) and `kiln agent` leading it."""
    def policy(data: dict) -> None:
        # Failures age out of the meltdown window in 5 s, so the guard's test can see healing resume.
        data["environments"]["production"]["agent"] = {"interval": "1s", "meltdown": {"window": "5s"}}
        data["environments"]["staging"]["agent"] = {"interval": "1s", "drift": "report"}
    app.edit_spec(policy)
    app.kiln("deploy")
    started = AgentProc(app, tmp_path / "agent.log")
    wait_for("the agent's lease", lambda: app.kiln_json("status")["agent"]["leader"])
    yield started
    started.stop()


def test_hardened_defaults_on_a_running_instance(app: App, engine: docker.DockerClient, agent: AgentProc) -> None:
    st = app.kiln_json("status")
    assert st["relaxations"] == {}
    for c in instances(engine, app):
        host, config = c.attrs["HostConfig"], c.attrs["Config"]
        assert host["ReadonlyRootfs"] is True
        assert set(host["Tmpfs"]) == {"/tmp"}  # the declared writable path, nothing else
        assert "no-new-privileges:true" in host["SecurityOpt"]
        assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
        assert host["Privileged"] is False
        assert config["User"] == "65534"  # the spec's non-root user
        assert c.attrs["Mounts"] == []  # no Docker socket, no volume: nothing from the host
        assert not host["PortBindings"]  # only the router listens on a port
        assert host["Init"] is True


def test_killed_instance_is_replaced_within_seconds_without_failed_requests(
        app: App, engine: docker.DockerClient, agent: AgentProc) -> None:
    before = wait_for("two serving instances", lambda: serving(engine, app, 2))
    load = Wrk(app.url(), seconds=8)
    time.sleep(2)
    victim = sorted(before)[0]
    killed = time.time()
    engine.containers.get(victim).kill()
    after = wait_for("a replacement in the router", lambda: serving(engine, app, 2) - before and serving(engine, app, 2))
    seen = time.time() - killed
    result = load.result()
    (new,) = after - before
    # When the router took the replacement in, as the agent recorded it right after HAProxy said UP
    # (this test's own polling, under load on two cores, notices it later).
    routed = next(e for e in events(app) if e["kind"] == "agent.route" and e["message"].startswith(new))
    took = datetime.fromisoformat(routed["at"].rstrip("Z")).replace(tzinfo=UTC).timestamp() - killed
    print(f"\nkilled {victim}: replacement {new} healthy and in the router {took:.2f}s later (seen by the test "
          f"after {seen:.2f}s); {result.requests} requests, {result.non_2xx} non-2xx, {result.socket_errors} socket errors")
    assert victim not in after
    assert result.non_2xx == 0 and result.socket_errors == 0, result.text
    assert took <= 2.0, f"replacement took {took:.2f}s, the target is 2s"
    kinds = [e["kind"] for e in events(app)]
    assert "instance.failed" in kinds and "instance.replaced" in kinds


def test_docker_exec_taints_an_instance_which_is_replaced(app: App, engine: docker.DockerClient, agent: AgentProc) -> None:
    before = wait_for("two serving instances", lambda: serving(engine, app, 2))
    load = Wrk(app.url(), seconds=6)
    time.sleep(1)
    victim = sorted(before)[0]
    engine.containers.get(victim).exec_run(["sh", "-c", "id"])
    after = wait_for("the tainted instance's replacement",
                     lambda: victim not in serving(engine, app, 2) and serving(engine, app, 2))
    result = load.result()
    assert len(after - before) == 1
    assert result.non_2xx == 0 and result.socket_errors == 0, result.text
    tainted = [e for e in events(app) if e["kind"] == "instance.tainted"]
    assert any(e["message"].startswith(victim) and "docker exec: sh -c id" in e["message"] for e in tainted), tainted
    assert app.kiln("drift").returncode == 0  # the replacement is clean


def test_two_agents_make_no_duplicate_replacements(app: App, engine: docker.DockerClient, agent: AgentProc,
                                                    tmp_path: Path) -> None:
    second = AgentProc(app, tmp_path / "second.log")
    try:
        wait_for("the second agent to stand by", lambda: "standing by" in second.output(), timeout=20)
        before = wait_for("two serving instances", lambda: serving(engine, app, 2))
        mark = max(e["id"] for e in events(app))
        engine.containers.get(sorted(before)[0]).kill()
        wait_for("a replacement", lambda: serving(engine, app, 2) - before)
        time.sleep(3)  # time for a duplicate to show, if there were one
        starts = [e for e in events(app) if e["id"] > mark and e["kind"] == "agent.start"]
        assert len(starts) == 1, starts
        assert len(instances(engine, app)) == 2
        # The first agent stops: the second takes over its lease and heals the next failure.
        agent.stop()
        wait_for("the second agent to lead", lambda: "watching" in second.output(), timeout=20)
        before = wait_for("two serving instances", lambda: serving(engine, app, 2))
        engine.containers.get(sorted(before)[0]).kill()
        wait_for("a replacement by the second agent", lambda: serving(engine, app, 2) - before)
    finally:
        second.stop()
    kinds = [e["kind"] for e in events(app) if e["id"] > mark]
    assert kinds.count("agent.start") == 2, kinds  # one replacement per kill, by whichever agent led


def test_a_burst_of_failures_trips_the_meltdown_guard(app: App, engine: docker.DockerClient, agent: AgentProc) -> None:
    before = wait_for("two serving instances", lambda: serving(engine, app, 2))
    mark = max(e["id"] for e in events(app))
    assert "instance.failed" not in [e["kind"] for e in events(app)]  # nothing earlier in the window
    for name in sorted(before):
        engine.containers.get(name).kill()
    wait_for("the meltdown guard", lambda: app.kiln_json("status")["agent"]["healing"] == "halted", timeout=15)
    status = app.kiln("status").stdout
    assert "self-healing halted" in status
    halted_at = time.monotonic()
    new = [e for e in events(app) if e["id"] > mark]
    assert [e["kind"] for e in new].count("instance.failed") == 2, new
    # Once the failures age out of the window, healing resumes on its own.
    wait_for("healing to resume", lambda: serving(engine, app, 2), timeout=30)
    assert time.monotonic() - halted_at >= 2  # it did wait, rather than replace at once
    assert "agent.resumed" in [e["kind"] for e in events(app) if e["id"] > mark]


def test_relaxed_instances_written_files_are_replaced_or_only_reported(
        app: App, engine: docker.DockerClient, agent: AgentProc, tmp_path: Path) -> None:
    def relax(data: dict) -> None:
        data["services"]["web"]["read_only"] = False
    app.edit_spec(relax)
    app.kiln("deploy")
    app.kiln("deploy", "-e", "staging")
    for env in (ENV, "staging"):
        st = app.kiln_json("status", "-e", env)
        assert st["relaxations"] == {"web": ["read_only: false"]}
        assert all(c.attrs["HostConfig"]["ReadonlyRootfs"] is False for c in instances(engine, app, env))
    assert "hardening relaxed for web: read_only: false" in app.kiln("status").stdout
    payload = tmp_path / "evil.txt"
    payload.write_text("not from the image\n")

    # production (drift: replace): a file copied in (no exec) is found by docker diff; replaced.
    before = wait_for("two serving instances", lambda: serving(engine, app, 2))
    victim = sorted(before)[0]
    subprocess.run(["docker", "cp", str(payload), f"{victim}:/app/evil.txt"], check=True)
    wait_for("the replacement of the written instance",
             lambda: victim not in serving(engine, app, 2) and serving(engine, app, 2))
    assert any(e["kind"] == "instance.tainted" and "filesystem changed: A /app/evil.txt" in e["message"]
               for e in events(app))

    # staging (drift: report): written to and exec'd into, reported, and left running.
    staging = wait_for("staging serving", lambda: serving(engine, app, 1, "staging"))
    (name,) = staging
    subprocess.run(["docker", "cp", str(payload), f"{name}:/app/evil.txt"], check=True)
    engine.containers.get(name).exec_run(["true"])
    wait_for("the report", lambda: any(e["kind"] == "instance.tainted" and "docker exec: true" in e["message"]
                                       for e in events(app, "staging")), timeout=15)
    time.sleep(2)  # a pass or two later, still not replaced
    assert {c.name for c in instances(engine, app, "staging")} == {name}
    drift = app.kiln("drift", "-e", "staging", check=False)
    assert drift.returncode == 1
    assert "filesystem changed: A /app/evil.txt" in drift.stdout and "docker exec: true" in drift.stdout


def restart_dockerd(engine: docker.DockerClient) -> None:
    """Stop dockerd (every container stops with it: no live-restore) and start it as it was started."""
    if Path("/run/systemd/system").is_dir() and subprocess.run(["systemctl", "is-active", "-q", "docker"]).returncode == 0:
        subprocess.run(["systemctl", "restart", "docker"], check=True)
    else:
        # The machine's dockerd by its pidfile: `pidof` also finds the test cluster's node dockerds.
        pid = int(Path("/var/run/docker.pid").read_text().strip())
        argv = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
        os.kill(pid, signal.SIGTERM)
        wait_for("dockerd to stop", lambda: not Path(f"/proc/{pid}").exists(), timeout=60, every=0.2)
        with open("/var/log/kiln-dockerd.log", "ab") as log:
            subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)

    def answers() -> bool:
        try:
            return bool(engine.ping())
        except Exception:  # the SDK lets connection errors through as requests' own exceptions
            return False
    wait_for("dockerd to answer", answers, timeout=60, every=0.2)


def test_after_a_dockerd_restart_the_agent_restores_service(app: App, engine: docker.DockerClient,
                                                            agent: AgentProc) -> None:
    before = wait_for("two serving instances", lambda: serving(engine, app, 2))
    mark = max(e["id"] for e in events(app))
    restart_dockerd(engine)
    back = time.monotonic()
    after = wait_for("the agent to restore service", lambda: serving(engine, app, 2), timeout=60, every=0.2)
    took = time.monotonic() - back
    load = Wrk(app.url(), seconds=3)
    result = load.result()
    print(f"\ndockerd restarted: served by new instances {took:.2f}s after the engine answered again; "
          f"then {result.requests} requests, {result.non_2xx} non-2xx, {result.socket_errors} socket errors")
    assert not after & before  # the old instances died with the engine; new ones serve
    assert result.requests > 100 and result.non_2xx == 0 and result.socket_errors == 0, result.text
    new = [e for e in events(app) if e["id"] > mark]
    kinds = [e["kind"] for e in new]
    assert kinds.count("instance.lost") == 2, new  # restored, not counted as failures
    assert "instance.failed" not in kinds and "agent.halted" not in kinds, new
    assert agent.proc.poll() is None  # the agent outlived the engine's restart
