"""The rollout driver against the in-memory runtime and router: the order in which blue-green and
canary move weights, the persisted phase, hooks, and what an abort leaves."""

from __future__ import annotations

import pytest

from kiln.errors import RolloutError
from kiln.ledger.store import Ledger
from kiln.output import Output
from kiln.providers.fake import FakeRouter, FakeRuntime
from kiln.rollout.driver import PAUSED, SUCCEEDED, Driver, Progress
from kiln.rollout.executor import Executor, Target
from kiln.rollout.strategy import phases
from kiln.spec.loader import parse_spec
from kiln.spec.models import Rollout
from kiln.spec.resolve import resolve

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
    runtime = FakeRuntime()
    router = FakeRouter(cfg, runtime)
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")

    def release(image: str) -> Target:
        return Target.of(ledger.releases.record(
            app="shop", env="prod", image=image, image_tag="t", inputs_hash="h", config=cfg.model_dump(mode="json"),
            config_digest=cfg.digest(), spec_digest="s", commit=None, dirty=False))

    def run(target: Target, policy: Rollout, start_at: int = 0) -> tuple[str, Driver]:
        progress = Progress(phases(policy, policy.before_traffic is not None, policy.after_traffic is not None),
                            start_at, policy)
        rollout = ledger.rollouts.start("shop", "prod", None, target.release.number, policy.strategy, progress.data())
        ex = Executor(runtime, router, ledger, Output(quiet=True), rollout.id, probe=lambda svc, c: runtime.healthy(c.name))
        driver = Driver(runtime, router, ledger, Output(quiet=True), rollout.id, target, ex)
        return driver.run(progress), driver

    v1 = release("sha256:1")
    run(v1, Rollout())
    router.log.clear()
    return runtime, router, ledger, release, run


def web(runtime: FakeRuntime, image: str) -> set[str]:
    return {n for n, s in runtime.specs.items() if s.image == image}


def test_blue_green_starts_idle_then_switches_in_one_move_then_retires_the_old(world):
    runtime, router, ledger, release, run = world
    old = set(router.added)
    state, driver = run(release("sha256:2"), Rollout(strategy="blue-green"))
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
    state, driver = run(release("sha256:2"), Rollout(strategy="blue-green", promote="manual"))
    assert state == PAUSED
    new = web(runtime, "sha256:2")
    assert {n: router.weights[n] for n in new} == dict.fromkeys(new, 0)
    assert {o: router.weights[o] for o in old} == dict.fromkeys(old, 100)
    assert ledger.rollouts.get(driver.rollout_id).phase == "promotion"


def test_blue_green_keep_old_leaves_the_old_set_idle(world):
    runtime, router, ledger, release, run = world
    old = set(router.added)
    _, driver = run(release("sha256:2"), Rollout(strategy="blue-green", keep_old=600))
    assert old <= set(runtime.specs) and {o: router.weights[o] for o in old} == dict.fromkeys(old, 0)
    assert sorted(ledger.rollouts.get(driver.rollout_id).data["kept"]) == sorted(old)


def test_canary_steps_raise_the_new_share(world):
    runtime, router, _, release, run = world
    policy = Rollout(strategy="canary", steps=({"weight": 10, "pause": 0}, {"weight": 50, "pause": 0}))
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
    runtime.crash_on_start.add(2)  # the fake runs hooks of release 2 to a non-zero exit
    with pytest.raises(RolloutError, match="before_traffic hook `migrate` exited with code 1"):
        run(release("sha256:2"), Rollout(before_traffic=("migrate",)))
    assert set(router.added) == serving and not web(runtime, "sha256:2")
    assert ("run", next(name for verb, name in runtime.log if verb == "run")) in runtime.log


def test_a_resumed_rollout_runs_from_its_recorded_phase(world):
    runtime, router, _, release, run = world
    policy = Rollout(strategy="blue-green", before_traffic=("migrate",))
    # Interrupted after "start" and "before_traffic": resuming at the switch runs no hook again.
    v2 = release("sha256:2")
    run(v2, policy.model_copy(update={"strategy": "blue-green"}), start_at=0)
    runs = [v for v, _ in runtime.log].count("run")
    state, _ = run(v2, policy, start_at=2)
    assert state == SUCCEEDED and [v for v, _ in runtime.log].count("run") == runs
