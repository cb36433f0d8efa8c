"""agent/reconcile.py (one pass of Reconciler.run) and agent/loop.py (Agent.run(once=True)) on the
fakes: failed, unhealthy and tainted instances replaced; drift only reported; the meltdown guard
halting and resuming; a rollout a killed kiln left settled; a missing router restarted."""

from __future__ import annotations

import os
import re
import socket
import subprocess
from datetime import timedelta

import pytest

from kiln import faults
from kiln.agent import reconcile
from kiln.agent.loop import Agent
from kiln.agent.reconcile import Reconciler
from kiln.ledger import kinds
from kiln.ledger.db import now
from kiln.spec.models import AgentPolicy
from kiln.usecases.deploy import deploy
from unit.world import Killed, World, kill_at

HOLDER = re.compile(r"\(agent \S+@\S+ pid \d+\)")


def names(w: World, service: str, release: int = 1) -> list[str]:
    return sorted(n for n, r in w.instances("production", service).items() if r == release)


def watching(w: World, **policy: object) -> Reconciler:
    """v1 deployed and an agent's first pass done (it finds nothing): what follows is news to it."""
    deploy(w.ctx, w.load(), "production")
    reconciler = Reconciler(w.ctx, "shop", "production", AgentPolicy.model_validate(policy))
    assert reconciler.run() == ""
    return reconciler


def agent_events(w: World) -> list[tuple[str, str]]:
    """Events since the deploy (the rollout's are left out)."""
    return [(k, m) for k, m in w.events() if not k.startswith("rollout.")]


def replaced(w: World, old: list[str], service: str) -> list[str]:
    """The replacements: instances of `service` that were not in `old`; asserts the count."""
    now_running = names(w, service)
    new = sorted(set(now_running) - set(old))
    assert len(now_running) == len(old)
    return new


# --- failures -----------------------------------------------------------------------------------


def test_a_killed_instance_is_recorded_as_failed_and_replaced(w):
    agent = watching(w)
    web = names(w, "web")
    w.engine.kill(web[0])
    said = agent.run()

    [new] = replaced(w, web, "web")
    assert web[0] not in w.engine.specs and w.router().added.keys() == {web[1], new}
    assert w.serving() == {web[1]: 1, new: 1} and w.weights() == {web[1]: 100, new: 100}
    assert re.fullmatch(rf"replaced {web[0]} with {new} in \d+\.\d\ds", said)
    events = agent_events(w)
    assert events[0] == (kinds.INSTANCE_FAILED, f"{web[0]}: exited")
    assert events[-1][0] == kinds.INSTANCE_REPLACED
    assert HOLDER.search(events[-1][1]) and events[-1][1].startswith(f"replaced {web[0]} with {new} in ")
    # The dead one is retired while its replacement starts (one plan step, in parallel), so only
    # each instance's own actions are ordered.
    assert [k for k, m in events if m.startswith(new + ":")] == [kinds.AGENT_START, kinds.AGENT_AWAIT_HEALTHY,
                                                                  kinds.AGENT_ROUTE]
    assert [k for k, m in events if m.startswith(web[0] + ":")] == [kinds.INSTANCE_FAILED, kinds.AGENT_UNROUTE,
                                                                     kinds.AGENT_REMOVE]
    assert len(events) == 7
    assert agent.run() == ""  # healed: the next pass finds nothing
    assert len(w.rollouts()) == 1  # healing is no rollout


def test_how_an_instance_died_comes_from_the_engine_event(w):
    agent = watching(w)
    [worker] = names(w, "worker")
    w.engine.kill(worker)
    for ev in w.engine.events({"kiln.app": "shop"}):
        agent.note(ev)
    agent.run()
    assert agent_events(w)[0] == (kinds.INSTANCE_FAILED, f"{worker}: exited with code 137")
    assert len(names(w, "worker")) == 1 and names(w, "worker") != [worker]


