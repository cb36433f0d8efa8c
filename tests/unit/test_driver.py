"""The rollout driver against the in-memory runtime and router: the order in which blue-green and
canary move weights, the persisted phase, hooks, and what an abort leaves."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from kiln import faults
from kiln.errors import RolloutError
from kiln.ledger.kinds import PAUSED, SUCCEEDED
from kiln.ledger.store import Ledger
from kiln.output import Output
from kiln.providers.fake import FakeEngine, FakeRouter
from kiln.rollout.driver import Driver, Progress
from kiln.rollout.executor import Executor, ExecutorOptions, Target
from kiln.rollout.lock import Lease
from kiln.rollout.strategy import phases
from kiln.spec.loader import parse_spec
from kiln.spec.models import RolloutPolicy
from kiln.spec.resolve import resolve
from kiln.usecases.deploy import settle

SPEC = """\
app: shop
build: {steps: ["COPY . /app"]}
services:
  web:
    port: 8000
    replicas: 2
    healthcheck: {http: /health, interval: 50ms, deadline: 300ms}
environments:
  prod: {port: 8080}
"""


@pytest.fixture
def world(tmp_path):
    cfg = resolve(parse_spec(SPEC), "prod")
    runtime = FakeEngine()
    runtime.ensure_network("kiln-shop-prod", {})
    for n in range(1, 5):
        runtime.add_image(f"sha256:{n}")
    router = FakeRouter(cfg, runtime)
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")

    def release(image: str) -> Target:
        return Target.of(ledger.releases.record(
            app="shop", env="prod", image=image, image_tag="t", inputs_hash="h", config=cfg.model_dump(mode="json"),
            config_digest=cfg.digest(), spec_digest="s", commit=None, dirty=False))

    def run(target: Target, policy: RolloutPolicy, previous: int | None = None) -> tuple[str, Driver]:
        progress = Progress(phases(policy, policy.before_traffic is not None, policy.after_traffic is not None),
                            0, policy)
        rollout = ledger.rollouts.start("shop", "prod", previous, target.release.number, policy.strategy,
                                       progress.data())
        ex = Executor(runtime, router, ledger, Output(quiet=True),
                      ExecutorOptions(rollout_id=rollout.id, probe=lambda svc, c: runtime.healthy(c.name)))
        driver = Driver(runtime, router, ledger, Output(quiet=True), rollout.id, target, ex)
        state = driver.run(progress)  # a kill inside leaves the rollout `running`, as a real one would
        ledger.rollouts.finish(rollout.id, state)
        return state, driver

    v1 = release("sha256:1")
    run(v1, RolloutPolicy())
    router.log.clear()
    return runtime, router, ledger, release, run


def web(runtime: FakeEngine, image: str) -> set[str]:
    return {n for n, s in runtime.specs.items() if s.image == image}


def test_blue_green_starts_idle_then_switches_in_one_move_then_retires_the_old(world):
    runtime, router, ledger, release, run = world
    old = set(router.added)
    state, driver = run(release("sha256:2"), RolloutPolicy(strategy="blue-green"))
    assert state == SUCCEEDED
    new = web(runtime, "sha256:2")
    assert set(router.added) == new and not old & set(runtime.specs)
    # The new set joined at weight 0, then one switch raised it and lowered the old set.
    adds = [name for verb, name in router.log if verb == "add"]
    assert set(adds) == new
    weights = [entry for verb, entry in router.log if verb == "weight"]
    assert sorted(weights) == sorted([f"{n}=100" for n in new] + [f"{o}=0" for o in old])
    first_removal = next(i for i, (verb, _) in enumerate(router.log) if verb == "remove")
    assert all(verb != "weight" for verb, _ in router.log[first_removal:])
    assert ledger.rollouts.get(driver.rollout_id).phase == "done"


def test_manual_blue_green_pauses_with_both_sets_and_no_traffic_moved(world):
    runtime, router, ledger, release, run = world
    old = set(router.added)
    state, driver = run(release("sha256:2"), RolloutPolicy(strategy="blue-green", promote="manual"))
    assert state == PAUSED
    new = web(runtime, "sha256:2")
    assert {n: router.weights[n] for n in new} == dict.fromkeys(new, 0)
    assert {o: router.weights[o] for o in old} == dict.fromkeys(old, 100)
    assert ledger.rollouts.get(driver.rollout_id).phase == "promotion"


def test_blue_green_keep_old_leaves_the_old_set_idle(world):
    runtime, router, ledger, release, run = world
    old = set(router.added)
    _, driver = run(release("sha256:2"), RolloutPolicy(strategy="blue-green", keep_old=600))
    assert old <= set(runtime.specs) and {o: router.weights[o] for o in old} == dict.fromkeys(old, 0)
    assert sorted(ledger.rollouts.get(driver.rollout_id).data["kept"]) == sorted(old)


def test_canary_steps_raise_the_new_share(world):
    runtime, router, _, release, run = world
    policy = RolloutPolicy(strategy="canary", steps=({"weight": 10, "pause": 0}, {"weight": 50, "pause": 0}))
    state, _ = run(release("sha256:2"), policy)
    assert state == SUCCEEDED
    new = web(runtime, "sha256:2")
    weights = [entry for verb, entry in router.log if verb == "weight"]
    # 10%: the new pair gets 1/9 of the old pair's weight; 50%: equal; then the switch.
    first = dict(w.split("=") for w in weights[:4])
    assert {int(first[n]) for n in new} == {28} and {int(v) for k, v in first.items() if k not in new} == {256}
    assert set(router.added) == new


def test_a_failing_before_traffic_hook_aborts_before_any_instance_starts(world):
    runtime, router, _, release, run = world
    serving = set(router.added)
    runtime.log.clear()
    runtime.crash_on_start.add(2)  # the fake runs hooks of release 2 to a non-zero exit
    with pytest.raises(RolloutError, match="before_traffic hook `migrate` exited with code 1"):
        run(release("sha256:2"), RolloutPolicy(before_traffic=("migrate",)))
    assert set(router.added) == serving and not web(runtime, "sha256:2") and router.log == []
    # One hook container ran to its end and was removed, named after its phase and release; no
    # instance started.
    name = runtime.log[0][1]
    assert runtime.log == [("start", name), ("run", name), ("remove", name)]
    assert re.fullmatch(r"kiln-shop-prod-before-traffic-v2-[0-9a-f]{6}", name)


class Killed(BaseException):
    """What SIGKILL at a fault point does to kiln: nothing below it catches this."""


def kill_at(point: str):
    def fault(name: str) -> None:
        if name == point:
            raise Killed(name)
    return fault


def settle_now(runtime, router, ledger) -> None:
    """What the next kiln does first: settle the rollouts a killed one left running."""
    ctx = SimpleNamespace(engine_for=lambda cfg: runtime, ledger=ledger, out=Output(quiet=True),
                          secret=lambda name: None)
    settle(ctx, Lease(), router)


def by_instance(log: list[tuple[str, str]], name: str) -> list[str]:
    return [verb for verb, who in log if who == name]


def watch_stops(runtime, router, monkeypatch) -> list[str]:
    """Instances stopped while still in the router (there should be none: unroute, then stop)."""
    found: list[str] = []
    real = runtime.stop

    def stop(name: str, grace: float) -> None:
        if name in router.added:
            found.append(name)
        real(name, grace)

    monkeypatch.setattr(runtime, "stop", stop)
    return found


def test_a_rollout_killed_after_its_switch_is_completed_from_the_recorded_phase(world, monkeypatch):
    runtime, router, ledger, release, run = world
    old = sorted(router.added)
    policy = RolloutPolicy(strategy="blue-green", before_traffic=("migrate",))
    v2 = release("sha256:2")
    monkeypatch.setattr(faults, "point", kill_at("switched"))  # right after the weights moved
    with pytest.raises(Killed):
        run(v2, policy, previous=1)
    new = sorted(web(runtime, "sha256:2"))
    [rollout] = ledger.rollouts.unfinished("shop", "prod")
    assert (rollout.state, rollout.phase, rollout.data["index"]) == ("running", "switch", 2)
    assert rollout.data["phases"] == ["start", "before_traffic", "switch"]
    # Killed between moving the traffic and retiring the old set: both sets run, the new one weighted.
    assert {n: router.weights[n] for n in old + new} == {**dict.fromkeys(old, 0), **dict.fromkeys(new, 100)}
    assert [verb for verb, _ in runtime.log].count("run") == 1

    monkeypatch.setattr(faults, "point", lambda name: None)
    router.log.clear()
    runtime.log.clear()
    stopped_while_routed = watch_stops(runtime, router, monkeypatch)
    settle_now(runtime, router, ledger)

    # Resumed at `switch`: the hook and the start phase are not run again; the switch is redone
    # in one request (same weights), then each old instance leaves the router, then is stopped and
    # removed (instances of one step are retired in parallel, so only per-instance order is fixed).
    switch = dict.fromkeys(new, 100) | dict.fromkeys(old, 0)
    assert router.log[:4] == [("weight", f"{n}={w}") for n, w in sorted(switch.items())]
    assert sorted(router.log[4:]) == [("remove", o) for o in old]
    assert sorted(runtime.log) == sorted([("stop", o) for o in old] + [("remove", o) for o in old])
    assert all(by_instance(runtime.log, o) == ["stop", "remove"] for o in old)
    assert stopped_while_routed == []
    assert sorted(runtime.specs) == new and sorted(router.added) == new
    after = ledger.rollouts.get(rollout.id)
    assert (after.state, after.phase) == ("succeeded", "done")
    assert ledger.rollouts.unfinished("shop", "prod") == []


def test_a_rollout_killed_in_its_hook_before_the_switch_is_undone(world, monkeypatch):
    runtime, router, ledger, release, run = world
    old = sorted(router.added)
    policy = RolloutPolicy(strategy="blue-green", before_traffic=("migrate",))
    v2 = release("sha256:2")

    def killed_hook(spec, timeout):
        runtime.log.append(("run", spec.name))
        raise Killed("before_traffic")

    monkeypatch.setattr(runtime, "run_once", killed_hook)
    with pytest.raises(Killed):
        run(v2, policy, previous=1)
    new = sorted(web(runtime, "sha256:2"))
    [rollout] = ledger.rollouts.unfinished("shop", "prod")
    assert (rollout.state, rollout.phase, rollout.data["index"]) == ("running", "before_traffic", 1)
    assert len(new) == 2 and {n: router.weights[n] for n in new} == dict.fromkeys(new, 0)

    router.log.clear()
    runtime.log.clear()
    stopped_while_routed = watch_stops(runtime, router, monkeypatch)
    settle_now(runtime, router, ledger)

    # Not past the switch: undone. The idle new set leaves the router and goes; no hook runs again
    # and the old set, which never lost its traffic, is not touched.
    assert sorted(router.log) == [("remove", n) for n in new]
    assert sorted(runtime.log) == sorted([("stop", n) for n in new] + [("remove", n) for n in new])
    assert all(by_instance(runtime.log, n) == ["stop", "remove"] for n in new)
    assert stopped_while_routed == []
    assert sorted(runtime.specs) == old and {o: router.weights[o] for o in old} == dict.fromkeys(old, 100)
    after = ledger.rollouts.get(rollout.id)
    assert (after.state, after.reason) == ("aborted", "interrupted before its traffic switch; undone")
