"""usecases/observe.py, destroy.py, drift.py, history.py, locks.py and ci_runs.py on the fakes."""

from __future__ import annotations

import os
import re
import socket
from dataclasses import replace
from datetime import datetime, timedelta
from types import SimpleNamespace

import pytest

from kiln import views
from kiln.errors import RolloutError, UsageError
from kiln.ledger import kinds
from kiln.ledger.ci_store import CiStore
from kiln.ledger.rollouts import Step
from kiln.rollout.lock import lease_name
from kiln.usecases import catalog, ci_runs, history, locks, observe
from kiln.usecases import drift as drift_uc
from kiln.usecases import environments as envs
from kiln.usecases.deploy import deploy
from kiln.usecases.destroy import destroy
from unit.world import World


def names(w: World, service: str, env: str = "production") -> list[str]:
    return sorted(w.instances(env, service))


# --- status -------------------------------------------------------------------------------------


def test_status_shows_each_instance_with_its_health_and_weight_the_router_and_the_agent(w):
    release = deploy(w.ctx, w.load(), "production").release
    web, [worker] = names(w, "web"), names(w, "worker")
    w.engine.kill(web[0])
    w.engine.unhealthy.add(web[1])
    st = observe.status(w.ctx, w.cfg())

    assert (st.app, st.env, st.url, st.preview_url) == (
        "shop", "production", "http://127.0.0.1:18080", "http://127.0.0.1:19080")
    assert st.release == views.ServedRelease(number=1, image=release.image, commit=None, created_at=release.created_at)
    assert st.to_json()["release"]["created_at"] == release.created_at.isoformat() + "Z"  # its JSON form
    assert st.router == views.RouterState(state="running", name="kiln-shop-production-router")
    assert [(i.id, i.service, i.release, i.health, i.in_router, i.weight) for i in st.instances] == \
        sorted([(web[0], "web", 1, "exited (137)", True, 100), (web[1], "web", 1, "down", True, 100),
                (worker, "worker", 1, "running", False, None)])
    assert {i.container for i in st.instances} == {"id-kiln-shop"}  # the fake's ids, cut to 12
    assert st.waiting == [] and st.relaxations == {}
    default = {"memory": 536870912, "cpus": 1.0, "pids": 512}
    assert st.to_json()["limits"] == {"web": default, "worker": default}
    assert st.agent == views.AgentState(leader=None, healing="active", halted=None)


def test_status_shows_the_limits_of_the_release_in_service(w):
    w.edit_spec("    replicas: 1\n", "    replicas: 1\n    resources: {memory: 128M, pids: 64}\n")  # the worker
    w.edit_spec("      web: {replicas: 1}\n", "      web: {replicas: 1, resources: {cpus: 0.25}}\n")
    deploy(w.ctx, w.load(), "staging")
    st = observe.status(w.ctx, w.cfg("staging"))
    assert st.to_json()["limits"] == {"web": {"memory": 536870912, "cpus": 0.25, "pids": 512},
                            "worker": {"memory": 134217728, "cpus": 1.0, "pids": 64}}


def test_kiln_status_prints_each_service_limits(w, monkeypatch):
    import os

    from kiln import cli
    from unit.cli_inproc import run_kiln

    w.edit_spec("    replicas: 1\n", "    replicas: 1\n    resources: {memory: 1536M, cpus: 0.5, pids: 64}\n")
    deploy(w.ctx, w.load(), "production")
    monkeypatch.setattr(cli, "_ctx", lambda: w.ctx)
    done = run_kiln(("status", "-e", "production"), cwd=w.root, env=dict(os.environ, COLUMNS="200"))
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("limits of ")]
    assert lines == ["limits of web: memory 512M, cpus 1, pids 512", "limits of worker: memory 1536M, cpus 0.5, pids 64"]