def test_a_dead_instance_found_by_a_first_pass_is_restored_not_counted(w):
    deploy(w.ctx, w.load(), "production")
    [worker] = names(w, "worker")
    w.engine.kill(worker)  # died while no agent watched
    Reconciler(w.ctx, "shop", "production", AgentPolicy()).run()
    events = agent_events(w)
    assert events[0] == (kinds.INSTANCE_LOST, f"{worker}: exited while the engine or the agent was down; restoring")
    assert [k for k, _ in events].count(kinds.INSTANCE_FAILED) == 0
    assert len(names(w, "worker")) == 1 and names(w, "worker") != [worker]


def test_an_unhealthy_routed_instance_is_replaced_at_once(w):
    agent = watching(w)
    web = names(w, "web")
    w.engine.unhealthy.add(web[1])
    agent.run()
    [new] = replaced(w, web, "web")
    assert agent_events(w)[0] == (kinds.INSTANCE_FAILED,
                                  f"{web[1]}: not serving in the router (down in its health checks)")
    assert web[1] not in w.engine.specs and w.serving() == {web[0]: 1, new: 1}


WORKER_CHECK = ("    command: [python3, /app/app.py, --worker]\n",
                "    command: [python3, /app/app.py, --worker]\n"
                "    healthcheck: {command: [check], interval: 50ms, deadline: 200ms}\n")


def test_an_unhealthy_unrouted_instance_is_replaced_when_it_fails_twice_in_a_row(w):
    w.edit_spec(*WORKER_CHECK)
    agent = watching(w)
    [worker] = names(w, "worker")
    w.engine.unhealthy.add(worker)
    assert agent.run() == ""  # once: a suspect, neither waited for nor replaced
    assert agent.memory.suspects == {worker} and agent_events(w) == [] and names(w, "worker") == [worker]
    agent.run()
    [new] = replaced(w, [worker], "worker")
    assert agent_events(w)[0] == (kinds.INSTANCE_FAILED, f"{worker}: failed its health check twice in a row")
    assert agent_events(w)[-1][0] == kinds.INSTANCE_REPLACED and worker not in w.engine.specs


def test_a_suspect_that_recovers_is_forgiven(w):
    w.edit_spec(*WORKER_CHECK)
    agent = watching(w)
    [worker] = names(w, "worker")
    w.engine.unhealthy.add(worker)
    agent.run()
    w.engine.unhealthy.discard(worker)
    assert agent.run() == "" and agent.memory.suspects == frozenset()
    assert agent_events(w) == [] and names(w, "worker") == [worker]


# --- drift --------------------------------------------------------------------------------------


def test_a_tainted_instance_is_replaced_under_drift_replace(w):
    agent = watching(w, drift="replace")
    web = names(w, "web")
    w.engine.exec(web[0], "sh")
    for ev in w.engine.events({"kiln.app": "shop"}):
        agent.note(ev)
    agent.run()
    [new] = replaced(w, web, "web")
    events = agent_events(w)
    kind, message = events[0]
    assert kind == kinds.INSTANCE_TAINTED and re.fullmatch(rf"{web[0]}: docker exec: sh at \d\d:\d\d:\d\d UTC", message)
    assert events[-1][1].startswith(f"replaced {web[0]} with {new} in ")
    # Replaced first, then retired: the tainted one served until its replacement did.
    order = [(k, m.split(":")[0]) for k, m in events]
    assert order.index((kinds.AGENT_ROUTE, new)) < order.index((kinds.AGENT_UNROUTE, web[0]))
    assert w.serving() == {web[1]: 1, new: 1}


def test_a_tainted_instance_is_only_reported_under_drift_report(w):
    agent = watching(w, drift="report")
    [worker] = names(w, "worker")
    spec = w.engine.specs[worker]
    w.engine.specs[worker] = type(spec)(**{**spec.__dict__, "environment": {**spec.environment, "DEBUG": "1"}})
    assert agent.run() == ""
    assert agent_events(w) == [(kinds.INSTANCE_TAINTED, f"{worker}: environment differs from its release: DEBUG")]
    assert names(w, "worker") == [worker]
    agent.run()  # said once
    assert len(agent_events(w)) == 1