def test_status_of_a_paused_blue_green_release_shows_the_idle_set_and_the_waiting_rollout(w):
    w.edit_spec("      strategy: rolling\n", "      strategy: blue-green\n      promote: manual\n")
    w.edit_spec("    replicas: 1\n", "    replicas: 1\n    read_only: false\n")  # the worker: a relaxation
    deploy(w.ctx, w.load(), "production")
    w.change_code("print(2)\n")
    deploy(w.ctx, w.load(), "production")
    st = observe.status(w.ctx, w.cfg())
    [rollout] = w.ctx.ledger.rollouts.unfinished("shop", "production")
    assert st.waiting == [views.Waiting(rollout=rollout.id, release=2, state="paused", phase="promotion")]
    assert st.release is not None and st.release.number == 1
    assert sorted((i.release, i.health, i.weight) for i in st.instances if i.service == "web") == [
        (1, "healthy", 100), (1, "healthy", 100), (2, "idle", 0), (2, "idle", 0)]
    assert st.relaxations == {"worker": ["read_only: false"]}


def test_status_with_the_router_gone_and_an_agent_leading_and_halted(w):
    deploy(w.ctx, w.load(), "production")
    w.engine.remove("kiln-shop-production-router")
    w.ctx.ledger.locks.acquire("shop", lease_name("production"), user="ann", host="h", pid=1, reason="agent lease",
                               lease=15, holder_alive=lambda lock: True)
    w.ctx.ledger.events.record("shop", "production", kinds.AGENT_HALTED, "3 instance failures within 60s")
    st = observe.status(w.ctx, w.cfg())
    assert st.router.state == "absent" and st.router.name == "kiln-shop-production-router"
    assert {i.in_router for i in st.instances} == {False}
    assert {i.health for i in st.instances} == {"running"}
    assert st.agent.leader == "ann@h pid 1" and st.agent.healing == "halted"
    assert st.agent.halted is not None and st.agent.halted.why == "3 instance failures within 60s"
    w.ctx.ledger.events.record("shop", "production", kinds.AGENT_RESUMED, "back within the limit")
    assert observe.agent_state(w.ctx, "shop", "production").healing == "active"


# --- destroy ------------------------------------------------------------------------------------


def test_destroy_removes_instances_router_and_network_and_keeps_the_ledger(w):
    deploy(w.ctx, w.load(), "production")
    deploy(w.ctx, w.load(), "staging")
    assert destroy(w.ctx, w.cfg()) == 4  # 3 instances and the router, as the event says
    assert w.containers() == {} and w.router().facts() is None
    assert "kiln-shop-production" not in w.engine.networks
    assert w.events()[-1] == (kinds.DESTROYED, "removed 4 containers and the network")
    assert len(w.ctx.ledger.releases.of("shop", "production")) == 1  # the history stays
    assert len(w.instances("staging")) == 2  # another environment is untouched
    # Destroying what is gone removes nothing and says so.
    assert destroy(w.ctx, w.cfg()) == 0
    assert w.events()[-1] == (kinds.DESTROYED, "removed 0 containers and the network")


def test_destroy_forgets_an_environment_kiln_made(w):
    deploy(w.ctx, w.load(), "production")
    envs.recreate(w.ctx, w.load(), 1, "production", "copy", port=28080)
    assert destroy(w.ctx, catalog.config_of_made(w.ctx, "shop", "copy")) == 4  # 3 instances and the router
    assert w.ctx.ledger.environments.of("shop") == [] and w.containers("copy") == {}


# --- drift --------------------------------------------------------------------------------------


def test_drift_reports_execs_written_files_and_env_and_label_changes(w):
    w.edit_spec("    replicas: 1\n", "    replicas: 1\n    read_only: false\n")  # the worker may write
    deploy(w.ctx, w.load(), "production")
    web, [worker] = names(w, "web"), names(w, "worker")
    assert drift_uc.report(w.ctx, w.cfg()) == []

    w.engine.exec(web[0], "sh -c 'cat /etc/passwd'")
    w.engine.written[worker] = ["C /etc", "A /etc/x", "A /tmp/cache", "A /usr/sbin/docker-init"]
    w.engine.written[web[1]] = ["A /etc/y"]  # read-only: kiln does not even ask
    spec = w.engine.specs[web[1]]
    w.engine.specs[web[1]] = replace(spec, environment={**spec.environment, "DEBUG": "1", "KILN_ENV": "staging"},
                                     labels={**spec.labels, "kiln.config": "0" * 64})
    found = drift_uc.report(w.ctx, w.cfg())

    assert [(f.instance, f.service, f.release) for f in found] == sorted(
        [(web[0], "web", 1), (web[1], "web", 1), (worker, "worker", 1)])
    reasons = {f.instance: f.reasons for f in found}
    [exec_reason] = reasons[web[0]]
    assert re.fullmatch(r"docker exec: sh -c 'cat /etc/passwd' at \d\d:\d\d:\d\d UTC", exec_reason)
    digest = w.cfg().digest()
    assert reasons[web[1]] == [f"label kiln.config is {'0' * 64!r}, its release sets {digest!r}",
                               "environment differs from its release: DEBUG, KILN_ENV"]
    assert reasons[worker] == ["filesystem changed: A /etc/x"]


def test_drift_adds_the_taints_the_agent_recorded_for_running_instances_only(w):
    deploy(w.ctx, w.load(), "production")
    web = names(w, "web")
    w.ctx.ledger.events.record("shop", "production", kinds.INSTANCE_TAINTED, f"{web[0]}: docker exec: sh at 10:00:00 UTC")
    w.ctx.ledger.events.record("shop", "production", kinds.INSTANCE_TAINTED, "kiln-shop-production-web-v1-gone00: x")
    assert drift_uc.report(w.ctx, w.cfg()) == [
        views.Taint(instance=web[0], service="web", release=1, reasons=["docker exec: sh at 10:00:00 UTC"])]


# --- history ------------------------------------------------------------------------------------


def test_history_of_releases_rollouts_and_steps(w):
    deploy(w.ctx, w.load(), "production")
    w.change_code("print(2)\n")
    w.engine.crash_on_start.add(2)
    with pytest.raises(RolloutError):
        deploy(w.ctx, w.load(), "production")
    assert [(r.number, r.state) for r in history.releases(w.ctx, "shop", "production")] == [
        (2, "aborted"), (1, "serving")]
    assert [(r.id, r.state) for r in history.rollouts(w.ctx, "shop", "production")] == [(2, "aborted"), (1, "succeeded")]
    chosen = history.rollout(w.ctx, "shop", "production", 1)
    steps = chosen.steps
    assert chosen.id == 1
    assert [(s.action, s.state) for s in steps[:2]] == [("Phase", "started"), ("Start", "started")]
    assert steps[0].seconds is None and steps[1].seconds is None
    assert {type(s.seconds) for s in steps if s.state == "done"} == {float}
    assert history.rollout(w.ctx, "shop", "production").id == 2  # the latest
    with pytest.raises(UsageError) as err:
        history.rollout(w.ctx, "shop", "production", 9)
    assert err.value.message == "no rollout 9 in shop/production."
    with pytest.raises(UsageError, match=r"^no rollout in shop/staging\.$"):
        history.rollout(w.ctx, "shop", "staging")


def test_with_durations_pairs_each_finished_step_with_its_start():
    t0 = datetime(2026, 1, 1)
    steps = [Step("Start", "a", "started", "", t0), Step("Start", "b", "started", "", t0 + timedelta(seconds=1)),
             Step("Start", "a", "done", "", t0 + timedelta(seconds=2.5)),
             Step("Start", "b", "failed", "", t0 + timedelta(seconds=4))]
    assert [s.seconds for s in history.with_durations(steps)] == [None, None, 2.5, 3.0]


def test_events_follow_yields_what_came_since(w, monkeypatch):
    deploy(w.ctx, w.load(), "production")
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        w.ctx.ledger.events.record("shop", "production", kinds.DESTROYED, f"tick {len(waits)}")

    monkeypatch.setattr(history, "time", SimpleNamespace(sleep=sleep))
    batches = history.events(w.ctx, "shop", "production", limit=1, follow=True)
    assert [e.kind for e in next(batches)] == [kinds.ROLLOUT_SUCCEEDED]
    assert [e.message for e in next(batches)] == ["tick 1"]
    assert [e.message for e in next(batches)] == ["tick 2"]
    assert waits == [history.FOLLOW_EVERY, history.FOLLOW_EVERY]
    assert list(history.events(w.ctx, "shop", None, limit=50)) == [
        [views.Event.of(e) for e in w.ctx.ledger.events.of("shop", None, limit=50)]]