def test_an_instance_whose_limits_were_changed_is_tainted_and_replaced_with_its_release_limits(w):
    from dataclasses import replace

    from kiln.providers.base import Limits

    agent = watching(w, drift="replace")
    [worker] = names(w, "worker")
    # `docker update --memory 4g --pids-limit 0` on the instance, behind kiln's back
    w.engine.specs[worker] = replace(w.engine.specs[worker], limits=Limits(memory=4 * 1024**3, cpus=1.0, pids=0))
    agent.run()
    [new] = replaced(w, [worker], "worker")
    assert agent_events(w)[0] == (kinds.INSTANCE_TAINTED, f"{worker}: memory limit is 4G, its release says 512M; "
                                                          "pids limit is none, its release says 512")
    assert w.engine.details(new).limits == Limits(memory=512 * 1024**2, cpus=1.0, pids=512)


# --- the meltdown guard -------------------------------------------------------------------------


def test_meltdown_halts_healing_until_the_failures_age_out(w, monkeypatch):
    agent = watching(w)  # 3 instances, max_failures 50%: one failure within 60 s is healed, two are not
    web = names(w, "web")
    [worker] = names(w, "worker")
    w.engine.kill(web[0])
    w.engine.kill(worker)
    assert agent.run() == ""

    events = agent_events(w)
    assert events == [(kinds.INSTANCE_FAILED, f"{web[0]}: exited"), (kinds.INSTANCE_FAILED, f"{worker}: exited"),
                      (kinds.AGENT_HALTED, "2 instance failures within 60s exceed the limit of 1: self-healing "
                                           "stops until they age out")]
    assert names(w, "web") == [web[1]] and names(w, "worker") == [] and web[0] in w.engine.specs
    assert agent.run() == "" and agent_events(w) == events  # still halted, said once

    later = now() + timedelta(seconds=61)
    monkeypatch.setattr(reconcile, "now", lambda: later)
    said = agent.run()
    assert said.startswith("replaced ")
    after = agent_events(w)[len(events):]
    assert after[0] == (kinds.AGENT_RESUMED, "failures within 60s are back within the limit of 1; self-healing resumes")
    assert after[-1][0] == kinds.INSTANCE_REPLACED
    assert len(names(w, "web")) == 2 and len(names(w, "worker")) == 1
    assert web[0] not in w.engine.specs and worker not in w.engine.specs


def test_a_halted_agent_restarted_remembers_it_was_halted(w):
    agent = watching(w, meltdown={"max_failures": 1})
    for name in names(w, "web"):
        w.engine.kill(name)
    agent.run()
    assert agent_events(w)[-1][0] == kinds.AGENT_HALTED
    fresh = Reconciler(w.ctx, "shop", "production", AgentPolicy(meltdown={"max_failures": 1}))
    assert fresh.run() == ""
    assert [k for k, _ in agent_events(w)].count(kinds.AGENT_HALTED) == 1 and names(w, "web") == []


# --- a rollout a killed kiln left; a change in progress -------------------------------------------


def test_a_pass_settles_a_rollout_a_killed_kiln_left_running(w, monkeypatch):
    agent = watching(w)
    w.edit_spec("      strategy: rolling\n", "      strategy: blue-green\n")
    w.change_code("print(2)\n")
    with monkeypatch.context() as m:
        m.setattr(faults, "point", kill_at("switched"))
        with pytest.raises(Killed):
            deploy(w.ctx, w.load(), "production")
    dead = subprocess.Popen(["true"])
    dead.wait()
    w.ctx.ledger.locks.acquire("shop", "production", user="ann", host=socket.gethostname(), pid=dead.pid,
                               reason="deploy", lease=30, holder_alive=lambda lock: True)
    [rollout] = w.ctx.ledger.rollouts.unfinished("shop", "production")

    assert agent.run() == "settled a rollout a killed kiln left unfinished"
    assert w.ctx.ledger.rollouts.get(rollout.id).state == "succeeded"
    assert sorted(w.instances().values()) == [2, 2, 2] and len(w.serving()) == 2
    assert (kinds.ROLLOUT_RESUMED, f"rollout {rollout.id} to v2") in w.events()
    assert agent.run() == ""


def test_a_pass_leaves_an_environment_alone_while_a_live_kiln_changes_it(w):
    agent = watching(w)
    w.engine.kill(names(w, "web")[0])
    w.ctx.ledger.locks.acquire("shop", "production", user="ann", host=socket.gethostname(), pid=os.getpid(),
                               reason="deploy", lease=30, holder_alive=lambda lock: True)
    assert agent.run() == f"left alone: ann@{socket.gethostname()} pid {os.getpid()} is changing it (deploy)"
    assert agent_events(w) == [] and len(names(w, "web")) == 1


def test_an_environment_with_no_release_in_service_is_not_touched(w):
    assert Reconciler(w.ctx, "shop", "production", AgentPolicy()).run() == ""
    assert w.events() == [] and w.ctx.ledger.locks.get("shop", "production") is None


# --- the router -----------------------------------------------------------------------------------


def test_a_missing_router_is_restarted_and_the_instances_routed_again(w):
    agent = watching(w)
    web = names(w, "web")
    w.engine.remove("kiln-shop-production-router")
    said = agent.run()
    assert said.startswith("restarted the router; ")
    assert agent_events(w)[0] == (kinds.AGENT_ROUTER,
                                  "router kiln-shop-production-router was missing; restarted it")
    assert w.router().facts().running
    # The new router knew none of them: the running instances are routed again, not replaced.
    assert names(w, "web") == web and w.serving() == dict.fromkeys(web, 1)
    routed = [m for k, m in agent_events(w) if k == kinds.AGENT_ROUTE]
    assert sorted(m.split(":")[0] for m in routed) == web
    assert all(m.split(": ", 1)[1].startswith("done (up in the router at weight 100 after ") for m in routed)
    assert [k for k, _ in agent_events(w)].count(kinds.AGENT_START) == 0


# --- the loop -----------------------------------------------------------------------------------


def test_agent_once_leads_each_environment_heals_it_and_resigns(w):
    deploy(w.ctx, w.load(), "production")
    deploy(w.ctx, w.load(), "staging")
    web = names(w, "web")
    w.engine.kill(web[0])
    policies = {env: e.agent for env, e in w.load().spec.environments.items()}
    Agent(w.ctx, "shop", policies).run(once=True)

    [new] = replaced(w, web, "web")
    events = agent_events(w)
    assert events[0][0] == kinds.AGENT_LEADING and HOLDER.sub("", events[0][1]) == "agent " + \
        events[0][1].removeprefix("agent ").split(" watches")[0] + " watches shop/production"
    assert events[1] == (kinds.INSTANCE_LOST, f"{web[0]}: exited while the engine or the agent was down; restoring")
    assert events[-2][1].startswith(f"replaced {web[0]} with {new} in ")
    assert events[-1][0] == kinds.AGENT_RESIGNED and events[-1][1].endswith(" stopped")
    assert [k for k, _ in w.events("staging") if k.startswith("agent.")] == [kinds.AGENT_LEADING, kinds.AGENT_RESIGNED]
    assert w.ctx.ledger.locks.get("shop", "production/agent") is None  # the lease is given back


def test_agent_once_stands_by_while_another_agent_leads(w):
    deploy(w.ctx, w.load(), "production")
    w.ctx.ledger.locks.acquire("shop", "production/agent", user="bob", host="other", pid=1, reason="agent lease",
                               lease=15, holder_alive=lambda lock: True)
    w.engine.kill(names(w, "web")[0])
    Agent(w.ctx, "shop", {"production": AgentPolicy()}).run(once=True)
    assert agent_events(w) == [] and len(names(w, "web")) == 1
    assert "shop/production: standing by, bob@other pid 1 leads it" in w.out.of("step")


def test_agent_once_prunes_expired_previews(w, monkeypatch):
    from kiln.usecases import environments as envs

    deploy(w.ctx, w.load(), "production")
    envs.recreate(w.ctx, w.load(), 1, "production", "copy", port=28080)
    w.ctx.ledger.environments.record("shop", "copy", "preview", 28080, "ref main",
                                     expires_at=now() - timedelta(seconds=1))
    Agent(w.ctx, "shop", {"production": AgentPolicy()}).run(once=True)
    assert w.containers("copy") == {} and w.ctx.ledger.environments.of("shop") == []
    assert [k for k, _ in w.events("copy")][-1] == kinds.PREVIEW_PRUNED