# --- locks --------------------------------------------------------------------------------------


def test_lock_status_and_forced_release(w):
    assert locks.status(w.ctx, "shop", "production").locked is False
    assert locks.force_release(w.ctx, "shop", "production", force=False).locked is False
    w.ctx.ledger.locks.acquire("shop", "production", user="ann", host=socket.gethostname(), pid=os.getpid(),
                               reason="deploy", lease=30, holder_alive=lambda lock: True)
    state = locks.status(w.ctx, "shop", "production")
    assert (state.user, state.reason, state.expired) == ("ann", "deploy", False)
    assert 29 < state.seconds_left <= 30
    with pytest.raises(UsageError) as err:
        locks.force_release(w.ctx, "shop", "production", force=False)
    assert err.value.message == (f"shop/production is locked by ann@{socket.gethostname()} pid {os.getpid()}; not "
                                 "releasing it without --force: releasing the lock of a holder that still runs "
                                 "lets two rollouts run at once.")
    assert locks.status(w.ctx, "shop", "production").locked
    gone = locks.force_release(w.ctx, "shop", "production", force=True)
    assert gone.user == "ann" and not locks.status(w.ctx, "shop", "production").locked
    # Released, the environment can change again.
    assert deploy(w.ctx, w.load(), "production").release.number == 1


# --- ci runs ------------------------------------------------------------------------------------


def test_ci_runs_show_logs_follow_approve_and_cancel(w, monkeypatch):
    store = CiStore(w.ctx.ledger)
    run, _ = store.enqueue(repo="/r", spec="kiln.yaml", ref="refs/heads/main", queue="q", commit="a" * 40,
                           trigger="cli", app="shop")
    assert [r.id for r in ci_runs.runs(w.ctx)] == [run.id]
    bake, promote = store.add_steps(run.id, [(0, 0, "bake", "bake", "succeeded", ""),
                                             (1, 1, "promote", "promote", "waiting", "")])
    shown = ci_runs.show(w.ctx, run.id)
    assert shown.id == run.id and [s.name for s in shown.steps] == ["bake", "promote"]
    assert shown == views.CiRunDetail(**views.CiRun.of(store.run(run.id)).model_dump(),
                                      steps=[views.CiStep.of(s) for s in store.steps(run.id)])
    with pytest.raises(UsageError, match=r"there is no run 99\."):
        ci_runs.show(w.ctx, 99)
    store.log(run.id, bake.id, ["baked"])

    waits: list[float] = []

    def sleep(seconds: float) -> None:  # while kiln first waits, the run logs a line and ends
        waits.append(seconds)
        if len(waits) == 1:
            store.log(run.id, None, ["done"])
            store.set_state(run.id, "succeeded")
        assert len(waits) < 5, "following a finished run's log should end"

    monkeypatch.setattr(ci_runs, "time", SimpleNamespace(sleep=sleep))
    def plain(batches):
        return [[(line.step, line.line) for line in batch] for batch in batches]

    assert plain(ci_runs.logs(w.ctx, run.id, follow=True)) == [[("0:bake", "baked")], [("-", "done")], []]
    assert waits == [ci_runs.FOLLOW_EVERY] * 2
    assert plain(ci_runs.logs(w.ctx, run.id)) == [[("0:bake", "baked"), ("-", "done")]]

    assert ci_runs.approve(w.ctx, run.id, by="ann").position == promote.position
    assert (store.step(promote.id).state, store.step(promote.id).detail) == ("approved", "approved by ann")
    with pytest.raises(UsageError, match=f"run {run.id} has no step waiting for approval"):
        ci_runs.approve(w.ctx, run.id, by="ann")
    with pytest.raises(UsageError) as ended:
        ci_runs.cancel(w.ctx, run.id)
    assert ended.value.message == f"run {run.id} has already ended (succeeded)."
    queued, _ = store.enqueue(repo="/r", spec="kiln.yaml", ref="refs/heads/dev", queue="q2", commit="b" * 40,
                              trigger="cli", app="shop")
    assert ci_runs.cancel(w.ctx, queued.id).state == "cancelled"
